"""The rules' clock: evaluate every interval, hand the alerts to the notifier, announce changes, save.

Evaluation runs on the event loop (it reads in-memory windows and takes well under a millisecond
for dozens of rules). Saving copies the engine's arrays on the loop (`RuleEngine.snapshot_state`,
memory copies only) and compresses, encodes and writes them on a worker thread, never on the loop.
A tick that overruns the interval is not repeated to catch up: the next one starts on the next
interval boundary, as Prometheus's rule groups do.

Restoring is the owner's job, in two steps, because the two parts are built at different times:
`restore_engine` before the engine is subscribed to any record (so nothing observed is replaced by
the saved windows), `restore_notifier` once the notifier exists. Each part is applied, and reported,
on its own: a notification log that cannot be read does not cost the engine its alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sidecar.rules.alert import Alert, AlertTransition
from sidecar.rules.engine import RuleEngine, encode_state
from sidecar.rules.state import StateFile

logger = logging.getLogger(__name__)


class AlertNotifier(Protocol):
    async def start(self) -> None: ...

    async def stop(self, timeout: float = 5.0) -> None: ...

    def notify(self, alerts: Sequence[Alert], now: float, interval_s: float) -> None: ...

    def dump_state(self) -> dict[str, Any]: ...

    def load_state(self, data: Any) -> None: ...


class RulesRunner:
    def __init__(
        self,
        engine: RuleEngine,
        notifier: AlertNotifier | None,
        state: StateFile | None,
        *,
        interval_s: float,
        save_interval_s: float,
        on_transition: Callable[[AlertTransition], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self._notifier = notifier
        self._state = state
        self._interval = interval_s
        self._save_interval = save_interval_s
        self._on_transition = on_transition
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._saving: asyncio.Task[None] | None = None
        self._last_save = 0.0

    async def start(self) -> None:
        """Starts the notifier and the ticks; the state was restored before (`restore_engine`)."""
        if self._notifier is not None:
            await self._notifier.start()
        self._task = asyncio.create_task(self._run(), name="rules")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving
        if self._notifier is not None:
            # First: a notification delivered while it drains must be in the saved log, or a
            # restart would send it again as new.
            await self._notifier.stop()
        # The last state, so a restart resumes the windows and the alerts where they were.
        await self._save()

    def tick(self, at: float | None = None) -> None:
        """One evaluation at `at` (default: now): the engine, the transitions, the notifier."""
        now = self._clock() if at is None else at
        for transition in self.engine.evaluate(now):
            try:
                self._on_transition(transition)
            except Exception:
                logger.exception("alert transition observer raised", extra={"alert": transition.alert.name})
        if self._notifier is not None:
            self._notifier.notify(self.engine.alerts(), now, self._interval)

    async def _run(self) -> None:
        interval = self._interval
        previous = 0.0
        while True:
            # Ticks on the wall clock's interval boundaries, each evaluated at its boundary, so
            # `for` is measured in whole intervals; a boundary a slow tick overran is skipped.
            await asyncio.sleep(interval - (self._clock() % interval))
            now = self._clock()
            at = min(round(now / interval) * interval, now)
            if at == previous:
                continue  # woke a hair early, at the boundary already evaluated
            # A clock stepped backwards (NTP) simply carries on from the new time.
            previous = at
            try:
                self.tick(at)
            except Exception:
                logger.exception("rule evaluation failed")
            if self._state is not None and self._clock() - self._last_save >= self._save_interval:
                if self._saving is None or self._saving.done():
                    self._saving = asyncio.create_task(self._save(), name="rules-state-save")

    def _snapshot(self) -> dict[str, Any]:
        """On the loop: copies of the engine's arrays and the notifier's log, nothing encoded."""
        data: dict[str, Any] = {"engine": self.engine.snapshot_state()}
        if self._notifier is not None:
            data["notify"] = self._notifier.dump_state()
        return data

    @staticmethod
    def _write(state: StateFile, snapshot: dict[str, Any]) -> None:
        """On a worker thread: compress and encode the snapshot, then write it."""
        state.save({**snapshot, "engine": encode_state(snapshot["engine"])})

    async def _save(self) -> None:
        if self._state is None:
            return
        self._last_save = self._clock()
        snapshot = self._snapshot()
        try:
            await asyncio.to_thread(self._write, self._state, snapshot)
        except Exception as exc:
            # The alerts keep running; only a restart's memory of them is at stake.
            logger.error("could not save the rules state", extra={"path": str(self._state.path), "error": str(exc)})


async def restore_engine(engine: RuleEngine, state: StateFile) -> Any | None:
    """Read the state file on a worker thread and resume `engine` from it; call it before the engine
    observes anything. Returns the notifier's part of the file (for `restore_notifier`), or None.
    Every failure is logged, saying what the sidecar starts without; none is raised."""
    path = str(state.path)
    try:
        data = await asyncio.to_thread(state.load)
    except Exception as exc:
        logger.error("rules state unreadable; starting with empty windows, no active alerts and no notification log",
                     extra={"path": path, "error": str(exc)})  # fmt: skip
        return None
    if not data:
        return None
    if not data.get("engine"):
        return data.get("notify")
    try:
        engine.load_state(data["engine"])
    except Exception as exc:
        logger.error("rules engine state not restored; starting with empty windows and no active alerts",
                     extra={"path": path, "error": f"{exc.__class__.__name__}: {exc}"})  # fmt: skip
    else:
        logger.info("rules state restored", extra={"path": path, "alerts": len(engine.alerts())})
    return data.get("notify")


def restore_notifier(notifier: AlertNotifier, data: Any | None, path: Path | str) -> bool:
    """Resume the notifier's log from `restore_engine`'s return value; whether it was restored."""
    if data is None:
        return False
    try:
        notifier.load_state(data)
    except Exception as exc:
        logger.error("webhook notification log not restored: alerts already notified may be notified again",
                     extra={"path": str(path), "error": f"{exc.__class__.__name__}: {exc}"})  # fmt: skip
        return False
    logger.info("notification log restored", extra={"path": str(path)})
    return True
