"""The notifier the engine calls after every evaluation: alerts to Alertmanagers and webhook receivers.

`notify()` only decides and queues; it never waits on a receiver, so a receiver that is down or
hangs cannot hold up evaluation. Every receiver has its own queue and sender task:

    notify(alerts) ─┬─ ResendSchedule ──► AlertmanagerSender (one per Alertmanager) ──► /api/v2/alerts
                    └─ WebhookDispatcher (one per webhook) ──► WebhookSender ──► the webhook's url

It must be called from the event loop's thread (the engine's evaluation task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import aiohttp

from sidecar import __version__
from sidecar.config import RulesConfig
from sidecar.rules.alert import Alert
from sidecar.rules.notify.alertmanager import AlertmanagerSender
from sidecar.rules.notify.dispatch import WebhookDispatcher, log_from_state
from sidecar.rules.notify.payload import Fingerprinted
from sidecar.rules.notify.resend import ResendSchedule
from sidecar.rules.notify.state import mapping_at
from sidecar.rules.notify.stats import ReceiverStats
from sidecar.rules.notify.webhook import WebhookSender

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_CANCEL_GRACE_S = 1.0


class _Webhook:
    """A webhook receiver: its grouping (what to notify) and its sender (delivery)."""

    def __init__(self, dispatcher: WebhookDispatcher, sender: WebhookSender) -> None:
        self.dispatcher = dispatcher
        self.sender = sender


class Notifier:
    def __init__(
        self,
        config: RulesConfig,
        *,
        external_url: str,
        clock: Callable[[], float] = time.time,
        initial_backoff: float = 0.5,
        max_backoff: float = 60.0,
    ) -> None:
        """`external_url`: the sidecar's status page, which alerts link back to. `clock` stamps
        deliveries in the notification log (tests pass a controllable one); `initial_backoff` and
        `max_backoff` bound webhook retries."""
        self.config = config
        self.external_url = external_url
        self._schedule = ResendSchedule(config.resend_delay, external_url)
        self._alertmanagers = [AlertmanagerSender(am, config.queue_size) for am in config.alertmanagers]
        self._webhooks: list[_Webhook] = []
        for hook in config.webhooks:
            dispatcher = WebhookDispatcher(hook, external_url=external_url, clock=clock)
            sender = WebhookSender(
                hook,
                config.queue_size,
                on_delivered=dispatcher.delivered,
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
            )
            self._webhooks.append(_Webhook(dispatcher, sender))
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_error = ""
        self._fingerprints: dict[frozenset[tuple[str, str]], str] = {}

    @property
    def stats(self) -> tuple[ReceiverStats, ...]:
        """Per receiver, Alertmanagers first, in configuration order."""
        return tuple(s.stats for s in self._alertmanagers) + tuple(w.sender.stats for w in self._webhooks)

    def _senders(self) -> list[AlertmanagerSender | WebhookSender]:
        return [*self._alertmanagers, *(hook.sender for hook in self._webhooks)]

    def dispatcher(self, name: str) -> WebhookDispatcher:
        """The grouping state of the webhook receiver `name` (for the status page and tests)."""
        for hook in self._webhooks:
            if hook.dispatcher.config.name == name:
                return hook.dispatcher
        raise KeyError(f"no webhook receiver named {name!r} in rules.webhooks")

    async def start(self) -> None:
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(headers={"User-Agent": f"inference-sidecar/{__version__}"})
        senders: list[tuple[str, Callable[[aiohttp.ClientSession], Coroutine[Any, Any, None]]]] = [
            *((f"alertmanager {s.url}", s.run) for s in self._alertmanagers),
            *((f"webhook {w.sender.config.name}", w.sender.run) for w in self._webhooks),
        ]
        self._tasks = [asyncio.create_task(run(self._session), name=name) for name, run in senders]

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or being delivered; False if `timeout` came first."""
        waiters = [asyncio.create_task(sender.drained()) for sender in self._senders()]
        if not waiters:
            return True
        _, late = await asyncio.wait(waiters, timeout=timeout)
        for waiter in late:
            waiter.cancel()
        return not late

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within `timeout`, then cancel what is left (counted as dropped)."""
        if self._tasks and not await self.wait_idle(timeout):
            logger.warning("notifications still undelivered at shutdown are dropped", extra={"timeout_s": timeout})
        for sender in self._senders():
            sender.abandon()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_CANCEL_GRACE_S)
        self._tasks = []
        if self._session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._session.close(), _CANCEL_GRACE_S)
            self._session = None

    def notify(self, alerts: Sequence[Alert], now: float, interval_s: float) -> None:
        """Queue what is due at `now` for every receiver. Never blocks, never raises.

        `alerts`: all the engine's current alerts (pending, firing, and resolved ones it still
        keeps); `interval_s`: the evaluation interval, which bounds how long a sent alert stays valid.
        """
        try:
            current = self._fingerprinted(alerts)
            if self._alertmanagers:
                due = self._schedule.due(current, now, interval_s)
                for sender in self._alertmanagers:
                    sender.enqueue(due)
            for hook in self._webhooks:
                for key, notification in hook.dispatcher.update(current, now):
                    hook.sender.submit(key, notification)
        except Exception as exc:  # a notifier bug must not stop rule evaluation
            error = f"{exc.__class__.__name__}: {exc}"
            if error != self._last_error:
                self._last_error = error
                logger.exception("notifying receivers failed", extra={"error": error})

    def _fingerprinted(self, alerts: Sequence[Alert]) -> list[Fingerprinted]:
        """Each alert with its fingerprint, remembered from one evaluation to the next: the label
        sets hardly change, and hashing them byte by byte each time would cost more than the rest."""
        known, remembered = self._fingerprints, {}
        result: list[Fingerprinted] = []
        for alert in alerts:
            labels = frozenset(alert.labels.items())
            fingerprint = known.get(labels) or remembered.get(labels) or alert.fingerprint
            remembered[labels] = fingerprint
            result.append((fingerprint, alert))
        self._fingerprints = remembered
        return result

    def dump_state(self) -> dict[str, Any]:
        """What was sent when, so that a restart neither resends everything to the Alertmanagers nor
        notifies webhook groups again as new."""
        return {
            "version": STATE_VERSION,
            "alertmanager": {"sent": self._schedule.dump()},
            "webhooks": {hook.dispatcher.config.name: {"log": hook.dispatcher.dump()} for hook in self._webhooks},
        }

    def load_state(self, data: Mapping[str, Any]) -> None:
        """Restore `dump_state()`'s output. Webhooks no longer configured are ignored.

        Raises ValueError naming the key when `data` is not what `dump_state()` writes; nothing is
        loaded then.
        """
        data = mapping_at(data, "the top level")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"notifier state: expected version {STATE_VERSION}, got {data.get('version')!r}")
        schedule = ResendSchedule(self.config.resend_delay, self.external_url)
        schedule.load(mapping_at(data.get("alertmanager", {}), "alertmanager").get("sent", {}), "alertmanager.sent")
        webhooks = mapping_at(data.get("webhooks", {}), "webhooks")
        logs = {
            name: log_from_state(mapping_at(webhooks[name], f"webhooks.{name}").get("log", {}), f"webhooks.{name}.log")
            for name in (hook.dispatcher.config.name for hook in self._webhooks)
            if name in webhooks
        }
        self._schedule = schedule
        for hook in self._webhooks:
            if hook.dispatcher.config.name in logs:
                hook.dispatcher.restore(logs[hook.dispatcher.config.name])
