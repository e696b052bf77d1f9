from __future__ import annotations

import pytest

from sidecar.config import CostConfig, ModelPrice
from sidecar.exchange import GpuUsage
from sidecar.gpu.cost import CostModel, Payback
from tests.support.clock import Clock

# A cloud API at 0.015 / 0.025 per 1k input / output tokens and 0.001 per call.
SEED = ModelPrice(input_per_1k=0.015, output_per_1k=0.025, per_request=0.001)
THREE_YEARS = 3 * 365 * 86400.0
MONTH = 365.25 / 12 * 86400


def config(**changes: object) -> CostConfig:
    values: dict[str, object] = {"electricity_per_kwh": 0.15, "cloud_prices": {"default": SEED}}
    values.update(changes)
    return CostConfig(**values)  # type: ignore[arg-type]


def test_local_cost_is_electricity_plus_amortised_hardware():
    model = CostModel(config(hardware_price=30_000.0, amortisation=THREE_YEARS))

    assert model.electricity(3.6e6) == pytest.approx(0.15)
    assert model.hardware(1.0) == pytest.approx(30_000.0 / THREE_YEARS)
    assert model.local(3.6e6, 3600.0) == pytest.approx(0.15 + 3600.0 * 30_000.0 / THREE_YEARS)


def test_without_a_hardware_price_local_cost_is_electricity_alone():
    assert CostModel(config()).local(7.2e6, 1000.0) == pytest.approx(0.30)


def test_the_hardware_price_is_shared_between_the_gpus_it_buys():
    one, eight = CostModel(config(hardware_price=80_000.0)), CostModel(config(hardware_price=80_000.0), gpus=8)
    assert eight.hardware(10.0) == pytest.approx(one.hardware(10.0) / 8)


def test_cloud_equivalent_at_the_seed_prices():
    model = CostModel(config())

    assert model.cloud_equivalent("llama", 1000, 500) == pytest.approx(0.015 + 0.0125 + 0.001)
    assert model.cloud_equivalent(None, 0, 0) == pytest.approx(0.001)


def test_cloud_equivalent_prefers_the_model_s_own_price_then_default_then_none():
    priced = config(cloud_prices={"big": ModelPrice(input_per_1k=1.0, output_per_1k=2.0), "default": SEED})
    model = CostModel(priced)
    assert model.cloud_equivalent("big", 1000, 1000) == pytest.approx(3.0)
    assert model.cloud_equivalent("small", 1000, 1000) == pytest.approx(0.041)
    assert CostModel(config(cloud_prices={"big": SEED})).cloud_equivalent("small", 1000, 1000) is None


def usage(cloud: float | None, energy: float = 3600.0) -> GpuUsage:
    return GpuUsage(gpu_seconds=1.0, energy_joules=energy, cost_local=None, cost_cloud_equivalent=cloud)


def test_payback_months_at_the_current_savings_rate():
    clock = Clock(1_000_000.0)
    payback = Payback(config(hardware_price=30_000.0), clock=clock)
    # 1,000 requests in an hour, each saving 0.0285 - 0.00015 (3.6 kJ of electricity).
    for i in range(1000):
        clock.now = 1_000_000.0 + i * 3.6
        payback.record(usage(0.0285))
    clock.now = 1_003_600.0

    saving = 1000 * (0.0285 - 0.00015)
    assert payback.savings() == pytest.approx(saving)
    assert payback.months() == pytest.approx(30_000.0 / (saving / 3600.0 * MONTH))


def test_payback_forgets_savings_older_than_its_window():
    clock = Clock(0.0)
    payback = Payback(config(hardware_price=30_000.0), window=86400.0, clock=clock)
    payback.record(usage(1.0))
    clock.now = 3600.0
    payback.record(usage(1.0))
    clock.now = 86400.0 + 1800.0

    assert payback.savings() == pytest.approx(1.0 - 0.00015)
    clock.now = 86400.0 + 7200.0
    assert payback.savings() == 0.0
    assert payback.months() is None


def test_payback_memory_is_bounded_by_minute_buckets():
    clock = Clock(0.0)
    payback = Payback(config(hardware_price=1.0), window=3600.0, clock=clock)
    for second in range(0, 7200, 5):
        clock.now = float(second)
        payback.record(usage(0.01))
    assert len(payback._buckets) <= 61


def test_payback_is_unknown_without_a_hardware_price_or_savings():
    clock = Clock(0.0)
    free = Payback(config(), clock=clock)
    free.record(usage(1.0))
    assert free.months() is None

    losing = Payback(config(hardware_price=30_000.0), clock=clock)
    losing.record(usage(0.0001, energy=3.6e6))  # 0.15 of electricity for 0.0001 of cloud tokens
    assert losing.months() is None

    unpriced = Payback(config(hardware_price=30_000.0), clock=clock)
    unpriced.record(usage(None))
    assert unpriced.months() is None


def test_payback_never_reports_infinity():
    clock = Clock(0.0)
    payback = Payback(config(hardware_price=1e300, electricity_per_kwh=0.0), clock=clock)
    payback.record(usage(1e-300))
    clock.now = 60.0
    assert payback.months() is None
