"""SinkHealth's judgement, on numbers alone."""

from __future__ import annotations

import pytest

from sidecar.audit.health import Change, SinkHealth, Stall

T0 = 1_000.0


def test_down_once_records_wait_down_after_with_nothing_delivered() -> None:
    health = SinkHealth(down_after=60.0, started=T0)
    waiting = {"oldest_waiting": T0 + 10, "last_delivery": T0 + 5}
    assert health.up(T0 + 69.9, **waiting)
    assert not health.up(T0 + 70, **waiting)


def test_a_delivery_within_down_after_keeps_it_up_however_old_the_oldest_record() -> None:
    health = SinkHealth(down_after=60.0, started=T0)
    assert health.up(T0 + 3600, oldest_waiting=T0, last_delivery=T0 + 3600 - 59)


def test_nothing_waiting_is_up_whenever_the_last_delivery_was() -> None:
    health = SinkHealth(down_after=60.0, started=T0)
    assert health.up(T0 + 3600, oldest_waiting=None, last_delivery=0.0)


def test_records_from_before_the_start_get_down_after_from_the_start() -> None:
    health = SinkHealth(down_after=60.0, started=T0)
    assert health.up(T0 + 59, oldest_waiting=T0 - 3600, last_delivery=0.0)
    assert not health.up(T0 + 60, oldest_waiting=T0 - 3600, last_delivery=0.0)


def test_update_reports_each_change_once_and_keeps_the_stall() -> None:
    health = SinkHealth(down_after=60.0, started=T0)
    assert health.update(T0 + 30, oldest_waiting=T0 + 10, last_delivery=T0) is None
    assert health.update(T0 + 70, oldest_waiting=T0 + 10, last_delivery=T0) is Change.DOWN
    assert health.stall == Stall(since=T0 + 10)
    assert health.update(T0 + 500, oldest_waiting=T0 + 10, last_delivery=T0) is None
    # A record delivered at T0 + 400, seen at the next look: up again, the stall ended then.
    assert health.update(T0 + 410, oldest_waiting=T0 + 300, last_delivery=T0 + 400) is Change.RECOVERED
    assert health.stall == Stall(since=T0 + 10, until=T0 + 400)
    assert health.update(T0 + 502, oldest_waiting=None, last_delivery=T0 + 400) is None
    assert health.update(T0 + 460, oldest_waiting=T0 + 405, last_delivery=T0 + 400) is None
    assert health.update(T0 + 600, oldest_waiting=T0 + 405, last_delivery=T0 + 400) is Change.DOWN
    assert health.stall == Stall(since=T0 + 405)


@pytest.mark.parametrize("down_after", [0.0, -1.0])
def test_down_after_must_be_positive(down_after: float) -> None:
    with pytest.raises(ValueError, match="down_after"):
        SinkHealth(down_after=down_after, started=T0)
