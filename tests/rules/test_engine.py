"""The rule engine on a controllable clock: Prometheus's alert states, SLO burn rates and budgets,
per-GPU alerts, gauges and counters, failures kept to one rule, restarts, and the cost of a tick."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import statistics
import subprocess
import time
import tracemalloc
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import RulesConfig
from sidecar.exchange import GpuEvent, GpuSample, GpuState, HealthResult, HealthState, Outcome
from sidecar.rules.alert import AlertState, AlertTransition, fingerprint
from sidecar.rules.engine import RuleEngine
from sidecar.rules.spec import RuleSet, RuleSpec, SignalCondition, effective_rules
from tests.support.clock import Clock, T0
from tests.support.records import make_exchange
from tests.support.tools import require_tool

OK = make_exchange()
FAILED = make_exchange(status=500, upstream_status=500)


def ruleset(*alerts: Mapping[str, Any], slos: Iterable[Mapping[str, Any]] = (), defaults: bool = False) -> RuleSet:
    config = {"defaults": defaults, "alerts": list(alerts), "slos": list(slos)}
    return effective_rules(RulesConfig.model_validate(config))


def engine_for(rules: RuleSet, clock: Clock, **options: Any) -> RuleEngine:
    return RuleEngine(rules, instance="node-1", clock=clock, **options)


def gpu_sample(gpu: str, uuid: str, *, state: GpuState = GpuState.OK, **fields: float) -> GpuSample:
    return GpuSample(at=0.0, source="nvml", gpu=gpu, uuid=uuid, pci_bus_id=f"0000:0{gpu}:00.0", device=f"nvidia{gpu}",
                     model_name="NVIDIA H100", hostname="h", state=state, fields=fields)  # fmt: skip


def health(state: HealthState, failures: int = 0) -> HealthResult:
    return HealthResult(at=0.0, ok=state is HealthState.UP, status=200, latency_s=0.01, error=None, state=state,
                        consecutive_successes=0, consecutive_failures=failures, changed=False)  # fmt: skip


def described(transitions: Iterable[AlertTransition]) -> list[tuple[str, str | None, str]]:
    return [(t.alert.name, t.previous and t.previous.value, t.alert.state.value) for t in transitions]


# No minimum of evidence: these tests follow the alert states from the first failure on (the
# minimum has tests of its own below).
HIGH_ERRORS = {"name": "HighErrors", "signal": "error_ratio", "window": "5m", "op": ">", "threshold": 0.05,
               "for": "2m", "keep_firing_for": "1m", "severity": "critical", "min_events": 0, "min_bad_events": 0,
               "annotations": {"summary": "{{ $value | humanizePercentage }} failing on {{ $labels.instance }}"},
               }  # fmt: skip


# --- acceptance 1: an error-ratio alert through its states ----------------------------------------


def test_error_ratio_alert_pends_fires_after_for_and_resolves_after_keep_firing_for() -> None:
    clock = Clock()
    engine = engine_for(ruleset(HIGH_ERRORS), clock)
    timeline: dict[float, list[tuple[str, str | None, str]]] = {}
    values: dict[float, float] = {}

    def tick(failing: bool) -> None:
        # Ten requests a second, one of them an upstream 500 while failing: 10 %.
        for i in range(10):
            engine.observe_exchange(FAILED if failing and i == 0 else OK)
        transitions = engine.evaluate()
        if transitions:
            timeline[clock.now] = described(transitions)
        state = engine.rule_states()[0]
        values[clock.now] = state.values[0][1] if state.values else math.nan
        clock.now += 1.0  # evaluation interval: 1 s

    for _ in range(200):
        tick(failing=True)
    recovered_at = clock.now
    for _ in range(600):
        tick(failing=False)

    # Pending at the first evaluation, firing at the first evaluation >= active_at + 2m.
    assert timeline[T0] == [("HighErrors", None, "pending")]
    assert timeline[T0 + 120] == [("HighErrors", "pending", "firing")]
    assert values[T0] == pytest.approx(0.1)
    # After recovery the 5m ratio decays; as in Prometheus (KeepFiringSince), the alert stays firing
    # 1m (keep_firing_for) from the first evaluation at which the ratio is no longer over 5 %, then
    # resolves: one interval after last_held + 1m.
    last_held = max(t for t, v in values.items() if v > 0.05)
    # By hand: at recovery + 149 s the window (10 s slots) starts 160 s before recovery: 160 failures
    # in 310 s x 10 requests = 5.16 %; a second later 150 in 3010 = 4.98 %.
    assert last_held == recovered_at + 149
    first_missed = last_held + 1
    assert timeline[first_missed + 60] == [("HighErrors", "firing", "resolved")]
    assert sorted(timeline) == [T0, T0 + 120, first_missed + 60]
    [alert] = engine.alerts()
    assert (alert.state, alert.active_at, alert.fired_at, alert.resolved_at, alert.keep_firing_since) == (
        AlertState.RESOLVED, T0, T0 + 120, first_missed + 60, first_missed)  # fmt: skip
    assert alert.labels == {"alertname": "HighErrors", "instance": "node-1", "severity": "critical"}
    assert alert.annotations["summary"].endswith("failing on node-1")


def test_for_zero_fires_at_once_and_a_pending_alert_that_stops_holding_just_disappears() -> None:
    clock = Clock()
    at_once = {**HIGH_ERRORS, "name": "AtOnce", "for": "0s", "keep_firing_for": "0s"}
    engine = engine_for(ruleset(HIGH_ERRORS, at_once), clock)
    engine.observe_exchange(FAILED)
    assert described(engine.evaluate()) == [("HighErrors", None, "pending"), ("AtOnce", None, "firing")]
    # The window fills with good requests before `for` elapses: the pending one goes without a word.
    for _ in range(60):
        clock.now += 1.0
        for _ in range(30):
            engine.observe_exchange(OK)
        transitions = engine.evaluate()
        if transitions:
            assert described(transitions) == [("AtOnce", "firing", "resolved")]
    assert [(a.name, a.state) for a in engine.alerts()] == [("AtOnce", AlertState.RESOLVED)]


def test_resolved_alerts_are_kept_for_the_retention_and_a_new_episode_starts_pending() -> None:
    clock = Clock()
    rule = {**HIGH_ERRORS, "window": "10s", "for": "0s", "keep_firing_for": "0s"}
    engine = engine_for(ruleset(rule), clock, resolved_retention_s=120.0)
    engine.observe_exchange(FAILED)
    assert described(engine.evaluate()) == [("HighErrors", None, "firing")]
    clock.now += 30.0  # the 10s window (10 s slots: 10 to 20 s) no longer holds the failure
    assert described(engine.evaluate()) == [("HighErrors", "firing", "resolved")]
    resolved_at = clock.now
    clock.now = resolved_at + 120.0
    engine.evaluate()
    assert [a.state for a in engine.alerts()] == [AlertState.RESOLVED]  # kept while now - resolved_at <= 120 s
    engine.observe_exchange(FAILED)  # the condition holds again: a new alert, new active_at
    assert described(engine.evaluate()) == [("HighErrors", None, "firing")]
    assert engine.alerts()[0].active_at == clock.now
    clock.now += 30.0
    engine.evaluate()
    clock.now += 121.0
    engine.evaluate()
    assert engine.alerts() == []


def test_keep_firing_for_bridges_a_flapping_condition() -> None:
    clock = Clock()
    rule = {**HIGH_ERRORS, "window": "10s", "for": "0s", "keep_firing_for": "45s"}
    engine = engine_for(ruleset(rule), clock)
    transitions = []
    for second in range(200):
        if second % 40 == 0 and second < 120:  # a failure every 40 s, then none
            engine.observe_exchange(FAILED)
        transitions += described(engine.evaluate())
        clock.now += 1.0
    # One firing episode despite the 20 s gaps, resolved 45 s after the first evaluation that no
    # longer held (one 1 s interval after the last that held).
    assert transitions == [("HighErrors", None, "firing"), ("HighErrors", "firing", "resolved")]
    alert = engine.alerts()[0]
    assert alert.keep_firing_since == alert.last_held_at + 1.0
    assert alert.resolved_at == alert.keep_firing_since + 45.0


def test_labels_external_labels_never_override_and_annotations_render() -> None:
    clock = Clock()
    rule = {**HIGH_ERRORS, "for": "0s", "labels": {"team": "ml"}}
    engine = RuleEngine(ruleset(rule), instance="node-1", clock=clock,
                        external_labels={"cluster": "eu-1", "severity": "info", "team": "other"})  # fmt: skip
    engine.observe_exchange(FAILED)
    engine.observe_exchange(OK)
    [transition] = engine.evaluate()
    assert transition.alert.labels == {"alertname": "HighErrors", "cluster": "eu-1", "instance": "node-1",
                                       "severity": "critical", "team": "ml"}  # fmt: skip
    assert transition.alert.annotations == {"summary": "50% failing on node-1"}
    assert transition.alert.value == 0.5


# --- acceptance 3: SLO burn rates and the error budget --------------------------------------------

SLO = {"name": "availability", "objective": 99.9, "period": "30d"}


def run_minutes(engine: RuleEngine, clock: Clock, minutes: int, *, bad_per_minute: float,
                per_minute: int = 100) -> list[AlertTransition]:  # fmt: skip
    """`per_minute` requests each minute, `bad_per_minute` of them failing (fractions: one every 1/x minutes)."""
    transitions: list[AlertTransition] = []
    owed = 0.0
    for _ in range(minutes):
        owed += bad_per_minute
        bad = int(owed)
        owed -= bad
        for i in range(per_minute):
            engine.observe_exchange(FAILED if i < bad else OK)
        transitions += engine.evaluate()
        clock.now += 60.0
    return transitions


def test_fast_burn_pages_and_the_budget_matches_a_hand_computation() -> None:
    clock = Clock()
    engine = engine_for(ruleset(slos=[SLO]), clock)
    assert run_minutes(engine, clock, 1440, bad_per_minute=0) == []  # a clean day
    # An hour at 2 % errors: a burn rate of 0.02 / 0.001 = 20 over the 5m window at once; over 1h the
    # share of burning minutes grows, and the page fires when 20 x m/60 passes 14.4 (m > 43.2).
    transitions = run_minutes(engine, clock, 60, bad_per_minute=2)
    assert [(t.alert.labels["severity"], t.previous, t.alert.state) for t in transitions] == [
        ("page", None, AlertState.FIRING)]  # fmt: skip
    page = transitions[0].alert
    assert 43 * 60 <= page.active_at - (T0 + 1440 * 60) <= 46 * 60
    assert page.value > 14.4
    assert page.labels["slo"] == "availability" and page.labels["alertname"] == "SloAvailabilityErrorBudgetBurn"
    [status] = engine.slo_status()
    # By hand: 1440 + 60 minutes x 100 requests = 150,000; 60 minutes x 2 = 120 bad.
    # error ratio 120 / 150,000 = 0.0008; budget 1 - 0.999 = 0.001;
    # remaining 1 - 0.0008 / 0.001 = 0.2; allowed 0.001 x 30 d = 2592 s; used 0.0008 x 25 h = 72 s.
    assert (status.total, status.bad) == (150_000, 120)
    assert status.error_ratio == pytest.approx(0.0008)
    assert status.availability == pytest.approx(0.9992)
    assert status.budget_remaining == pytest.approx(0.2)
    assert status.allowed_downtime_s == pytest.approx(2592.0)
    assert status.covered_s == 25 * 3600
    assert status.used_downtime_s == pytest.approx(72.0)
    assert status.burn_rates[300.0] == pytest.approx(20.0)
    # About 0.83 over 1d (120 bad in a day's 144,000 requests; the window's edge adds up to one 5 min
    # slot of clean traffic): far below the ticket's 3.
    assert status.burn_rates[86400.0] == pytest.approx(120 / 144_000 / 0.001, rel=0.01)
    assert status.error_ratios[2592000.0] == pytest.approx(0.0008)


def test_slow_burn_below_the_thresholds_fires_nothing() -> None:
    clock = Clock()
    engine = engine_for(ruleset(slos=[SLO]), clock)
    # 0.05 % errors (one request in 2,000) for 26 hours: a burn rate of 0.5 on every long window.
    transitions = run_minutes(engine, clock, 26 * 60, bad_per_minute=1 / 20)
    assert transitions == []
    assert engine.alerts() == []
    [status] = engine.slo_status()
    # By hand: 1560 minutes x 100 = 156,000 requests; 1560 / 20 = 78 bad; ratio 0.0005; burn 0.5;
    # budget remaining 1 - 0.0005 / 0.001 = 0.5.
    assert (status.total, status.bad) == (156_000, 78)
    assert status.budget_remaining == pytest.approx(0.5)
    assert status.burn_rates[86400.0] == pytest.approx(0.5, rel=0.05)


def test_slo_status_before_any_request() -> None:
    engine = engine_for(ruleset(slos=[SLO]), Clock())
    [status] = engine.slo_status()
    assert (status.total, status.error_ratio, status.availability, status.budget_remaining) == (0, None, None, 1.0)
    assert all(rate is None for rate in status.burn_rates.values())
    assert status.as_dict()["burn_rates"]["300"] is None


def test_latency_slo_counts_observations_above_the_threshold_bucket() -> None:
    clock = Clock()
    slo = {"name": "latency", "sli": "latency", "objective": 99, "latency_threshold": "1s"}
    engine = engine_for(ruleset(slos=[slo]), clock)
    for _ in range(97):
        engine.observe_exchange(make_exchange(duration_s=1.0))  # on the bound: good (le is inclusive)
    for _ in range(3):
        engine.observe_exchange(make_exchange(duration_s=1.2))
    [status] = engine.slo_status()
    assert (status.total, status.bad) == (100, 3)
    assert status.budget_remaining == pytest.approx(1 - 0.03 / 0.01)


# --- what counts as bad, and a minimum of evidence ---------------------------------------------------

# Quick ones, so that the shipped latency rule stays quiet.
ANSWERED = make_exchange(duration_s=0.2)
REFUSED = make_exchange(status=501, upstream_status=None, outcome=Outcome.REJECTED,
                        error_type="unsupported_transfer_coding", gen_ai=None, duration_s=0.001)  # fmt: skip
UNREACHABLE = make_exchange(status=502, upstream_status=None, outcome=Outcome.UPSTREAM_UNAVAILABLE,
                            error_type="upstream_connect_error", gen_ai=None, duration_s=0.001)  # fmt: skip
CLIENT_GONE = make_exchange(status=499, outcome=Outcome.CLIENT_CLOSED, error_type="client_closed", duration_s=0.1)


def test_requests_the_sidecar_refuses_and_clients_that_leave_fire_nothing() -> None:
    clock = Clock()
    engine = engine_for(ruleset(defaults=True), clock)
    transitions = []
    for _ in range(10):  # 300 refusals a second for 10 s, and 30 clients gone
        for _ in range(300):
            engine.observe_exchange(REFUSED)
        for _ in range(3):
            engine.observe_exchange(CLIENT_GONE)
        transitions += engine.evaluate()
        clock.now += 1.0
    assert transitions == [] and engine.alerts() == []
    [status] = engine.slo_status()
    assert (status.total, status.bad) == (3030, 0)
    [error_rate] = [state for state in engine.rule_states() if state.name == "SidecarHighErrorRate"]
    assert [value for _, value in error_rate.values] == [0.0]


def test_a_single_failure_right_after_start_fires_nothing() -> None:
    clock = Clock()
    engine = engine_for(ruleset(defaults=True), clock)
    engine.observe_exchange(UNREACHABLE)
    transitions = []
    for _ in range(600):  # ten minutes of evaluations, the failure in every window for 5 of them
        transitions += engine.evaluate()
        clock.now += 1.0
    assert transitions == []
    [status] = engine.slo_status()
    assert (status.total, status.bad) == (1, 1)
    assert status.burn_rates[3600.0] == pytest.approx(1000.0)  # the burn a page needs, 70 times over


@pytest.mark.parametrize(("good", "bad", "fires"), [
    (0, 4, False),   # 4 bad requests: one short of min_bad_events
    (10, 5, False),  # 15 requests: short of min_events
    (15, 5, True),   # 20 requests, 5 bad: enough
])  # fmt: skip
def test_a_burn_rate_alert_needs_min_events_and_min_bad_events_in_its_short_window(
    good: int, bad: int, fires: bool
) -> None:
    clock = Clock()
    engine = engine_for(ruleset(slos=[{**SLO, "min_events": 20, "min_bad_events": 5}]), clock)
    for _ in range(good):
        engine.observe_exchange(OK)
    for _ in range(bad):
        engine.observe_exchange(UNREACHABLE)
    transitions = engine.evaluate()
    assert sorted(t.alert.labels["severity"] for t in transitions) == (["page", "ticket"] if fires else [])
    # The burn rate is shown either way (a 1000x or 250x burn); only the evidence is missing.
    [page] = [state for state in engine.rule_states() if state.labels["severity"] == "page"]
    assert page.values[0][1] > 14.4
    assert "with events >= 20 and bad >= 5 over the short window" in page.expression


@pytest.mark.parametrize(("good", "bad", "fires"), [(0, 4, False), (10, 5, False), (15, 5, True)])
def test_an_error_ratio_rule_needs_min_events_and_min_bad_events_in_its_window(
    good: int, bad: int, fires: bool
) -> None:
    clock = Clock()
    rule = {**HIGH_ERRORS, "for": "0s", "min_events": 20, "min_bad_events": 5}
    engine = engine_for(ruleset(rule), clock)
    for _ in range(good):
        engine.observe_exchange(OK)
    for _ in range(bad):
        engine.observe_exchange(FAILED)
    assert described(engine.evaluate()) == ([("HighErrors", None, "firing")] if fires else [])
    [state] = engine.rule_states()
    assert state.values[0][1] == bad / (good + bad)
    assert state.expression == "error_ratio[5m] > 0.05 and requests[5m] >= 20 and errors[5m] >= 5"


def test_an_outage_after_hours_of_steady_traffic_pages_within_a_minute() -> None:
    clock = Clock()
    engine = engine_for(ruleset(defaults=True), clock)
    for _ in range(6 * 3600):  # six hours at one request a second, all answered
        engine.observe_exchange(ANSWERED)
        clock.now += 1.0
    assert engine.evaluate() == []
    outage_began = clock.now
    fired: dict[str, float] = {}
    while len(fired) < 2 and clock.now < outage_began + 3600:
        engine.observe_exchange(UNREACHABLE)  # every request fails from here on
        for transition in engine.evaluate():
            if transition.alert.name == "SloAvailabilityErrorBudgetBurn":
                fired[transition.alert.labels["severity"]] = transition.at - outage_began
        clock.now += 1.0
    # By hand: the 1h window's bad share passes 14.4 x 0.1 % with its 52nd failure (0.0144 x 3600 =
    # 51.8), at the evaluation 51 s in; the 5m window's after 5 failures, which is also the minimum of
    # bad requests. The 6h pair would take 0.006 x 21600 = 129.6 s. docs/rules.md: within a minute.
    assert 51 <= fired["page"] <= 60
    # The ticket's 3d pair (1x) sees the six hours only: 0.001 x 21600 = 21.6 failures.
    assert 21 <= fired["ticket"] <= 24


def test_each_slo_counts_bad_requests_as_it_is_configured() -> None:
    clock = Clock()
    strict = {"name": "strict", "objective": 99, "bad_statuses": ["5xx", "429"], "good_refusals": [],
              "good_outcomes": [], "bad_outcomes": ["upstream_unavailable", "client_closed"]}  # fmt: skip
    engine = engine_for(ruleset(slos=[SLO, strict]), clock)
    rate_limited = make_exchange(status=429, outcome=Outcome.REJECTED, error_type="rate_limited")
    for exchange in (OK, FAILED, REFUSED, UNREACHABLE, CLIENT_GONE, rate_limited):
        engine.observe_exchange(exchange)
    statuses = {status.name: (status.total, status.bad) for status in engine.slo_status()}
    assert statuses == {"availability": (6, 2), "strict": (6, 5)}


# --- acceptance 5: a restart keeps the alert and the windows -------------------------------------


def test_restart_keeps_a_firing_alert_without_announcing_it_again() -> None:
    clock = Clock()
    rules = ruleset(HIGH_ERRORS, slos=[SLO])
    engine = engine_for(rules, clock)
    for _ in range(130):
        for i in range(10):
            engine.observe_exchange(FAILED if i == 0 else OK)
        engine.evaluate()
        clock.now += 1.0
    firing = [a for a in engine.alerts() if a.name == "HighErrors"][0]
    assert firing.state is AlertState.FIRING
    budget_before = engine.slo_status()[0]
    data = engine.dump_state()

    clock.now += 30.0  # down for half a minute
    restarted = engine_for(rules, clock)
    restarted.load_state(data)
    for i in range(10):
        restarted.observe_exchange(FAILED if i == 0 else OK)
    transitions = restarted.evaluate()
    assert [t for t in transitions if t.alert.name == "HighErrors"] == []
    alert = [a for a in restarted.alerts() if a.name == "HighErrors"][0]
    assert (alert.state, alert.active_at, alert.fired_at) == (AlertState.FIRING, firing.active_at, firing.fired_at)
    budget_after = restarted.slo_status()[0]
    assert budget_after.total == budget_before.total + 10  # the error budget was not reset
    assert budget_after.bad == budget_before.bad + 1
    assert budget_after.covered_s == budget_before.covered_s + 30


def test_restart_after_a_long_downtime_ages_the_windows() -> None:
    clock = Clock()
    rules = ruleset(HIGH_ERRORS, slos=[SLO])
    engine = engine_for(rules, clock)
    for _ in range(130):
        for i in range(10):
            engine.observe_exchange(FAILED if i == 0 else OK)
        engine.evaluate()
        clock.now += 1.0
    data = engine.dump_state()
    clock.now += 3 * 3600  # three hours down: the 5m window is empty, the 30d one is not
    restarted = engine_for(rules, clock)
    restarted.load_state(data)
    # The first evaluation after the restart is the first that sees the condition no longer hold:
    # keep_firing_for (1m) runs from there, as it runs from Prometheus's KeepFiringSince.
    assert [t for t in restarted.evaluate() if t.alert.name == "HighErrors"] == []
    clock.now += 60.0
    transitions = restarted.evaluate()
    assert described(t for t in transitions if t.alert.name == "HighErrors") == [("HighErrors", "firing", "resolved")]
    status = restarted.slo_status()[0]
    assert status.total == 1300 and status.burn_rates[300.0] is None


def test_restart_with_a_changed_rule_set_drops_what_no_longer_applies(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    gone = {**HIGH_ERRORS, "name": "Retired", "for": "0s"}
    engine = engine_for(ruleset(HIGH_ERRORS, gone), clock)
    engine.observe_exchange(FAILED)
    engine.evaluate()
    data = engine.dump_state()
    restarted = engine_for(ruleset(HIGH_ERRORS, {**HIGH_ERRORS, "name": "Daily", "window": "1d"}), clock)
    with caplog.at_level(logging.INFO, logger="sidecar.rules.engine"):
        restarted.load_state(data)
    assert [a.name for a in restarted.alerts()] == ["HighErrors"]
    assert any("Retired" in record.getMessage() for record in caplog.records)


def test_load_state_refuses_another_version_and_malformed_data_without_changing_anything() -> None:
    clock = Clock()
    engine = engine_for(ruleset({**HIGH_ERRORS, "for": "0s"}), clock)
    engine.observe_exchange(FAILED)
    engine.evaluate()
    data = engine.dump_state()
    with pytest.raises(ValueError, match="version 99, expected 1"):
        engine.load_state({**data, "version": 99})
    broken = {**data, "rules": [{"name": "HighErrors", "labels": {"severity": "critical"},
                                 "alerts": [{"state": "on"}]}]}  # fmt: skip
    with pytest.raises(ValueError, match=r"rules\[0\]: unreadable"):
        engine.load_state(broken)
    assert [a.state for a in engine.alerts()] == [AlertState.FIRING]


# --- signals: per GPU, gauges, counters, absence --------------------------------------------------


def test_per_gpu_alert_fires_only_for_the_hot_gpu_with_its_labels() -> None:
    clock = Clock()
    rule = {"name": "GpuHot", "signal": "gpu_temperature", "op": ">", "threshold": 85, "for": "1m",
            "annotations": {"summary": "GPU {{ $labels.gpu }} ({{ $labels.UUID }}) at {{ $value }} C"}}  # fmt: skip
    engine = engine_for(ruleset(rule), clock)
    transitions = []
    for _ in range(61):
        engine.observe_gpu_sample(gpu_sample("0", "GPU-aaa", DCGM_FI_DEV_GPU_TEMP=91.0))
        engine.observe_gpu_sample(gpu_sample("1", "GPU-bbb", DCGM_FI_DEV_GPU_TEMP=60.0))
        transitions += engine.evaluate()
        clock.now += 1.0
    assert described(transitions) == [("GpuHot", None, "pending"), ("GpuHot", "pending", "firing")]
    alert = transitions[-1].alert
    assert alert.labels == {"alertname": "GpuHot", "gpu": "0", "UUID": "GPU-aaa", "instance": "node-1",
                            "severity": "warning"}  # fmt: skip
    assert alert.annotations["summary"] == "GPU 0 (GPU-aaa) at 91 C"
    values = {labels["gpu"]: value for labels, value in engine.rule_states()[0].values}
    assert values == {"0": 91.0, "1": 60.0}


def test_a_gpu_no_longer_sampled_stops_producing_values() -> None:
    clock = Clock()
    engine = engine_for(ruleset({"name": "GpuLost", "signal": "gpu_lost", "op": ">", "threshold": 0}), clock)
    engine.observe_gpu_sample(gpu_sample("0", "GPU-aaa", state=GpuState.LOST))
    assert described(engine.evaluate()) == [("GpuLost", None, "firing")]
    clock.now += 300.0
    assert engine.evaluate() == []  # 5 minutes old: still the last word
    clock.now += 1.0
    assert described(engine.evaluate()) == [("GpuLost", "firing", "resolved")]
    assert engine.rule_states()[0].values == ()


def test_gauge_aggregates_max_and_avg_over_the_window() -> None:
    clock = Clock()
    peak = {"name": "PowerPeak", "signal": "gpu_power_watts", "aggregate": "max", "window": "1m", "op": ">",
            "threshold": 400}  # fmt: skip
    mean = {**peak, "name": "PowerMean", "aggregate": "avg", "threshold": 350}
    engine = engine_for(ruleset(peak, mean), clock)
    for second in range(60):
        watts = 500.0 if second == 30 else 300.0  # one spike in a minute
        engine.observe_gpu_sample(gpu_sample("0", "GPU-aaa", DCGM_FI_DEV_POWER_USAGE=watts))
        engine.evaluate()
        clock.now += 1.0
    clock.now -= 1.0
    states = {state.name: state.values[0][1] for state in engine.rule_states()}
    assert states == {"PowerPeak": 500.0, "PowerMean": pytest.approx((59 * 300 + 500) / 60)}
    assert [a.name for a in engine.alerts()] == ["PowerPeak"]
    clock.now += 31.0  # the spike leaves the 1m window
    engine.observe_gpu_sample(gpu_sample("0", "GPU-aaa", DCGM_FI_DEV_POWER_USAGE=300.0))
    engine.evaluate()
    assert engine.rule_states()[0].values[0][1] == 300.0


def test_counters_count_their_increase_and_survive_a_reset() -> None:
    clock = Clock()
    rule = {"name": "Dropped", "signal": "audit_events_dropped", "window": "5m", "op": ">", "threshold": 4}
    engine = engine_for(ruleset(rule), clock)
    readings = iter([10.0, 12.0, 15.0, 2.0, 3.0])  # baseline, +2, +3, reset (+2), +1
    engine.add_counter("audit_events_dropped", lambda: next(readings))
    values = []
    for _ in range(5):
        transitions = engine.evaluate()
        values.append(engine.rule_states()[0].values[0][1])
        clock.now += 10.0
    assert values == [0.0, 2.0, 5.0, 7.0, 8.0]
    assert [a.state for a in engine.alerts()] == [AlertState.FIRING]
    assert transitions == []
    clock.now += 300.0
    engine.add_counter("audit_events_dropped", lambda: 3.0)
    engine.evaluate()
    assert engine.rule_states()[0].values[0][1] == 0.0  # all increases left the window


def test_xid_errors_count_per_gpu() -> None:
    clock = Clock()
    rule = {"name": "Xid", "signal": "gpu_xid_errors", "window": "5m", "op": ">", "threshold": 0}
    engine = engine_for(ruleset(rule), clock)
    engine.observe_gpu_event(GpuEvent(at=0.0, kind="xid", gpu="1", uuid="GPU-bbb", message="Xid 79", xid=79))
    engine.observe_gpu_event(GpuEvent(at=0.0, kind="recovered", gpu="0", uuid="GPU-aaa", message="back"))
    [transition] = engine.evaluate()
    alert = transition.alert
    assert (alert.labels["gpu"], alert.labels["UUID"], alert.value) == ("1", "GPU-bbb", 1)
    clock.now += 301.0
    assert described(engine.evaluate()) == [("Xid", "firing", "resolved")]


def test_absent_signals_never_alert_whatever_the_comparison() -> None:
    clock = Clock()
    rules = ruleset(
        {"name": "UpstreamNotUp", "signal": "upstream_up", "op": "<", "threshold": 1},
        {"name": "AnyErrorRatio", "signal": "error_ratio", "op": "<", "threshold": 1},
        {"name": "AnyLatency", "signal": "request_duration_quantile", "quantile": 0.5, "op": "<", "threshold": 100},
        {"name": "AnyGpu", "signal": "gpu_temperature", "op": "!=", "threshold": -1},
        {"name": "SinkDown", "signal": "audit_sink_up", "op": "==", "threshold": 0},
        {"name": "Lost", "signal": "gpu_xid_errors", "op": ">=", "threshold": 0},
    )  # fmt: skip
    engine = engine_for(rules, clock)
    engine.add_reading("audit_sink_up", lambda: None)  # unknown
    engine.observe_health(health(HealthState.UNKNOWN))
    assert engine.evaluate() == []
    assert all(state.values == () and state.health == "ok" for state in engine.rule_states())
    engine.observe_health(health(HealthState.DOWN, failures=3))
    assert described(engine.evaluate()) == [("UpstreamNotUp", None, "firing")]


def test_a_failing_rule_is_counted_and_the_others_still_evaluate(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    base = ruleset({**HIGH_ERRORS, "for": "0s"})
    good = base.rules[0]
    condition = SignalCondition("error_ratio", 300.0, "=~", 0.1)
    broken = RuleSpec("Broken", condition, 0.0, 0.0, {"severity": "x"}, {}, "config")
    unknown = dataclasses.replace(broken, name="Unknown", condition=SignalCondition("no_such_signal", 300.0, ">", 0))
    engine = engine_for(dataclasses.replace(base, rules=(broken, good, unknown)), clock)
    engine.observe_exchange(FAILED)
    with caplog.at_level(logging.ERROR, logger="sidecar.rules.engine"):
        assert described(engine.evaluate()) == [("HighErrors", None, "firing")]
        engine.evaluate()
    assert engine.evaluation_failures == 4 and engine.evaluations == 2
    states = {state.name: state for state in engine.rule_states()}
    assert states["Broken"].health == "err" and "unknown op '=~'" in (states["Broken"].error or "")
    assert "no_such_signal" in (states["Unknown"].error or "")
    assert states["HighErrors"].health == "ok"
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 2  # logged once per problem


def test_add_reading_and_add_counter_refuse_signals_that_are_not_theirs() -> None:
    engine = engine_for(ruleset(), Clock())
    with pytest.raises(ValueError, match="'gpu_temperature' is not a gauge signal with one series"):
        engine.add_reading("gpu_temperature", lambda: 1.0)
    with pytest.raises(ValueError, match="'error_ratio' is not a count signal"):
        engine.add_counter("error_ratio", lambda: 1.0)


def test_a_reading_that_raises_is_absent_not_fatal() -> None:
    clock = Clock()
    rule = {"name": "SpoolFull", "signal": "audit_spool_fill_ratio", "op": ">", "threshold": 0.8}
    engine = engine_for(ruleset(rule), clock)

    def broken() -> float:
        raise OSError("spool gone")

    engine.add_reading("audit_spool_fill_ratio", broken)
    assert engine.evaluate() == []
    engine.add_reading("audit_spool_fill_ratio", lambda: "not a number")  # type: ignore[arg-type,return-value]
    assert engine.evaluate() == []
    assert engine.evaluation_failures == 0
    engine.add_reading("audit_spool_fill_ratio", lambda: 0.9)
    assert described(engine.evaluate()) == [("SpoolFull", None, "firing")]


def test_alerts_are_snapshots_in_a_stable_order() -> None:
    clock = Clock()
    engine = engine_for(ruleset({"name": "GpuHot", "signal": "gpu_temperature", "op": ">", "threshold": 85}), clock)
    for gpu in ("3", "1", "2"):
        engine.observe_gpu_sample(gpu_sample(gpu, f"GPU-{gpu}", DCGM_FI_DEV_GPU_TEMP=90.0))
    engine.evaluate()
    alerts = engine.alerts()
    assert [a.labels["gpu"] for a in alerts] == ["1", "2", "3"]
    alerts[0].state = AlertState.RESOLVED
    assert engine.alerts()[0].state is AlertState.FIRING


def test_observe_exchange_costs_a_few_microseconds() -> None:
    clock = Clock()
    engine = engine_for(effective_rules(RulesConfig()), clock)  # the shipped rules and SLO
    exchanges = [OK, FAILED, make_exchange(duration_s=0.02, gen_ai=None)]
    count = 30_000
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for i in range(count):
            clock.now += 0.002  # 500 requests a second: slots close and roll up as they would under load
            engine.observe_exchange(exchanges[i % 3])
        best = min(best, (time.perf_counter() - started) / count)
    print(f"\nRuleEngine.observe_exchange: {best * 1e6:.2f} us per exchange (best of 3 x {count})")
    assert best < 50e-6  # loose: noisy machines; the figure above is the real one


# --- the acceptance budget: 50 rules over 30-day windows ------------------------------------------


def fifty_rules() -> RuleSet:
    """17 error ratios, 18 quantiles over 30 days, 5 rates and counts, and 5 SLOs of 30 days (10 rules)."""
    alerts: list[dict[str, Any]] = []
    windows = ("30d", "30d", "1d", "1h", "5m")
    classes = ("any", "5xx", "timeout", "upstream_down")
    for i in range(17):
        alerts.append({"name": f"ErrorRatio{i}", "signal": "error_ratio", "window": windows[i % 5],
                       "error_class": classes[i % 4], "op": ">", "threshold": 0.01 * (i + 1), "for": "5m"})  # fmt: skip
    signals = ("request_duration_quantile", "ttft_quantile", "tpot_quantile")
    quantiles = (0.5, 0.9, 0.95, 0.99, 0.999, 0.75)
    for i in range(18):
        alerts.append({"name": f"Latency{i}", "signal": signals[i % 3], "quantile": quantiles[i % 6], "window": "30d",
                       "op": ">", "threshold": 0.1 * (i + 1), "for": "10m"})  # fmt: skip
    for i in range(3):
        alerts.append({"name": f"Rate{i}", "signal": "request_rate", "window": "30d", "op": "<", "threshold": 0.001})
    for i in range(2):
        alerts.append({"name": f"RateLimited{i}", "signal": "rate_limit_rejections", "window": "30d", "op": ">",
                       "threshold": 1000})  # fmt: skip
    slos = [
        {"name": "availability", "objective": 99.9, "period": "30d"},
        {"name": "availability-strict", "objective": 99.99, "period": "30d"},
        {"name": "latency", "sli": "latency", "objective": 99, "period": "30d", "latency_threshold": "2.5s"},
        {"name": "latency-fast", "sli": "latency", "objective": 95, "period": "30d", "latency_threshold": "500ms"},
        {"name": "ttft", "sli": "latency", "objective": 99, "period": "30d", "latency_signal": "ttft",
         "latency_threshold": "1s"},
    ]  # fmt: skip
    rules = ruleset(*alerts, slos=slos)
    assert len(rules.rules) == 50
    return rules


def feed_days(engine: RuleEngine, clock: Clock, days: int) -> None:
    """A few requests an hour, one slow and one failing now and then, and an evaluation a day:
    every slot of the 30-day windows holds data, without simulating millions of requests."""
    slow = make_exchange(duration_s=4.0)
    timeout = make_exchange(status=504, outcome=Outcome.UPSTREAM_TIMEOUT, error_type="upstream_timeout")
    for step in range(days * 24):
        engine.observe_exchange(OK)
        engine.observe_exchange(slow if step % 3 else OK)
        if step % 4 == 0:
            engine.observe_exchange(timeout)
        if step % 24 == 0:
            engine.evaluate()
        clock.now += 3600.0


def test_fifty_rules_over_thirty_days_cost_under_a_millisecond_per_tick_in_bounded_memory() -> None:
    clock = Clock()
    rules = fifty_rules()
    gc.collect()
    tracemalloc.start()
    try:
        engine = engine_for(rules, clock)
        feed_days(engine, clock, 30)
        gc.collect()
        after_thirty_days = tracemalloc.get_traced_memory()[0]
        feed_days(engine, clock, 30)
        gc.collect()
        after_sixty_days = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    durations = []
    for _ in range(300):
        clock.now += 1.0
        engine.observe_exchange(OK)
        engine.observe_exchange(FAILED)
        started = time.perf_counter()
        engine.evaluate()
        durations.append(time.perf_counter() - started)
    median = statistics.median(durations)
    status = {s.name: s for s in engine.slo_status()}
    print(f"\n50 rules over 30-day windows: {median * 1e3:.3f} ms per tick (median of 300), "
          f"p90 {statistics.quantiles(durations, n=10)[-1] * 1e3:.3f} ms; "
          f"memory after 30 days {after_thirty_days / 1024:.0f} KiB, after 60 days {after_sixty_days / 1024:.0f} KiB "
          f"(windows' rings {engine.memory_bytes() / 1024:.0f} KiB)")  # fmt: skip
    assert median < 5e-3  # the target is 1 ms; loose because machines are noisy (the figure above is real)
    assert after_sixty_days <= after_thirty_days + 64 * 1024  # bounded: a second month costs nothing more
    assert engine.evaluation_failures == 0
    assert status["availability"].total >= 30 * 24 * 2  # the 30-day window holds a month of traffic
    assert engine.last_evaluation_duration_s > 0


# --- a wall clock stepped backwards ---------------------------------------------------------------


def test_a_clock_stepped_back_gives_sane_rates_and_no_false_alerts() -> None:
    """An hour ahead for a moment (or a state file written by a clock that was), then NTP steps it
    back: 1 request a second, and a burst of 502s that ended 20 minutes before the evaluation."""
    clock = Clock()
    rate = {"name": "Rate", "signal": "request_rate", "window": "5m", "op": ">", "threshold": 1000}
    errors = {"name": "Errors", "signal": "error_ratio", "window": "5m", "op": ">", "threshold": 0.05}
    engine = engine_for(ruleset(rate, errors), clock)
    clock.now = T0 + 3600
    engine.observe_exchange(OK)
    engine.evaluate()
    for second in range(1800):
        clock.now = T0 + second
        engine.observe_exchange(make_exchange(status=502) if 300 <= second < 600 else OK)
    assert engine.evaluate() == []
    values = {state.name: state.values[0][1] for state in engine.rule_states()}
    assert values["Rate"] == pytest.approx(1.0, abs=0.05)  # not 1.8e12: the span is never ~0
    assert values["Errors"] == 0.0
    assert engine.alerts() == []


def test_gauges_read_while_the_clock_was_ahead_go_stale_and_are_pruned_from_the_new_present() -> None:
    clock = Clock(T0 + 3600)
    hot = {"name": "Hot", "signal": "gpu_temperature", "op": ">", "threshold": 85, "severity": "warning"}
    engine = engine_for(ruleset(hot), clock)
    engine.observe_gpu_sample(gpu_sample("0", "GPU-a", DCGM_FI_DEV_GPU_TEMP=90.0))
    engine.evaluate()
    clock.now = T0  # stepped back an hour; GPU 0 is never sampled again
    assert described(engine.evaluate()) == []
    assert engine.rule_states()[0].values[0][1] == 90.0  # the last reading still stands ...
    clock.now = T0 + 301.0
    engine.evaluate()
    assert engine.rule_states()[0].values == ()  # ... but goes stale 5 minutes later, not an hour later
    for _ in range(3):
        clock.now += 10.0
        engine.evaluate()
    assert engine.dump_state()["series"] == []  # and is forgotten: pruning did not wait for the clock


# --- restoring pending alerts, keep_firing_for, empty labels --------------------------------------


def gpu_hot(engine: RuleEngine, temperature: float = 90.0) -> None:
    engine.observe_gpu_sample(gpu_sample("0", "GPU-a", DCGM_FI_DEV_GPU_TEMP=temperature))


HOT_FOR_1M = {"name": "Hot", "signal": "gpu_temperature", "op": ">", "threshold": 85, "for": "1m",
              "severity": "warning"}  # fmt: skip


def test_a_pending_alert_restored_after_downtime_must_hold_for_its_for_while_running() -> None:
    """Prometheus's RestoreForState: active_at moves forward by the downtime."""
    clock = Clock()
    engine = engine_for(ruleset(HOT_FOR_1M), clock)
    gpu_hot(engine)
    assert described(engine.evaluate()) == [("Hot", None, "pending")]
    clock.now += 5.0
    gpu_hot(engine)
    engine.evaluate()
    data = json.loads(json.dumps(engine.dump_state()))  # shut down 5 s into a 60 s `for`
    clock.now += 600.0  # down for 10 minutes
    restarted = engine_for(ruleset(HOT_FOR_1M), clock)
    restarted.load_state(data)
    [alert] = restarted.alerts()
    assert (alert.state, alert.active_at) == (AlertState.PENDING, T0 + 600.0)
    fired_at = None
    for _ in range(60):
        gpu_hot(restarted)
        for transition in restarted.evaluate():
            assert described([transition]) == [("Hot", "pending", "firing")]
            fired_at = clock.now
        clock.now += 1.0
    # Held 5 s before the shutdown and 55 s after the restart: 60 s, not 5 s plus the downtime.
    assert fired_at == T0 + 605.0 + 55.0


def test_a_restored_pending_alert_whose_for_had_elapsed_when_saved_fires_at_once() -> None:
    """RestoreForState's exception: `for` had run out before the shutdown (it would have fired at
    the next evaluation), so the downtime changes nothing."""
    clock = Clock()
    engine = engine_for(ruleset(HOT_FOR_1M), clock)
    for _ in range(60):  # evaluations at 0 s to 59 s
        gpu_hot(engine)
        engine.evaluate()
        clock.now += 1.0
    clock.now = T0 + 60.5  # saved between the evaluations at 59 s and 60 s
    data = engine.dump_state()
    assert [a.state for a in engine.alerts()] == [AlertState.PENDING]
    clock.now += 300.0
    restarted = engine_for(ruleset(HOT_FOR_1M), clock)
    restarted.load_state(data)
    gpu_hot(restarted)
    assert described(restarted.evaluate()) == [("Hot", "pending", "firing")]
    assert restarted.alerts()[0].active_at == T0


def test_a_restored_firing_alert_keeps_its_times() -> None:
    clock = Clock()
    engine = engine_for(ruleset(HOT_FOR_1M), clock)
    for _ in range(70):
        gpu_hot(engine)
        engine.evaluate()
        clock.now += 1.0
    data = engine.dump_state()
    clock.now += 600.0
    restarted = engine_for(ruleset(HOT_FOR_1M), clock)
    restarted.load_state(data)
    gpu_hot(restarted)
    assert restarted.evaluate() == []
    [alert] = restarted.alerts()
    assert (alert.state, alert.active_at, alert.fired_at) == (AlertState.FIRING, T0, T0 + 60.0)


KEEP_FIRING = {"name": "K", "signal": "upstream_consecutive_failures", "op": ">", "threshold": 0,
               "keep_firing_for": "5m", "severity": "warning"}  # fmt: skip


def keep_firing_timeline(engine: RuleEngine, clock: Clock, minutes: range,
                         restart_at: int | None = None) -> tuple[dict[int, str], RuleEngine]:  # fmt: skip
    """The series holds (1) from 0m to 10m and is 0 after; evaluated every minute."""
    states: dict[int, str] = {}
    for minute in minutes:
        if minute == restart_at:
            data = json.loads(json.dumps(engine.dump_state()))
            engine = engine_for(ruleset(KEEP_FIRING), clock)
            engine.load_state(data)
        clock.now = T0 + 60 * minute
        engine.observe_health(health(HealthState.DOWN, 1 if minute <= 10 else 0))
        engine.evaluate()
        states[minute] = ",".join(a.state.value for a in engine.alerts())
    return states, engine


def test_keep_firing_for_runs_from_the_first_evaluation_that_no_longer_holds_as_in_prometheus() -> None:
    """promtool's answer for `m > 0`, keep_firing_for 5m, m = 1x10 0x20 at 1m: firing at 15m,
    resolved at 16m (tests/rules/test_engine.py::test_promtool_agrees_on_keep_firing_for)."""
    clock = Clock()
    states, engine = keep_firing_timeline(engine_for(ruleset(KEEP_FIRING), clock), clock, range(20))
    assert states[10] == "firing" and states[11] == "firing"
    assert states[15] == "firing"
    assert states[16] == "resolved"
    [alert] = engine.alerts()
    assert (alert.keep_firing_since, alert.resolved_at, alert.last_held_at) == (T0 + 660, T0 + 960, T0 + 600)


def test_keep_firing_since_survives_a_restart() -> None:
    clock = Clock()
    states, _ = keep_firing_timeline(engine_for(ruleset(KEEP_FIRING), clock), clock, range(20), restart_at=13)
    assert (states[15], states[16]) == ("firing", "resolved")


def test_keep_firing_since_is_cleared_when_the_condition_holds_again() -> None:
    clock = Clock()
    engine = engine_for(ruleset(KEEP_FIRING), clock)
    for minute, failures in enumerate([1, 0, 0, 1, 0, 0, 0, 0, 0]):  # 0m to 8m
        clock.now = T0 + 60 * minute
        engine.observe_health(health(HealthState.DOWN, failures))
        engine.evaluate()
        if minute == 3:
            assert engine.alerts()[0].keep_firing_since is None
    [alert] = engine.alerts()
    assert (alert.state, alert.keep_firing_since) == (AlertState.FIRING, T0 + 240)  # resolves at 9m
    clock.now = T0 + 540
    engine.evaluate()
    assert engine.alerts()[0].state is AlertState.RESOLVED


def test_promtool_agrees_on_keep_firing_for(tmp_path: Path) -> None:
    """The timing the engine is held to above, from Prometheus itself."""
    promtool = require_tool("promtool")
    (tmp_path / "rules.yml").write_text(
        "groups:\n  - name: t\n    rules:\n      - alert: K\n        expr: m > 0\n        keep_firing_for: 5m\n"
    )
    (tmp_path / "test.yml").write_text("""\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'm'
        values: '1x10 0x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: K
        exp_alerts:
          - exp_labels: {}
      - eval_time: 16m
        alertname: K
        exp_alerts: []
""")
    result = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_empty_label_values_are_no_labels() -> None:
    """An XID error without a UUID, an empty external label, and a rule label set to "" (which
    removes the signal's label, as Prometheus's label builder does)."""
    clock = Clock()
    xid = {"name": "Xid", "signal": "gpu_xid_errors", "window": "5m", "op": ">", "threshold": 0, "severity": "critical"}
    anonymous = {**xid, "name": "XidAnyGpu", "labels": {"gpu": ""}}
    engine = RuleEngine(ruleset(xid, anonymous), instance="node-1", clock=clock,
                        external_labels={"team": "", "UUID": "from-external"})  # fmt: skip
    engine.observe_gpu_event(GpuEvent(at=0.0, kind="xid", gpu="0", uuid=None, message="Xid 79", xid=79))
    engine.evaluate()
    by_name = {alert.name: alert for alert in engine.alerts()}
    assert dict(by_name["Xid"].labels) == {"alertname": "Xid", "gpu": "0", "instance": "node-1",
                                           "severity": "critical", "UUID": "from-external"}  # fmt: skip
    assert dict(by_name["XidAnyGpu"].labels) == {"alertname": "XidAnyGpu", "instance": "node-1",
                                                 "severity": "critical", "UUID": "from-external"}  # fmt: skip


def test_fingerprints_match_alertmanagers_which_drops_empty_labels() -> None:
    labels = {"alertname": "GpuXidError", "gpu": "0", "instance": "i", "severity": "critical"}
    # Alertmanager's fingerprint of the label set it keeps once removeEmptyLabels has run.
    assert fingerprint({**labels, "UUID": ""}) == fingerprint(labels) == "eca98a761fa00d61"


def test_a_state_file_with_empty_labels_restores_them_dropped() -> None:
    clock = Clock()
    xid = {"name": "Xid", "signal": "gpu_xid_errors", "window": "5m", "op": ">", "threshold": 0}
    engine = engine_for(ruleset(xid), clock)
    engine.observe_gpu_event(GpuEvent(at=0.0, kind="xid", gpu="0", uuid=None, message="Xid 79", xid=79))
    engine.evaluate()
    data = json.loads(json.dumps(engine.dump_state()))
    data["rules"][0]["alerts"][0]["labels"]["UUID"] = ""  # as written before empty labels were dropped
    restarted = engine_for(ruleset(xid), clock)
    restarted.load_state(data)
    engine.observe_gpu_event(GpuEvent(at=0.0, kind="xid", gpu="0", uuid=None, message="Xid 79", xid=79))
    assert restarted.evaluate() == []  # the same alert, not a new one beside it
    [alert] = restarted.alerts()
    assert "UUID" not in alert.labels and alert.state is AlertState.FIRING
