"""The rules runner's state file: compressed and written off the event loop, restored part by part
with an accurate account of what was and was not restored."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import RulesConfig
from sidecar.exchange import HealthResult, HealthState
from sidecar.rules.alert import AlertState
from sidecar.rules.engine import RuleEngine, encode_state
from sidecar.rules.notify import Notifier
from sidecar.rules.runner import RulesRunner, restore_engine, restore_notifier
from sidecar.rules.spec import effective_rules
from sidecar.rules.state import StateFile
from tests.support.clock import Clock, T0
from tests.support.records import make_exchange


def busy_engine(clock: Clock, period: str = "30d") -> RuleEngine:
    """An SLO over `period` with a request a minute: every slot of the 5-minute and hourly tiers
    holds counts (the rings' size, and so the cost of a save, does not depend on the traffic)."""
    config = RulesConfig.model_validate({"slos": [{"name": "availability", "objective": 99.9, "period": period}]})
    engine = RuleEngine(effective_rules(config), instance="node-1", clock=clock)
    ok, failed = make_exchange(), make_exchange(status=502)
    for second in range(0, int(float(period[:-1]) * 86400), 60):
        clock.now = T0 + second
        engine.observe_exchange(failed if second % 420 == 0 else ok)
    return engine


async def test_saving_compresses_and_encodes_off_the_event_loop(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    engine = busy_engine(clock)
    loop_thread = threading.get_ident()
    compressed_on: list[int] = []
    compress = zlib.compress

    def watched(data: Any, *args: Any) -> bytes:
        compressed_on.append(threading.get_ident())
        return compress(data, *args)

    monkeypatch.setattr(zlib, "compress", watched)
    state = StateFile(tmp_path / "state")
    runner = RulesRunner(engine, None, state, interval_s=1.0, save_interval_s=10.0, on_transition=lambda t: None,
                         clock=clock)  # fmt: skip
    await runner.start()
    await runner.stop()  # the final save
    assert len(compressed_on) >= 4  # three tiers of windows and the file
    assert loop_thread not in compressed_on, "the state was compressed on the event loop"

    # What the loop still does, against what it did before (dump_state: copies, compression, base64).
    monkeypatch.setattr(zlib, "compress", compress)
    on_loop = min(_seconds(runner._snapshot) for _ in range(5))
    encoding = min(_seconds(lambda: encode_state(engine.snapshot_state())) for _ in range(5))
    print(f"\nrules state save, 30-day SLO: {on_loop * 1e3:.2f} ms on the loop (snapshot_state), "
          f"{encoding * 1e3:.2f} ms on the worker thread (encode_state)")  # fmt: skip

    restarted = RuleEngine(engine.ruleset, instance="node-1", clock=clock)
    restarted.load_state((state.load() or {})["engine"])
    assert restarted.slo_status() == engine.slo_status()


def _seconds(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


DOWN = {"name": "Down", "signal": "upstream_consecutive_failures", "op": ">=", "threshold": 3, "severity": "page"}
WITH_WEBHOOK = RulesConfig.model_validate({"defaults": False, "alerts": [DOWN],
                                           "webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/"}]})  # fmt: skip


def firing_state(clock: Clock) -> dict[str, Any]:
    engine = RuleEngine(effective_rules(WITH_WEBHOOK), instance="node-1", clock=clock)
    engine.observe_health(HealthResult(clock(), False, None, 0.0, "refused", HealthState.DOWN, 0, 5, True))
    engine.evaluate()
    assert [a.state for a in engine.alerts()] == [AlertState.FIRING]
    return engine.dump_state()


async def test_a_notification_log_that_cannot_be_restored_costs_the_engine_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    state = StateFile(tmp_path / "state")
    broken_log = {"version": 1, "webhooks": {"ops": {"log": {"group": {"timestamp": "not a time"}}}}}
    state.save({"engine": firing_state(clock), "notify": broken_log})
    engine = RuleEngine(effective_rules(WITH_WEBHOOK), instance="node-1", clock=clock)
    with caplog.at_level(logging.INFO, logger="sidecar.rules.runner"):
        notify = await restore_engine(engine, state)
        restored = restore_notifier(Notifier(WITH_WEBHOOK, external_url="http://sidecar"), notify, state.path)
    assert restored is False
    assert [(a.name, a.state) for a in engine.alerts()] == [("Down", AlertState.FIRING)]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "rules state restored") in messages
    assert ("ERROR", "webhook notification log not restored: alerts already notified may be notified again") \
        in messages  # fmt: skip
    assert not any("empty windows" in message for _, message in messages), messages


async def test_an_engine_state_that_cannot_be_applied_still_restores_the_notification_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    state = StateFile(tmp_path / "state")
    notifier = Notifier(WITH_WEBHOOK, external_url="http://sidecar")
    state.save({"engine": {**firing_state(clock), "version": 99}, "notify": notifier.dump_state()})
    engine = RuleEngine(effective_rules(WITH_WEBHOOK), instance="node-1", clock=clock)
    with caplog.at_level(logging.INFO, logger="sidecar.rules.runner"):
        notify = await restore_engine(engine, state)
        assert restore_notifier(notifier, notify, state.path) is True
    assert engine.alerts() == []
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("ERROR", "rules engine state not restored; starting with empty windows and no active alerts") in messages
    assert ("INFO", "notification log restored") in messages


async def test_an_unreadable_state_file_is_reported_once_and_restores_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").write_bytes(b"garbage")
    engine = RuleEngine(effective_rules(WITH_WEBHOOK), instance="node-1", clock=Clock())
    with caplog.at_level(logging.INFO, logger="sidecar.rules.runner"):
        assert await restore_engine(engine, StateFile(tmp_path / "state")) is None
    assert [r.getMessage() for r in caplog.records] == [
        "rules state unreadable; starting with empty windows, no active alerts and no notification log"
    ]


def test_snapshot_state_copies_so_the_engine_may_go_on_while_it_is_encoded() -> None:
    clock = Clock()
    engine = busy_engine(clock, "7d")
    snapshot = engine.snapshot_state()
    expected = encode_state(snapshot)
    for _ in range(1, 4000, 3):  # counting goes on, slots close and roll up, while the thread encodes
        clock.now += 3
        engine.observe_exchange(make_exchange(status=500))
    engine.evaluate()
    assert encode_state(snapshot) == expected
    assert asyncio.iscoroutinefunction(restore_engine)
