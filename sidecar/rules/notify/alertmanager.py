"""Pushing alerts to one Alertmanager's API v2: Prometheus's `notifier/notifier.go` queue and send loop.

Batches of up to 64 alerts, a bounded queue that drops the oldest when full, one POST at a time
with the configured timeout; a failed POST is counted and logged, not retried (the next resend
carries its alerts, see `resend.py`). Each Alertmanager has its own queue and loop: Prometheus
shares one queue among them, so one Alertmanager that is down slows the others and fills the
queue for all (prometheus/prometheus#7676; #16355 gives each its own queue, as here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiohttp

from sidecar.config import AlertmanagerConfig
from sidecar.rules.notify.stats import ReceiverStats

logger = logging.getLogger(__name__)

MAX_BATCH = 64
"""Alerts per POST (Prometheus's maxBatchSize)."""
BODY_EXCERPT_BYTES = 512
_WARN_EVERY_S = 60.0


class AlertmanagerSender:
    """One Alertmanager's queue and send loop."""

    def __init__(self, config: AlertmanagerConfig, capacity: int) -> None:
        self.config = config
        self.url = config.url.rstrip("/") + "/api/v2/alerts"
        self.stats = ReceiverStats(f"alertmanager:{config.url}")
        self._capacity = capacity
        self._queue: deque[dict[str, Any]] = deque()
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._up = True
        self._last_warning = -_WARN_EVERY_S
        self._last_drop_warning = -_WARN_EVERY_S

    def enqueue(self, alerts: Sequence[dict[str, Any]]) -> None:
        """Queue `alerts` without waiting; when full, the oldest queued alerts make room (newer
        state beats older state, and the oldest are the likeliest to be resent anyway)."""
        if not alerts:
            return
        if len(alerts) > self._capacity:
            self._drop(len(alerts) - self._capacity)
            alerts = alerts[-self._capacity :]
        overflow = len(self._queue) + len(alerts) - self._capacity
        if overflow > 0:
            for _ in range(overflow):
                self._queue.popleft()
            self._drop(overflow)
        self._queue.extend(alerts)
        self.stats.queue_length = len(self._queue)
        self._idle.clear()
        self._more.set()

    def _drop(self, count: int) -> None:
        self.stats.dropped += count
        now = time.monotonic()
        if now - self._last_drop_warning >= _WARN_EVERY_S:
            self._last_drop_warning = now
            logger.warning(
                "Alertmanager notification queue full, dropping the oldest alerts",
                extra={"alertmanager": self.url, "dropped": count, "queue_size": self._capacity},
            )

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Send until cancelled."""
        while True:
            await self._more.wait()
            self._more.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self.stats.queue_length = len(self._queue)
                await self._post(session, batch)
            self._idle.set()

    async def drained(self) -> None:
        """Returns once everything queued so far has been posted (or has failed)."""
        await self._idle.wait()

    def abandon(self) -> None:
        """At shutdown: what is still queued will not be sent."""
        self.stats.dropped += len(self._queue)
        self._queue.clear()
        self.stats.queue_length = 0

    async def _post(self, session: aiohttp.ClientSession, batch: list[dict[str, Any]]) -> None:
        started = time.monotonic()
        error: str | None = None
        try:
            async with session.post(
                self.url, json=batch, timeout=aiohttp.ClientTimeout(total=self.config.timeout)
            ) as response:
                if not 200 <= response.status < 300:
                    body = await response.content.read(BODY_EXCERPT_BYTES)
                    error = f"HTTP {response.status}: {body.decode(errors='replace').strip()}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        except Exception as exc:  # whatever it is, the send loop must live on
            logger.exception("unexpected error posting alerts", extra={"alertmanager": self.url})
            error = f"{exc.__class__.__name__}: {exc}"
        except asyncio.CancelledError:  # shutdown gave up on it
            self.stats.failed += 1
            self.stats.latency.observe(time.monotonic() - started)
            raise
        self.stats.latency.observe(time.monotonic() - started)
        if error is None:
            self.stats.sent += 1
            self.stats.alerts_sent += len(batch)
            if not self._up:
                self._up = True
                logger.info("Alertmanager reachable again", extra={"alertmanager": self.url})
            return
        self.stats.failed += 1
        # Prometheus logs every failure; one line a minute while it stays down is enough here.
        was_up, self._up = self._up, False
        now = time.monotonic()
        if was_up or now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            logger.warning(
                "Error sending alerts to Alertmanager; the next resend carries them",
                extra={"alertmanager": self.url, "count": len(batch), "error": error},
            )
