"""Fan-out of records to the observers `app.py` registered.

The proxy and the health prober publish records here and never learn who
listens. Observers are plain callables that must return in microseconds (a
metric update, an append to a bounded queue): they run on the event loop,
inline with the request. Anything slow belongs behind a queue of its own.

An observer that raises must not break the request path or starve the other
observers, so each call is isolated; failures are counted (for `/metrics`) and
logged at most once a minute per observer so a broken observer cannot flood
the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

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
