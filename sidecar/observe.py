"""Fan-out of records to the observers `app.py` registered.

The proxy and the health prober publish records here and never learn who
listens. Observers are plain callables that must return in microseconds (a
metric update, an append to a bounded queue): they run on the event loop,
inline with the request. Anything slow belongs behind a queue of its own.

An observer that raises must not break the request path or starve the other
observers, so each call is isolated; failures are counted (for `/metrics`) and
logged at most once a minute per observer so a broken observer cannot flood
the log. Parts that poll sources of their own (the rules engine's readings,
the status page's sources) isolate them with `ProblemLog`, which logs each
distinct problem once, until the source works again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Observer = Callable[[T], None]

_LOG_EVERY_S = 60.0

logger = logging.getLogger(__name__)


class Broadcast(Generic[T]):
    """Delivers each published record to every subscribed observer, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._observers: list[tuple[str, Observer[T]]] = []
        self._failures: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}

    def subscribe(self, name: str, observer: Observer[T]) -> None:
        if any(existing == name for existing, _ in self._observers):
            raise ValueError(f"observer {name!r} is already subscribed to {self.name}")
        self._observers.append((name, observer))
        self._failures[name] = 0

    def publish(self, record: T) -> None:
        for name, observer in self._observers:
            try:
                observer(record)
            except Exception:
                self._record_failure(name)

    def failures(self) -> dict[str, int]:
        """Observer name -> number of records it failed to take."""
        return dict(self._failures)

    def _record_failure(self, name: str) -> None:
        self._failures[name] += 1
        now = time.monotonic()
        if now - self._last_logged.get(name, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_logged[name] = now
            logger.exception(
                "observer failed",
                extra={"broadcast": self.name, "observer": name, "failures": self._failures[name]},
            )


class ProblemLog:
    """Reads sources that may fail; logs a source's failure once per distinct problem, not per read."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._failing: dict[str, str] = {}

    def read(self, key: str, read: Callable[[], T], message: str, **extra: Any) -> T | None:
        """`read()`, or None when it raises (logged with `message` and `extra` if the problem is new
        for `key`, which names the source)."""
        try:
            value = read()
        except Exception as exc:
            self.failed(key, exc, message, **extra)
            return None
        self._failing.pop(key, None)
        return value

    def failed(self, key: str, exc: BaseException, message: str, **extra: Any) -> None:
        problem = f"{exc.__class__.__name__}: {exc}"
        if self._failing.get(key) != problem:
            self._log.error(message, extra={**extra, "error": problem})
            self._failing[key] = problem
