"""The status page's data (`/-/status.json`) on a controllable clock: its shape and units, rates
computed from known traffic, the bounded GPU and sample rings, and the sections of parts that are off."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from sidecar.config import RulesConfig
from sidecar.exchange import GpuSample, GpuState, GpuUsage
from sidecar.rules.engine import HISTORY_SLOTS, RuleEngine
from sidecar.rules.spec import effective_rules
from sidecar.rules.windows import LAYOUT, histogram_quantile
from sidecar.telemetry.status import AuditReading, CostSource, StatusPage, StatusSources, wants_html
from tests.support.clock import Clock, T0
from tests.support.records import make_exchange


def engine_for(clock: Clock, *, defaults: bool = True) -> RuleEngine:
    rules = effective_rules(RulesConfig.model_validate({"defaults": defaults}))
    return RuleEngine(rules, instance="test", clock=clock)


def sources(**changes: Any) -> StatusSources:
    return dataclasses.replace(StatusSources(instance="test", version="0", upstream="http://model"), **changes)


def gpu_sample(at: float, gpu: str = "0", *, util: float = 50.0, state: GpuState = GpuState.OK,
               instance: str | None = None, simulated: bool = False, **fields: float) -> GpuSample:  # fmt: skip
    values = {"DCGM_FI_DEV_GPU_UTIL": util, "DCGM_FI_DEV_FB_USED": 3000.0, "DCGM_FI_DEV_FB_FREE": 1000.0,
              "DCGM_FI_DEV_GPU_TEMP": 60.0, "DCGM_FI_DEV_POWER_USAGE": 300.0, **fields}  # fmt: skip
    return GpuSample(at=at, source="nvml", gpu=gpu, uuid=f"GPU-{gpu}", pci_bus_id="", device=f"nvidia{gpu}",
                     model_name="NVIDIA H100 80GB HBM3", hostname="h", state=state,
                     fields=values if state is GpuState.OK else {}, gpu_instance_id=instance,
                     simulated=simulated)  # fmt: skip


def strict_json(data: dict[str, Any]) -> dict[str, Any]:
    """What the page receives: the builder's answer must be valid JSON, with no NaN or Infinity."""
    return json.loads(json.dumps(data, allow_nan=False))


# --- requests ------------------------------------------------------------------------------------


def test_request_rates_errors_tokens_and_quantiles_from_known_traffic() -> None:
    clock = Clock(T0)
    engine = engine_for(clock)
    page = StatusPage(sources(request_slots=engine.recent_slots), clock=clock)
    # Slot [T0, T0 + 10): 40 requests, 4 of them failed server-side, 1 refused by a rate limit.
    durations = [0.02 * (i + 1) for i in range(40)]
    for i, seconds in enumerate(durations):
        clock.now = T0 + i * 0.2
        status = 500 if i % 10 == 0 else 200
        engine.observe_exchange(make_exchange(status=status, upstream_status=status, duration_s=seconds))
    clock.now = T0 + 9
    engine.observe_exchange(make_exchange(status=429, error_type="rate_limited", gen_ai=None, duration_s=0.001))
    # Slot [T0 + 10, T0 + 20): nothing. Slot [T0 + 20, T0 + 30): still open, so not shown yet.
    clock.now = T0 + 25
    engine.observe_exchange(make_exchange())

    data = strict_json(page.build())
    requests = data["requests"]
    assert requests["available"] and requests["note"] is None and requests["slot_s"] == 10
    series = requests["series"]
    assert series["t"] == [T0 + 10, T0 + 20]  # each point is the end of its slot
    assert series["requests_per_s"] == [4.1, 0.0]
    assert series["errors_per_s"] == [0.4, 0.0]
    assert series["rate_limited_per_s"] == [0.1, 0.0]
    assert series["error_ratio"] == [pytest.approx(4 / 41), None]  # no requests: no ratio, not 0
    assert series["input_tokens_per_s"] == [40 * 30 / 10, 0.0]  # the refused request was no model call
    assert series["output_tokens_per_s"] == [40 * 50 / 10, 0.0]
    # The quantiles are the histogram's, as Prometheus's histogram_quantile would compute them.
    bounds = LAYOUT.histograms["request_duration"][1]
    cumulative = [sum(1 for s in [*durations, 0.001] if s <= bound) for bound in bounds] + [41]
    for q, name in ((0.5, "latency_p50_s"), (0.95, "latency_p95_s"), (0.99, "latency_p99_s")):
        assert series[name][0] == pytest.approx(histogram_quantile(q, bounds, cumulative))
        assert series[name][1] is None
    # TTFT only from the model calls that succeeded (all 0.25 s, in the (0.1, 0.25] bucket).
    assert 0.1 < series["ttft_p50_s"][0] <= 0.25 and series["ttft_p95_s"][0] <= 0.25
    assert series["ttft_p50_s"][1] is None
    assert requests["latest"]["requests_per_s"] == 0.0 and requests["latest"]["t"] == T0 + 20
    assert requests["window"] == {"requests": 41, "errors": 4, "error_ratio": pytest.approx(4 / 41),
                                  "requests_per_s": pytest.approx(41 / 20), "input_tokens": 1200,
                                  "output_tokens": 2000}  # fmt: skip


def test_request_history_is_the_last_15_minutes_from_when_counting_began() -> None:
    clock = Clock(T0 + 3)
    engine = engine_for(clock, defaults=False)  # no window needs 15 minutes of 10 s slots: kept anyway
    page = StatusPage(sources(request_slots=engine.recent_slots), clock=clock)
    clock.now = T0 + 5
    assert strict_json(page.build())["requests"]["note"] == "no 10-second slot has closed yet"
    for step in range(200):  # one request every 10 s for 2000 s
        clock.now = T0 + 5 + step * 10
        engine.observe_exchange(make_exchange())
    clock.now = T0 + 2005
    series = strict_json(page.build())["requests"]["series"]
    assert len(series["t"]) == HISTORY_SLOTS == 90
    assert series["t"][0] == T0 + 2000 - 890 and series["t"][-1] == T0 + 2000
    assert series["requests_per_s"] == [0.1] * 90
    # Fresh engine: the slots before counting began are left out, not shown as zero traffic, and the
    # first slot's rate is over the 7 s it counted, not its 10.
    clock.now = T0 + 3
    engine = engine_for(clock)
    for step in range(7):
        clock.now = T0 + 3 + step
        engine.observe_exchange(make_exchange())
    clock.now = T0 + 35
    page = StatusPage(sources(request_slots=engine.recent_slots), clock=clock)
    series = strict_json(page.build())["requests"]["series"]
    assert series["t"] == [T0 + 10, T0 + 20, T0 + 30]
    assert series["requests_per_s"] == [1.0, 0.0, 0.0]


# --- GPUs ----------------------------------------------------------------------------------------


def test_gpu_readings_are_averaged_per_5_seconds_per_gpu_with_units() -> None:
    clock = Clock(T0)
    page = StatusPage(sources(gpu_problem=lambda: None), clock=clock)
    for second in range(12):  # readings at T0 .. T0 + 11; utilisation climbs 1 % a second
        page.observe_gpu_sample(gpu_sample(T0 + second, util=10.0 + second))
        page.observe_gpu_sample(gpu_sample(T0 + second, "1", util=90.0))
    page.observe_gpu_sample(gpu_sample(T0 + 11, instance="1"))  # a MIG instance: not charted
    clock.now = T0 + 11.5
    gpu = strict_json(page.build())["gpu"]
    assert gpu["available"] and gpu["note"] is None and gpu["step_s"] == 5
    assert [g["gpu"] for g in gpu["gpus"]] == ["0", "1"]
    first = gpu["gpus"][0]
    assert first["uuid"] == "GPU-0" and first["name"] == "NVIDIA H100 80GB HBM3" and first["state"] == "ok"
    assert first["simulated"] is False and gpu["simulated"] is False
    assert first["memory_total_mib"] == 4000
    series = first["series"]
    # Two closed steps ([T0, T0+5), [T0+5, T0+10)) at their ends, then the open one at the last reading.
    assert series["t"] == [T0 + 5, T0 + 10, T0 + 11]
    assert series["utilization_percent"] == [12.0, 17.0, 20.5]
    assert series["memory_used_percent"] == [75.0, 75.0, 75.0]
    assert series["temperature_celsius"] == [60.0] * 3 and series["power_watts"] == [300.0] * 3
    assert first["latest"] == {"utilization_percent": 20.5, "memory_used_percent": 75.0,
                               "temperature_celsius": 60.0, "power_watts": 300.0}  # fmt: skip


def test_a_lost_gpu_leaves_a_gap_and_the_rings_stay_bounded() -> None:
    clock = Clock(T0)
    page = StatusPage(sources(gpu_problem=lambda: None), clock=clock, max_gpus=3)
    for second in range(0, 3000):
        lost = 1000 <= second < 1010
        page.observe_gpu_sample(gpu_sample(T0 + second, state=GpuState.LOST if lost else GpuState.OK))
    for gpu in range(1, 6):
        page.observe_gpu_sample(gpu_sample(T0 + 2999, str(gpu)))
    clock.now = T0 + 3000
    gpus = strict_json(page.build())["gpu"]["gpus"]
    assert [g["gpu"] for g in gpus] == ["0", "1", "2"]  # max_gpus
    series = gpus[0]["series"]
    assert len(series["t"]) <= 900 / 5 + 1 and series["t"][0] > T0 + 2100
    # GPU 0 was lost for 10 s long ago; now GPU 0 stops reporting: it is forgotten after 15 minutes.
    clock.now = T0 + 2999 + 901
    assert strict_json(page.build())["gpu"]["gpus"] == []
    # A lost GPU's steps carry no values (a gap in the chart), and its state says why.
    page = StatusPage(sources(gpu_problem=lambda: None), clock=clock)
    for second in range(10):
        page.observe_gpu_sample(gpu_sample(clock.now + second, state=GpuState.LOST if second >= 5 else GpuState.OK))
    clock.now += 10
    page.observe_gpu_sample(gpu_sample(clock.now, state=GpuState.LOST))
    gpu = strict_json(page.build())["gpu"]["gpus"][0]
    assert gpu["state"] == "lost"
    assert gpu["series"]["utilization_percent"][-1] is None


def test_simulated_gpus_are_marked_as_such() -> None:
    clock = Clock(T0)
    page = StatusPage(sources(gpu_problem=lambda: None), clock=clock)
    page.observe_gpu_sample(gpu_sample(T0, simulated=True))
    page.observe_gpu_sample(gpu_sample(T0, "1"))
    gpu = strict_json(page.build())["gpu"]
    assert gpu["simulated"] is True, "the section says some of its readings are simulated"
    assert [(g["gpu"], g["simulated"]) for g in gpu["gpus"]] == [("0", True), ("1", False)]


def test_gpu_section_says_why_there_is_no_reading() -> None:
    page = StatusPage(sources(gpu_problem=lambda: "NVML is not available: no NVIDIA driver or GPU on this host"))
    assert page.build()["gpu"] == {"available": True, "note": "NVML is not available: no NVIDIA driver or GPU on "
                                   "this host", "simulated": False, "step_s": 5.0, "gpus": []}  # fmt: skip


# --- audit, cost, SLOs and alerts ----------------------------------------------------------------


class FakeAudit:
    def __init__(self) -> None:
        self.reading = AuditReading(sink="elasticsearch", sink_up=True, accepted=0, dropped=0, dead_letters=0,
                                    spool_used_bytes=0, spool_max_bytes=1 << 30, lag_events=0)  # fmt: skip

    def __call__(self) -> AuditReading:
        return self.reading

    def add(self, **changes: float | bool) -> None:
        self.reading = dataclasses.replace(self.reading, **changes)


def test_audit_rates_and_gauges_from_sampled_counters() -> None:
    clock = Clock(T0)
    audit = FakeAudit()
    page = StatusPage(sources(audit=audit), clock=clock)
    page.sample()
    assert page.build()["audit"]["note"] == "collecting: a rate needs two readings 5 s apart"
    for step, (accepted, dropped, dead) in enumerate([(50, 0, 0), (150, 0, 1), (20, 5, 1)], start=1):
        clock.now = T0 + 5 * step
        # The third reading's accepted count fell: the pipeline restarted, counting from 0 again.
        audit.add(accepted=accepted, dropped=dropped, dead_letters=dead, spool_used_bytes=step * (1 << 28),
                  lag_events=step * 10, sink_up=step != 3)  # fmt: skip
        page.sample()
    data = strict_json(page.build())["audit"]
    assert data["available"] and data["note"] is None and data["sink"] == "elasticsearch"
    series = data["series"]
    assert series["t"] == [T0, T0 + 5, T0 + 10, T0 + 15]
    assert series["accepted_per_s"] == [None, 10.0, 20.0, 4.0]
    assert series["dropped_per_s"] == [None, 0.0, 0.0, 1.0]
    assert series["dead_letters_per_s"] == [None, 0.0, 0.2, 0.0]
    assert series["spool_fill_ratio"] == [0.0, 0.25, 0.5, 0.75]
    assert series["sink_up"] == [1.0, 1.0, 1.0, 0.0]
    assert data["latest"] == {"sink_up": False, "accepted": 20, "dropped": 5, "dead_letters": 1,
                              "spool_used_bytes": 3 << 28, "spool_max_bytes": 1 << 30, "spool_fill_ratio": 0.75,
                              "lag_events": 30, "accepted_per_s": 4.0}  # fmt: skip
    # Samples are kept for the window only (plus one, the base of the first rate).
    for step in range(4, 400):
        clock.now = T0 + 5 * step
        page.sample()
    series = strict_json(page.build())["audit"]["series"]
    assert len(series["t"]) == 180 and series["t"][0] > clock.now - 900
    assert series["accepted_per_s"][0] == 0.0  # its base is the sample just before the window


class FakePayback:
    def __init__(self) -> None:
        self.saved = 0.0

    def savings(self) -> float:
        return self.saved

    def months(self) -> float | None:
        return 30000 / (self.saved * 30) if self.saved > 0 else None


def test_cost_sums_priced_requests_over_the_window_and_shows_payback() -> None:
    clock = Clock(T0)
    payback = FakePayback()
    idle = [0.0]
    source = CostSource(currency="EUR", hardware_price=30000, cloud_priced=True, savings=payback.savings,
                        payback_months=payback.months, unattributed=lambda: idle[0])  # fmt: skip
    page = StatusPage(sources(cost=source), clock=clock)
    page.sample()
    data = strict_json(page.build())["cost"]
    assert "no request has been priced yet" in data["note"] and data["latest"]["payback_months"] is None
    for step in range(1, 4):
        usage = GpuUsage(gpu_seconds=1.0, energy_joules=100.0, cost_local=0.001, cost_cloud_equivalent=0.01)
        for _ in range(10):
            page.observe_exchange(make_exchange(usage=usage))
        page.observe_exchange(make_exchange())  # no usage: not priced
        idle[0] += 0.5  # what the GPUs cost meanwhile that no request was charged
        clock.now = T0 + 5 * step
        page.sample()
    payback.saved = 0.27
    data = strict_json(page.build())["cost"]
    assert data["available"] and data["note"] is None and data["currency"] == "EUR"
    assert data["series"]["t"] == [T0, T0 + 5, T0 + 10, T0 + 15]
    assert data["series"]["local_cumulative"] == pytest.approx([0.0, 0.01, 0.02, 0.03])
    assert data["series"]["cloud_equivalent_cumulative"] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # Idle GPUs on a line of their own, not loaded onto the requests.
    assert data["series"]["unattributed_cumulative"] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert data["idle_power"] == "unattributed"
    assert data["latest"] == {"local_total": pytest.approx(0.03), "unattributed_total": pytest.approx(1.5),
                              "cloud_equivalent_total": pytest.approx(0.3), "savings_24h": 0.27,
                              "payback_months": pytest.approx(30000 / 8.1), "hardware_price": 30000}  # fmt: skip
    # Without cloud prices or a hardware price the page says what is missing.
    bare = StatusPage(sources(cost=dataclasses.replace(source, cloud_priced=False, hardware_price=0)), clock=clock)
    bare.sample()
    data = strict_json(bare.build())["cost"]
    assert "gpu.cost.cloud_prices" in data["note"] and "gpu.cost.hardware_price" in data["note"]
    assert data["latest"]["cloud_equivalent_total"] is None and data["series"]["cloud_equivalent_cumulative"] == [None]


def test_slo_budget_and_burn_rates_and_alerts_from_the_engine() -> None:
    clock = Clock(T0)
    engine = engine_for(clock)
    page = StatusPage(sources(request_slots=engine.recent_slots, slos=engine.slo_status, alerts=engine.alerts,
                              rules=engine.rule_states), clock=clock)  # fmt: skip
    page.sample()
    for step in range(1, 13):  # a minute: 100 requests every 5 s, 10 % failing
        for i in range(100):
            status = 500 if i % 10 == 0 else 200
            engine.observe_exchange(make_exchange(status=status, upstream_status=status))
        clock.now = T0 + 5 * step
        engine.evaluate()
        page.sample()
    data = strict_json(page.build())
    (slo,) = data["slo"]["slos"]
    assert slo["name"] == "availability" and slo["objective"] == pytest.approx(0.999)
    assert slo["total"] == 1200 and slo["bad"] == 120 and slo["availability"] == pytest.approx(0.9)
    # 10 % errors against a 0.1 % budget: burning 100 times too fast, the budget overspent 99 times.
    assert slo["budget_remaining_ratio"] == pytest.approx(1 - 100)
    # But a minute of a 30-day period says nothing about the period's budget as a share: the budget is
    # given as failed-request time against the time allowed so far, with how much of the period is counted.
    assert slo["coverage_ratio"] == pytest.approx(60 / (30 * 86400))
    assert slo["budget"] == {"remaining_ratio": None, "min_coverage_ratio": 0.1, "spent_s": pytest.approx(6.0),
                             "allowed_so_far_s": pytest.approx(0.06), "allowed_s": pytest.approx(2592.0)}  # fmt: skip
    assert slo["burn_rates"]["300"] == pytest.approx(100) and set(slo["burn_rates"]) == {
        "300", "1800", "3600", "7200", "21600", "86400", "259200"}  # fmt: skip
    history = slo["series"]
    assert history["t"] == [T0 + 5 * step for step in range(13)]
    assert history["budget_remaining_ratio"][0] == 1.0 and history["burn_rate_300"][0] is None
    assert history["budget_spent_s"][0] == 0.0 and history["budget_spent_s"][-1] == pytest.approx(6.0)
    assert history["budget_allowed_so_far_s"][-1] == pytest.approx(0.06)
    assert history["burn_rate_300"][-1] == pytest.approx(100) and history["burn_rate_3600"][-1] == pytest.approx(100)
    alerts = data["alerts"]
    assert alerts["available"] and alerts["rules"] == {"total": len(engine.rule_states()), "failing": 0}
    by_name = {(alert["name"], alert["severity"]): alert for alert in alerts["alerts"]}
    high = by_name[("SidecarHighErrorRate", "critical")]
    assert high["state"] == "pending" and high["since"] == T0 + 5
    assert high["summary"] == "10% of requests are failing (over 5% for 2m)" and high["value"] == pytest.approx(0.1)
    assert alerts["counts"]["pending"] >= 1
    # Firing first, then pending.
    states = [alert["state"] for alert in alerts["alerts"]]
    assert states == sorted(states, key=["firing", "pending", "resolved"].index)


def test_the_budget_is_a_share_of_the_period_once_a_tenth_of_it_is_counted() -> None:
    clock = Clock(T0)
    engine = engine_for(clock)
    page = StatusPage(sources(slos=engine.slo_status), clock=clock)
    for day in range(3):  # a request an hour, the first of them failed, for three days
        for hour in range(24):
            clock.now = T0 + day * 86400 + hour * 3600
            status = 500 if day == hour == 0 else 200
            engine.observe_exchange(make_exchange(status=status, upstream_status=status))
            if day == 2 and hour == 23:
                young = strict_json(page.build())["slo"]["slos"][0]
    clock.now = T0 + 3 * 86400
    (slo,) = strict_json(page.build())["slo"]["slos"]

    # 2 d 23 h of 30 d counted: still under a tenth, so no percentage of the 30-day budget yet.
    assert young["coverage_ratio"] < 0.1 and young["budget"]["remaining_ratio"] is None
    assert young["budget"]["spent_s"] == pytest.approx(71 * 3600 / 72)  # 1 request in 72 failed, over 71 h
    assert slo["coverage_ratio"] == pytest.approx(0.1)
    assert slo["budget"]["remaining_ratio"] == slo["budget_remaining_ratio"] == pytest.approx(1 - (1 / 72) / 0.001)


# --- parts that are off, and sources that fail ---------------------------------------------------


def test_every_section_says_why_when_its_part_is_off() -> None:
    page = StatusPage(sources(off={"gpu": "GPU readings are off (gpu.nvml.enabled ...)"}))
    page.sample()
    data = strict_json(page.build())
    assert set(data) == {"generated_at", "window_s", "refresh_s", "service", "requests", "gpu", "slo", "alerts",
                         "audit", "cost"}  # fmt: skip
    assert data["window_s"] == 900 and data["refresh_s"] == 5
    assert data["service"]["ready"] is True and data["service"]["upstream"] == "http://model"
    for name in ("requests", "gpu", "slo", "alerts", "audit", "cost"):
        assert data[name]["available"] is False and data[name]["note"], name
    assert data["gpu"]["note"] == "GPU readings are off (gpu.nvml.enabled ...)"


def test_a_failing_source_empties_its_section_and_nan_becomes_null(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Any:
        raise RuntimeError("spool closed")

    clock = Clock(T0)
    page = StatusPage(sources(audit=broken, readiness=lambda: {"upstream": "3 probes failed", "audit": None},
                              gpu_problem=lambda: None), clock=clock)  # fmt: skip
    page.observe_gpu_sample(gpu_sample(T0, util=math.nan, DCGM_FI_DEV_POWER_USAGE=math.inf))
    page.sample()
    page.sample()
    data = strict_json(page.build())
    assert data["audit"]["available"] and data["audit"]["latest"] is None and data["audit"]["series"]["t"] == []
    assert sum("reading a source failed" in record.message for record in caplog.records) == 1  # once, not per poll
    assert data["service"] == {**data["service"], "ready": False,
                               "checks": {"upstream": "3 probes failed", "audit": "ok"}}  # fmt: skip
    assert data["gpu"]["gpus"][0]["latest"]["utilization_percent"] is None
    assert data["gpu"]["gpus"][0]["latest"]["power_watts"] is None


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # Chromium, Firefox
        ("*/*", False),  # curl, aiohttp, requests
        ("", False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.9, application/json;q=0.9", True),
        ("text/html;q=0", False),
    ],
)
def test_only_a_client_that_prefers_html_gets_the_page(accept: str, html: bool) -> None:
    assert wants_html(accept) is html
