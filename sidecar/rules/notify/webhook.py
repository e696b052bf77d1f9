"""Delivering group notifications to one webhook receiver, as Alertmanager's RetryStage does.

Each group's notification is POSTed on its own (groups go out in parallel, a group's own
notifications never overlap). Connection errors, timeouts, 5xx and 429 are retried with capped
exponential backoff and full jitter, until the delivery succeeds or the group's next flush
supersedes it (Alertmanager gives a flush until the next one, `group_interval`); any other status
is a refusal, counted and logged with the status and the start of the body, and not retried.
(Alertmanager's webhook notifier retries 5xx only; 429 is retried here because a rate-limited
receiver asks for exactly that.)

Waiting notifications are bounded: at most `queue_size` groups wait for a sender; beyond that the
oldest is dropped and counted.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable

import aiohttp

from sidecar.config import WebhookConfig
from sidecar.rules.notify.dispatch import GroupNotification
from sidecar.rules.notify.stats import ReceiverStats

logger = logging.getLogger(__name__)

BODY_EXCERPT_BYTES = 512
MAX_PARALLEL = 8
"""Groups delivered at once to one receiver."""
_LOG_AGAIN_AFTER_S = 60.0


class _Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    REFUSED = "refused"


class WebhookSender:
    def __init__(
        self,
        config: WebhookConfig,
        capacity: int,
        *,
        on_delivered: Callable[[GroupNotification], None],
        initial_backoff: float = 0.5,
        max_backoff: float = 60.0,
    ) -> None:
        self.config = config
        self.stats = ReceiverStats(f"webhook:{config.name}")
        self._capacity = capacity
        self._on_delivered = on_delivered
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._pending: OrderedDict[str, GroupNotification] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_logged: tuple[str, float] = ("", -_LOG_AGAIN_AFTER_S)

    def submit(self, key: str, notification: GroupNotification | None) -> None:
        """The group `key` flushed: stop delivering whatever it had before and queue `notification`."""
        task = self._inflight.get(key)
        if task is not None:
            task.cancel()
        if notification is None:
            self._pending.pop(key, None)
        else:
            self._pending[key] = notification
            if len(self._pending) > self._capacity:
                dropped_key, _ = self._pending.popitem(last=False)
                self.stats.dropped += 1
                self._log_once(
                    logging.WARNING,
                    "webhook notification queue full, dropping the oldest group notification",
                    {"receiver": self.config.name, "group_key": dropped_key, "queue_size": self._capacity},
                )
        if self._pending or self._inflight:
            self._idle.clear()
        else:
            self._idle.set()
        self.stats.queue_length = len(self._pending)
        self._wakeup.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Start deliveries as notifications arrive, until cancelled (which cancels them too)."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                for key in list(self._pending):
                    if len(self._inflight) >= MAX_PARALLEL:
                        break
                    if key in self._inflight:
                        continue  # superseded: it starts once the cancelled one has finished
                    notification = self._pending.pop(key)
                    task = asyncio.create_task(self._deliver(session, notification), name=f"webhook {key}")
                    self._inflight[key] = task
                    task.add_done_callback(functools.partial(self._finished, key))
                self.stats.queue_length = len(self._pending)
        finally:
            deliveries = list(self._inflight.values())
            for task in deliveries:
                task.cancel()
            await asyncio.gather(*deliveries, return_exceptions=True)

    async def drained(self) -> None:
        """Returns once nothing is waiting or being delivered."""
        await self._idle.wait()

    def abandon(self) -> None:
        """At shutdown: what is still waiting or being delivered will not be."""
        self.stats.dropped += len(self._pending) + sum(not task.done() for task in self._inflight.values())
        self._pending.clear()
        self.stats.queue_length = 0

    def _finished(self, key: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook delivery failed unexpectedly", exc_info=task.exception(),
                         extra={"receiver": self.config.name})  # fmt: skip
        if not self._pending and not self._inflight:
            self._idle.set()
        self._wakeup.set()

    async def _deliver(self, session: aiohttp.ClientSession, notification: GroupNotification) -> None:
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._post(session, notification, attempt)
            if outcome is _Outcome.SENT:
                self._on_delivered(notification)
                return
            if outcome is _Outcome.REFUSED:
                return
            # Full jitter (AWS architecture blog): receivers behind one proxy must not be retried in lockstep.
            ceiling = min(self._max_backoff, self._initial_backoff * 2 ** (attempt - 1))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _post(self, session: aiohttp.ClientSession, notification: GroupNotification, attempt: int) -> _Outcome:
        started = time.monotonic()
        status: int | None = None
        error = ""
        try:
            async with session.post(
                self.config.url,
                json=notification.payload,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                status = response.status
                if not 200 <= status < 300:
                    body = await response.content.read(BODY_EXCERPT_BYTES)
                    error = f"HTTP {status}: {body.decode(errors='replace').strip()}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        except Exception as exc:  # whatever it is, the sender must live on; retried like an outage
            logger.exception("unexpected error posting a webhook notification", extra={"receiver": self.config.name})
            error = f"{exc.__class__.__name__}: {exc}"
        except asyncio.CancelledError:  # superseded by the group's next flush, or shutdown
            self.stats.failed += 1
            raise
        finally:
            self.stats.latency.observe(time.monotonic() - started)
        if not error:
            self.stats.sent += 1
            self.stats.alerts_sent += notification.alert_count
            return _Outcome.SENT
        self.stats.failed += 1
        context = {"receiver": self.config.name, "url": self.config.url, "group_key": notification.key,
                   "attempt": attempt, "error": error}  # fmt: skip
        if status is None or status == 429 or status >= 500:
            self._log_once(logging.WARNING, "webhook notification failed; retrying with backoff", context)
            return _Outcome.RETRY
        self._log_once(logging.ERROR, "webhook receiver refused the notification; not retrying", context)
        return _Outcome.REFUSED

    def _log_once(self, level: int, message: str, context: dict[str, object]) -> None:
        """Log a failure when it differs from the last one logged, or a minute later: a receiver that
        stays down is one line a minute, not one per retry."""
        what = f"{message}|{context.get('error', '')}"
        now = time.monotonic()
        if what != self._last_logged[0] or now - self._last_logged[1] >= _LOG_AGAIN_AFTER_S:
            self._last_logged = (what, now)
            logger.log(level, message, extra=context)
