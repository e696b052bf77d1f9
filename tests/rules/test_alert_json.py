"""Alerts as JSON: `/-/alerts`, the audit record, the transition's log line, `/-/slo` and the status
page carry an alert value that is NaN or infinite (a gauge that read +Inf, or one restored without a
value) as null, never as the `NaN`/`Infinity` that json.dumps writes and JSON parsers refuse."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from sidecar.app import Sidecar, alert_record, alerts_view
from sidecar.config import RulesConfig
from sidecar.exchange import GpuSample, GpuState
from sidecar.rules.alert import AlertState, AlertTransition
from sidecar.rules.engine import RuleEngine
from sidecar.rules.spec import effective_rules
from sidecar.telemetry.status import StatusPage, StatusSources
from tests.conftest import sidecar_config
from tests.support.clock import Clock, T0

HOT = {"name": "Hot", "signal": "gpu_temperature", "op": ">", "threshold": 85, "severity": "critical"}


def strict_json(data: Any) -> Any:
    """As a receiver reads it: json.dumps as the admin server writes, parsed refusing NaN/Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(json.dumps(data), parse_constant=refuse)


def infinite_alert_engine(clock: Clock) -> RuleEngine:
    engine = RuleEngine(effective_rules(RulesConfig.model_validate({"defaults": False, "alerts": [HOT]})),
                        instance="node-1", clock=clock)  # fmt: skip
    engine.observe_gpu_sample(GpuSample(at=T0, source="dcgm", gpu="0", uuid="GPU-1", pci_bus_id="", device="",
                                        model_name="", hostname="h", state=GpuState.OK,
                                        fields={"DCGM_FI_DEV_GPU_TEMP": math.inf}))  # fmt: skip
    engine.evaluate()
    [alert] = engine.alerts()
    assert alert.state is AlertState.FIRING and alert.value == math.inf
    return engine


def test_alerts_view_is_json_with_an_infinite_value() -> None:
    view = strict_json(alerts_view(infinite_alert_engine(Clock())))
    assert view["alerts"][0]["value"] is None


def test_alerts_view_is_json_after_restoring_an_alert_without_a_value() -> None:
    clock = Clock()
    saved = json.loads(json.dumps(infinite_alert_engine(clock).dump_state()))
    assert saved["rules"][0]["alerts"][0]["value"] is None
    restarted = RuleEngine(effective_rules(RulesConfig.model_validate({"defaults": False, "alerts": [HOT]})),
                           instance="node-1", clock=clock)  # fmt: skip
    restarted.load_state(saved)
    assert math.isnan(restarted.alerts()[0].value)  # kept a float: no value is NaN, as in Prometheus
    assert strict_json(alerts_view(restarted))["alerts"][0]["value"] is None


def test_the_audit_record_and_the_log_line_carry_no_infinity(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    [alert] = infinite_alert_engine(Clock()).alerts()
    record = alert_record(alert, T0)
    assert strict_json(dataclasses.asdict(record))["sidecar"]["alert"]["value"] is None
    sidecar = Sidecar(sidecar_config("http://127.0.0.1:9", tmp_path))
    with caplog.at_level(logging.INFO, logger="sidecar.app"):
        sidecar._alert_transition(AlertTransition(alert, AlertState.PENDING, T0))
    [line] = [r for r in caplog.records if r.getMessage() == "alert Hot firing"]
    assert line.value is None  # type: ignore[attr-defined]


def test_slo_and_status_page_json_are_finite() -> None:
    clock = Clock()
    engine = infinite_alert_engine(clock)
    [status] = RuleEngine(effective_rules(RulesConfig()), instance="node-1", clock=clock).slo_status()
    infinite = dataclasses.replace(status, budget_remaining=-math.inf, error_ratio=math.nan,
                                   burn_rates={300.0: math.inf}, used_downtime_s=math.inf)  # fmt: skip
    assert strict_json(infinite.as_dict())["budget_remaining"] is None
    page = StatusPage(StatusSources(instance="node-1", version="0", upstream="http://model", alerts=engine.alerts,
                                    slos=lambda: [infinite], rules=engine.rule_states), clock=clock)  # fmt: skip
    page.sample()
    data = strict_json(page.build())
    assert data["alerts"]["alerts"][0]["value"] is None
    assert data["slo"]["slos"][0]["budget_remaining_ratio"] is None
