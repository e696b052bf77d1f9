from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.config import CostConfig, ModelPrice
from sidecar.exchange import GpuUsage, Principal
from sidecar.gpu.attribution import Unattributed
from sidecar.gpu.cost import CostModel, Payback
from sidecar.gpu.usage_metrics import UnattributedCollector, UsageMetrics
from tests.support.clock import Clock
from tests.support.records import make_exchange

SEED = ModelPrice(input_per_1k=0.015, output_per_1k=0.025, per_request=0.001)


def first_two() -> Callable[[str | None], str]:
    """A label bound that keeps the first two values it sees and calls later ones `other`."""
    seen: set[str] = set()

    def label(value: str | None) -> str:
        if not value:
            return ""
        if value in seen or len(seen) < 2:
            seen.add(value)
            return value
        return "other"

    return label


def build(hardware_price: float = 30_000.0) -> tuple[CollectorRegistry, UsageMetrics, Clock]:
    registry = CollectorRegistry()
    clock = Clock(0.0)
    payback = Payback(CostConfig(hardware_price=hardware_price, cloud_prices={"default": SEED}), clock=clock)
    metrics = UsageMetrics(registry, first_two(), first_two(), payback, "EUR")
    return registry, metrics, clock


USAGE = GpuUsage(gpu_seconds=1.5, energy_joules=450.0, cost_local=0.002, cost_cloud_equivalent=0.0027)


def test_usage_is_counted_by_model_and_cost_by_model_tenant_and_kind():
    registry, metrics, clock = build()
    metrics(make_exchange(usage=USAGE, principal=Principal(tenant="acme", auth_method="api_key")))
    metrics(make_exchange(usage=USAGE))
    clock.now = 3600.0

    value = registry.get_sample_value
    assert value("sidecar_gpu_energy_joules_total", {"model": "llama"}) == pytest.approx(900.0)
    assert value("sidecar_gpu_seconds_total", {"model": "llama"}) == pytest.approx(3.0)
    # 450 J over make_exchange's 50 output tokens: 9 J per token.
    assert value("sidecar_gpu_energy_per_output_token_joules_bucket", {"model": "llama", "le": "5.0"}) == 0.0
    assert value("sidecar_gpu_energy_per_output_token_joules_bucket", {"model": "llama", "le": "10.0"}) == 2.0
    assert value("sidecar_cost_total", {"model": "llama", "tenant": "acme", "kind": "local"}) == pytest.approx(0.002)
    assert value("sidecar_cost_total", {"model": "llama", "tenant": "none", "kind": "cloud_equivalent"}) == (
        pytest.approx(0.0027)
    )
    assert value("sidecar_cost_currency_info", {"currency": "EUR"}) == 1.0
    assert value("sidecar_cost_payback_months") is not None
    text = generate_latest(registry).decode()
    assert "EUR" in text.split("# HELP sidecar_cost_total ")[1].splitlines()[0]


def test_labels_go_through_the_bounding_callables():
    registry, metrics, _ = build()
    for name in ("a", "b", "c", "d"):
        call = dataclasses.replace(make_exchange().gen_ai, request_model=name)  # type: ignore[type-var]
        metrics(make_exchange(usage=USAGE, gen_ai=call))

    assert registry.get_sample_value("sidecar_gpu_energy_joules_total", {"model": "other"}) == pytest.approx(900.0)
    assert registry.get_sample_value("sidecar_gpu_energy_joules_total", {"model": "c"}) is None


def test_a_call_without_a_model_or_output_tokens():
    registry, metrics, _ = build()
    metrics(make_exchange(usage=USAGE, gen_ai=None))

    assert registry.get_sample_value("sidecar_gpu_energy_joules_total", {"model": "unknown"}) == pytest.approx(450.0)
    assert registry.get_sample_value("sidecar_gpu_energy_per_output_token_joules_count", {"model": "unknown"}) == 0.0


def test_exchanges_without_usage_are_ignored():
    registry, metrics, _ = build()
    metrics(make_exchange())

    assert registry.get_sample_value("sidecar_gpu_energy_joules_total", {"model": "llama"}) is None


def test_payback_months_are_absent_until_known():
    registry, metrics, clock = build()
    assert "sidecar_cost_payback_months " not in generate_latest(registry).decode()

    metrics(make_exchange(usage=USAGE))
    clock.now = 60.0
    months = registry.get_sample_value("sidecar_cost_payback_months")
    saving_per_month = (0.0027 - 450.0 / 3.6e6 * 0.15) / 60.0 * (365.25 / 12 * 86400)
    assert months == pytest.approx(30_000.0 / saving_per_month)


def test_payback_months_are_absent_without_a_hardware_price():
    registry, metrics, clock = build(hardware_price=0.0)
    metrics(make_exchange(usage=USAGE))
    clock.now = 60.0
    assert "sidecar_cost_payback_months " not in generate_latest(registry).decode()


def test_observer_cost_micro_benchmark():
    """Prints what one Exchange costs the observer on the event loop."""
    _, metrics, _ = build()
    exchange = make_exchange(usage=USAGE, principal=Principal(tenant="acme", auth_method="api_key"))
    rounds = 20_000
    began = time.perf_counter()
    for _ in range(rounds):
        metrics(exchange)
    elapsed = time.perf_counter() - began
    print(f"\nUsageMetrics: {elapsed / rounds * 1e6:.2f} µs per exchange")


def test_what_no_request_was_charged_is_served_as_counters_with_its_price():
    registry = CollectorRegistry()
    loose = Unattributed(energy_joules=0.0, gpu_seconds=0.0)
    cost = CostModel(CostConfig(electricity_per_kwh=0.15, hardware_price=30_000.0))
    registry.register(UnattributedCollector(lambda: loose, cost))
    # An H100 idle for an hour at 70 W.
    loose = Unattributed(energy_joules=70.0 * 3600, gpu_seconds=3600.0)

    value = registry.get_sample_value
    assert value("sidecar_gpu_unattributed_energy_joules_total") == pytest.approx(252_000.0)
    assert value("sidecar_gpu_unattributed_seconds_total") == pytest.approx(3600.0)
    # 0.07 kWh of electricity and an hour of a 30,000 server written off over three years.
    assert value("sidecar_cost_unattributed_total") == pytest.approx(0.0105 + 30_000 / (3 * 365 * 24), rel=1e-6)
    assert "# TYPE sidecar_cost_unattributed_total counter" in generate_latest(registry).decode()
