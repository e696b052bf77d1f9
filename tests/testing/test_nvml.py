"""The simulated GPUs (`gpu.nvml.simulate`): idle while nothing is at the model server, busy while it works."""

from __future__ import annotations

import pytest

from sidecar.testing.nvml import FakeNvml
from tests.support.clock import Clock


class Load:
    """Seconds the model server has been busy, scripted: busy from `busy_from` on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.busy_from: float | None = None
        self.busy_before = 0.0

    def __call__(self) -> float:
        if self.busy_from is None:
            return self.busy_before
        return self.busy_before + max(0.0, self.clock.now - self.busy_from)

    def idle(self) -> None:
        self.busy_before, self.busy_from = self(), None

    def busy(self) -> None:
        self.busy_from = self.clock.now


def readings(nvml: FakeNvml) -> tuple[int, float, int, int]:
    """(utilisation %, power W, SM clock MHz, energy counter mJ) of GPU 0, read as the collector reads them."""
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
    watts = nvml.nvmlDeviceGetPowerUsage(handle) / 1000
    clock = nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
    return util, watts, clock, nvml.nvmlDeviceGetTotalEnergyConsumption(handle)


def test_a_simulated_gpu_idles_without_load_and_works_under_it() -> None:
    clock = Clock(100.0)
    load = Load(clock)
    nvml = FakeNvml(1, clock=clock, pcie_delay=0.0, load=load)
    nvml.nvmlInit()
    _, _, _, start_mj = readings(nvml)

    for _ in range(10):  # 10 s with nothing at the model server
        clock.now += 1.0
        util, watts, sm_clock, _ = readings(nvml)
        assert (util, watts, sm_clock) == (0, 72.0, 345), "idle: near idle power, no utilisation"
    _, _, _, idle_mj = readings(nvml)
    assert idle_mj - start_mj == pytest.approx(72.0 * 10 * 1000, rel=1e-6)

    load.busy()
    for _ in range(10):  # 10 s of the model server working without a break
        clock.now += 1.0
        util, watts, sm_clock, _ = readings(nvml)
        assert (util, watts, sm_clock) == (87, 412.5, 1980), "busy: the recorded readings of an H100 serving"
    _, _, _, busy_mj = readings(nvml)
    assert busy_mj - idle_mj == pytest.approx(412.5 * 10 * 1000, rel=1e-6)

    load.idle()
    clock.now += 0.5
    load.busy()
    clock.now += 0.5  # a second half spent working
    util, watts, _, half_mj = readings(nvml)
    assert util == round(87 / 2) and watts == pytest.approx(72 + (412.5 - 72) / 2, abs=0.001)
    assert half_mj - busy_mj == pytest.approx((72.0 * 0.5 + 412.5 * 0.5) * 1000, rel=1e-6)


def test_without_a_load_the_readings_stay_as_recorded() -> None:
    clock = Clock(0.0)
    nvml = FakeNvml(1, clock=clock, pcie_delay=0.0)
    nvml.nvmlInit()
    _, _, _, start_mj = readings(nvml)
    clock.now += 2.0
    util, watts, sm_clock, end_mj = readings(nvml)
    assert (util, watts, sm_clock) == (87, 412.5, 1980)
    assert end_mj - start_mj == pytest.approx(412.5 * 2 * 1000)
