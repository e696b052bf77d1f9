from __future__ import annotations

import logging

import pytest

from sidecar.observe import Broadcast


def test_an_observer_that_raises_does_not_stop_the_others(caplog):
    caplog.set_level(logging.ERROR)
    received: list[int] = []
    broadcast: Broadcast[int] = Broadcast("numbers")

    def broken(record: int) -> None:
        raise RuntimeError("bug")

    broadcast.subscribe("broken", broken)
    broadcast.subscribe("good", received.append)
    for record in range(5):
        broadcast.publish(record)
    assert received == [0, 1, 2, 3, 4]
    assert broadcast.failures() == {"broken": 5, "good": 0}
    # Logged once, not five times: a broken observer must not flood the log.
    assert len([r for r in caplog.records if r.getMessage() == "observer failed"]) == 1


def test_observer_names_are_unique():
    broadcast: Broadcast[int] = Broadcast("numbers")
    broadcast.subscribe("a", lambda record: None)
    with pytest.raises(ValueError, match="already subscribed"):
        broadcast.subscribe("a", lambda record: None)
