"""What each receiver has done, kept as plain counters that `/metrics` reads at scrape time."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from sidecar.buckets import HTTP_DURATION_BUCKETS

LATENCY_BUCKETS = HTTP_DURATION_BUCKETS[: HTTP_DURATION_BUCKETS.index(30.0) + 1]
"""5 ms .. 30 s: a notification slower than the longest sensible timeout is a failure anyway."""


@dataclass(slots=True)
class LatencyHistogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    """Per bucket (not cumulative); the last one is +Inf."""
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(le, count) pairs as a Prometheus histogram exposes them, inf last."""
        running, buckets = 0, []
        for bound, count in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


@dataclass(slots=True)
class ReceiverStats:
    """One receiver's counters. `receiver` is `alertmanager:<url>` or `webhook:<name>`.

    A notification is one POST: `sent` counts POSTs answered 2xx, `failed` every POST that was not
    (connection error, timeout, other status, given up at shutdown or superseded; a webhook retry
    counts again). `dropped` counts what
    never got a POST: for an Alertmanager, alerts pushed out of its full queue or still queued at
    shutdown (its queue holds alerts, as Prometheus's does); for a webhook, group notifications
    pushed out of its full queue or still undelivered at shutdown.
    """

    receiver: str
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    alerts_sent: int = 0
    """Alerts carried by POSTs answered 2xx."""
    queue_length: int = 0
    """Alertmanager: alerts waiting; webhook: group notifications waiting for a sender."""
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    """Seconds per POST, answered or not."""
