"""The rule engine on /metrics, read back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sidecar.config import RulesConfig
from sidecar.exchange import GpuSample, GpuState
from sidecar.rules.engine import RuleEngine
from sidecar.rules.metrics import RulesCollector
from sidecar.rules.spec import effective_rules
from tests.support.clock import Clock, T0
from tests.support.records import make_exchange


def scrape(engine: RuleEngine) -> dict[str, list[Sample]]:
    registry = CollectorRegistry()
    registry.register(RulesCollector(engine))
    text = generate_latest(registry).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def engine_with_alerts() -> tuple[RuleEngine, Clock]:
    clock = Clock()
    config = RulesConfig.model_validate({
        "defaults": False,
        "alerts": [
            {"name": "HighErrors", "signal": "error_ratio", "op": ">", "threshold": 0.05, "for": "2m",
             "severity": "critical"},
            {"name": "GpuHot", "signal": "gpu_temperature", "op": ">", "threshold": 85},
        ],
        "slos": [{"name": "availability", "objective": 99.9}],
    })  # fmt: skip
    engine = RuleEngine(effective_rules(config), instance="node-1", clock=clock, external_labels={"cluster": "eu"})
    for i in range(100):
        engine.observe_exchange(make_exchange(status=500 if i < 5 else 200))
    engine.observe_gpu_sample(GpuSample(at=T0, source="nvml", gpu="0", uuid="GPU-a", pci_bus_id="", device="",
                                        model_name="", hostname="", state=GpuState.OK,
                                        fields={"DCGM_FI_DEV_GPU_TEMP": 90.0}))  # fmt: skip
    engine.evaluate()
    return engine, clock


def test_alerts_are_published_as_prometheus_publishes_alerts_and_their_for_state() -> None:
    engine, clock = engine_with_alerts()
    families = scrape(engine)
    alerts = {(s.labels["alertname"], s.labels.get("severity")): s for s in families["sidecar_alerts"]}
    # 5 % errors: not over HighErrors' 5 %, but a 50x burn of a 99.9 % SLO (page and ticket fire at once,
    # the windows holding only these requests, 5 of them bad: the SLO's minimum); GpuHot has no `for`.
    assert set(alerts) == {("GpuHot", "warning"), ("SloAvailabilityErrorBudgetBurn", "page"),
                           ("SloAvailabilityErrorBudgetBurn", "ticket")}  # fmt: skip
    gpu = alerts[("GpuHot", "warning")]
    assert gpu.value == 1.0
    assert gpu.labels == {"alertname": "GpuHot", "alertstate": "firing", "cluster": "eu", "gpu": "0",
                          "UUID": "GPU-a", "instance": "node-1", "severity": "warning"}  # fmt: skip
    for_state = {s.labels["alertname"] + s.labels["severity"]: s for s in families["sidecar_alerts_for_state"]}
    assert for_state["GpuHotwarning"].value == T0
    assert "alertstate" not in for_state["GpuHotwarning"].labels


def test_pending_alerts_are_published_with_alertstate_pending_and_resolved_ones_are_not() -> None:
    clock = Clock()
    config = RulesConfig.model_validate({"defaults": False, "alerts": [
        {"name": "HighErrors", "signal": "error_ratio", "window": "10s", "op": ">", "threshold": 0.05, "for": "2m",
         "min_events": 0, "min_bad_events": 0}]})  # fmt: skip
    engine = RuleEngine(effective_rules(config), instance="node-1", clock=clock)
    engine.observe_exchange(make_exchange(status=500))
    engine.evaluate()
    [sample] = scrape(engine)["sidecar_alerts"]
    assert sample.labels["alertstate"] == "pending"
    clock.now += 60.0
    engine.evaluate()  # the failure left the 10s window: the pending alert is gone
    assert scrape(engine)["sidecar_alerts"] == []


def test_slo_objective_budget_burn_rates_and_error_ratios() -> None:
    engine, _ = engine_with_alerts()
    families = scrape(engine)
    [objective] = families["sidecar_slo_objective_ratio"]
    assert objective.labels == {"slo": "availability"} and abs(objective.value - 0.999) < 1e-12
    [remaining] = families["sidecar_slo_error_budget_remaining_ratio"]
    assert abs(remaining.value - (1 - 0.05 / 0.001)) < 1e-9  # 5 % errors: 49 budgets overspent
    burn = {s.labels["window"]: s.value for s in families["sidecar_slo_burn_rate"]}
    assert sorted(burn) == sorted(["5m", "30m", "1h", "2h", "6h", "1d", "3d"])
    assert abs(burn["5m"] - 50.0) < 1e-9
    ratios = {s.labels["window"]: s.value for s in families["sidecar_slo_sli_error_ratio"]}
    assert "30d" in ratios and ratios["30d"] == 0.05


def test_evaluator_health_metrics() -> None:
    engine, _ = engine_with_alerts()
    engine.evaluate()
    families = scrape(engine)
    assert families["sidecar_rule_evaluations"][0].name == "sidecar_rule_evaluations_total"
    assert families["sidecar_rule_evaluations"][0].value == 2
    assert families["sidecar_rule_evaluation_failures"][0].value == 0
    [duration] = families["sidecar_rule_evaluation_duration_seconds"]
    assert duration.value == engine.last_evaluation_duration_s > 0


def test_no_slo_samples_before_the_first_request() -> None:
    config = RulesConfig.model_validate({"defaults": False, "slos": [{"name": "availability", "objective": 99.9}]})
    engine = RuleEngine(effective_rules(config), instance="node-1", clock=Clock())
    families = scrape(engine)
    assert families["sidecar_slo_burn_rate"] == []
    assert families["sidecar_slo_sli_error_ratio"] == []
    assert families["sidecar_slo_error_budget_remaining_ratio"][0].value == 1.0
