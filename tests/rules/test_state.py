"""The rules' state file: atomic, compact, versioned, and clear about damage; an engine restarted
from it resumes its windows and alerts."""

from __future__ import annotations

import logging
import os
import random
import zlib
from pathlib import Path

import pytest

from sidecar.config import RulesConfig
from sidecar.exchange import GpuSample, GpuState, HealthResult, HealthState
from sidecar.rules.alert import AlertState
from sidecar.rules.engine import RuleEngine
from sidecar.rules.spec import effective_rules
from sidecar.rules.state import FORMAT_VERSION, MAGIC, StateFile, StateFileError
from tests.support.clock import Clock, T0
from tests.support.records import make_exchange


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "rules" / "state.json")  # the directory is created
    data = {"engine": {"version": 1, "values": [1.5, 2.0], "nested": {"a": None}}, "notify": {}}
    size = state.save(data)
    assert state.load() == data
    content = state.path.read_bytes()
    assert size == len(content)
    assert content.startswith(MAGIC + b" " + str(FORMAT_VERSION).encode() + b"\n")


def test_missing_file_is_no_state(tmp_path: Path) -> None:
    assert StateFile(tmp_path / "absent.json").load() is None


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    state = StateFile(tmp_path / "state.json")
    state.save({"n": 1})
    state.save({"n": 2})
    assert state.load() == {"n": 2}

    def crash(source: str, target: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        state.save({"n": 3})
    monkeypatch.undo()
    assert state.load() == {"n": 2}  # the old state is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a rules state file"),
        (b'{"engine": {}}', "not a rules state file"),
        (MAGIC + b" one\n", "unreadable format version"),
        (MAGIC + b" 1\n" + b"not zlib at all", "damaged"),
        (MAGIC + b" 1\n" + zlib.compress(b'{"engine": {')[:-4], "damaged"),
        (MAGIC + b" 1\n" + zlib.compress(b"[1, 2]"), "expected a JSON object"),
    ],
)
def test_damaged_file_raises_an_error_naming_the_file(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=problem) as raised:
        StateFile(path).load()
    assert str(path) in str(raised.value)


def test_another_format_version_is_treated_as_missing_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(MAGIC + b" 2\n" + b"whatever version 2 holds")
    state = StateFile(path)
    with caplog.at_level(logging.WARNING, logger="sidecar.rules.state"):
        assert state.load() is None
    assert state.skipped_reason is not None and "format version 2" in state.skipped_reason
    assert str(path) in caplog.text


def busy_month(engine: RuleEngine, clock: Clock) -> None:
    """Thirty days of traffic that leaves every slot of every tier non-empty and varied: hourly for
    29 days, every 5 minutes for the last day, every 10 seconds for the last hour; two GPUs sampled."""
    rng = random.Random(3)
    exchanges = [make_exchange(duration_s=rng.choice((0.02, 0.2, 0.7, 1.5, 4.0, 12.0)),
                               status=rng.choice((200, 200, 200, 200, 500, 429))) for _ in range(50)]  # fmt: skip
    end = clock.now + 30 * 86400
    while clock.now < end:
        left = end - clock.now
        step = 10.0 if left <= 3600 else 300.0 if left <= 86400 else 3600.0
        for exchange in rng.sample(exchanges, rng.randint(1, 8)):
            engine.observe_exchange(exchange)
        for gpu in ("0", "1"):
            engine.observe_gpu_sample(GpuSample(
                at=clock.now, source="nvml", gpu=gpu, uuid=f"GPU-{gpu}", pci_bus_id="", device="", model_name="",
                hostname="", state=GpuState.OK,
                fields={"DCGM_FI_DEV_GPU_TEMP": 90.0 if gpu == "0" else 60.0, "DCGM_FI_DEV_FB_USED": 70e3,
                        "DCGM_FI_DEV_FB_FREE": 10e3, "DCGM_FI_DEV_POWER_USAGE": 500.0},
            ))  # fmt: skip
        engine.observe_health(HealthResult(at=clock.now, ok=True, status=200, latency_s=0.01, error=None,
                                           state=HealthState.UP, consecutive_successes=1, consecutive_failures=0,
                                           changed=False))  # fmt: skip
        if step < 3600:
            engine.evaluate()
        clock.now += step


def test_default_rule_set_state_is_compact_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    rules = effective_rules(RulesConfig())
    engine = RuleEngine(rules, instance="node-1", clock=clock)
    busy_month(engine, clock)
    assert any(alert.state is AlertState.FIRING for alert in engine.alerts())
    state = StateFile(tmp_path / "state.json")
    size = state.save({"engine": engine.dump_state()})
    print(f"\nrules state file, default rule set after a busy month: {size / 1024:.1f} KiB")
    assert size < 512 * 1024  # well under 1 MB

    clock.now += 600.0  # ten minutes down
    restarted = RuleEngine(rules, instance="node-1", clock=clock)
    loaded = state.load()
    assert loaded is not None
    restarted.load_state(loaded["engine"])
    assert restarted.slo_status() == engine.slo_status()
    assert [(a.labels, a.state, a.active_at, a.fired_at) for a in restarted.alerts()] == [
        (a.labels, a.state, a.active_at, a.fired_at) for a in engine.alerts()]  # fmt: skip
