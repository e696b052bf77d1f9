"""Whether the audit sink is delivering: judged by records leaving the spool, not by answers.

An Elasticsearch that answers every bulk request with 503, 429 or items that all fail is as
down as one that refuses connections; only progress tells them apart from a working one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Change(enum.Enum):
    DOWN = "down"
    RECOVERED = "recovered"


@dataclass(frozen=True, slots=True)
class Stall:
    """A stretch with records waiting and none delivered."""

    since: float
    """When the last delivery before it happened, or the oldest record waiting was written (Unix time)."""
    until: float | None = None
    """When a record was delivered again; None while it lasts."""


class SinkHealth:
    """Down once records have waited `down_after` with nothing delivered in that time.

        health = SinkHealth(down_after=60.0, started=time.time())
        health.up(now, oldest_waiting=t0, last_delivery=t1)      # the judgement at `now`
        health.update(now, oldest_waiting=t0, last_delivery=t1)  # Change.DOWN / RECOVERED once, else None

    `oldest_waiting` is when the oldest undelivered record was written (None: nothing waits);
    `last_delivery` is when the sink last stored or dead-lettered a record (0: never). A sink
    that stores some of each batch is up (however slowly: that is lag, a separate signal); one
    with nothing to deliver is up too, as nothing shows otherwise. The time since `started`
    counts as progress, so that records left from before a restart get `down_after` to go.
    """

    def __init__(self, down_after: float, started: float) -> None:
        if down_after <= 0:
            raise ValueError(f"down_after must be a positive number of seconds, got {down_after}")
        self.down_after = down_after
        self._started = started
        self.stall: Stall | None = None
        """The current stall once `update` has called it down, or the last one after its recovery."""

    def up(self, now: float, *, oldest_waiting: float | None, last_delivery: float) -> bool:
        since = self.stalled_since(oldest_waiting, last_delivery)
        return since is None or now - since < self.down_after

    def stalled_since(self, oldest_waiting: float | None, last_delivery: float) -> float | None:
        """Since when records have waited with nothing delivered; None when nothing waits."""
        if oldest_waiting is None:
            return None
        return max(oldest_waiting, last_delivery, self._started)

    def update(self, now: float, *, oldest_waiting: float | None, last_delivery: float) -> Change | None:
        """Judge at `now` and return the change since the last update, if any."""
        up = self.up(now, oldest_waiting=oldest_waiting, last_delivery=last_delivery)
        stall = self.stall
        if not up and (stall is None or stall.until is not None):
            since = self.stalled_since(oldest_waiting, last_delivery)
            assert since is not None
            self.stall = Stall(since)
            return Change.DOWN
        if up and stall is not None and stall.until is None:
            # Delivery resumed with the sink's last success (`now` only if the clock went back).
            until = last_delivery if last_delivery > stall.since else now
            self.stall = Stall(stall.since, until)
            return Change.RECOVERED
        return None
