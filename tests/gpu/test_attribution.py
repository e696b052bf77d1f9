"""Attribution on synthetic timelines: a known power curve, its exact energy integral, scripted requests."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping

import pytest

from sidecar.config import CostConfig, ModelPrice
from sidecar.exchange import GpuSample, GpuState, GpuUsage
from sidecar.gpu.attribution import (
    ENERGY_FIELD,
    ENGINE_ACTIVE_FIELD,
    POWER_FIELD,
    UTIL_FIELD,
    Attribution,
)
from sidecar.gpu.cost import CostModel
from tests.support.clock import Clock
from tests.support.records import make_exchange

PowerCurve = Callable[[float], float]


class ScriptedProxy:
    """The proxy's integral of requests in flight, for a fixed set of request intervals."""

    def __init__(self, clock: Clock, requests: Iterable[tuple[float, float]] = ()) -> None:
        self.clock = clock
        self.requests = list(requests)

    def request_seconds(self) -> float:
        now = self.clock.now
        return sum(max(0.0, min(end, now) - start) for start, end in self.requests if start < now)

    def in_flight(self, t: float) -> int:
        return sum(1 for start, end in self.requests if start <= t < end)


def piecewise_linear(points: list[tuple[float, float]]) -> PowerCurve:
    """Watts at t, linear between (t, watts) points and constant outside them."""

    def power(t: float) -> float:
        if t <= points[0][0]:
            return points[0][1]
        for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False):
            if t <= t1:
                return p0 + (p1 - p0) * (t - t0) / (t1 - t0)
        return points[-1][1]

    return power


def integral(power: PowerCurve, a: float, b: float, step: float = 0.01) -> float:
    """Joules drawn over [a, b] (midpoint rule: exact for curves linear between multiples of `step`)."""
    n = max(1, round((b - a) / step))
    h = (b - a) / n
    return sum(power(a + (i + 0.5) * h) for i in range(n)) * h


# 300 W constant, a ramp to 500 W between 10 s and 20 s, then 500 W.
RAMP = piecewise_linear([(0.0, 300.0), (10.0, 300.0), (20.0, 500.0)])


def sample(
    at: float,
    fields: Mapping[str, float],
    *,
    uuid: str = "GPU-x",
    gpu: str = "0",
    source: str = "nvml",
    state: GpuState = GpuState.OK,
    instance: str | None = None,
) -> GpuSample:
    return GpuSample(
        at=at, source=source, gpu=gpu, uuid=uuid, pci_bus_id="00000000:01:00.0", device=f"nvidia{gpu}",
        model_name="NVIDIA H100 80GB HBM3", hostname="h", state=state, fields=dict(fields),
        gpu_instance_id=instance, gpu_instance_profile=None if instance is None else "1g.10gb",
    )  # fmt: skip


def feed(
    attribution: Attribution,
    clock: Clock,
    power: PowerCurve,
    times: Iterable[float],
    *,
    util: float | None = 100.0,
    uuid: str = "GPU-x",
    energy: bool = True,
    watts: bool = True,
    counter_offset: float = 0.0,
    counter_from: float | None = None,
) -> None:
    """Samples of a GPU drawing `power`, at `times`; the counter (mJ) starts at `counter_offset` at
    `counter_from` (default: the first sample) and integrates `power` from there."""
    counter, previous = counter_offset, counter_from
    for t in times:
        clock.now = t
        counter += 0.0 if previous is None else integral(power, previous, t) * 1000
        previous = t
        fields: dict[str, float] = {}
        if energy:
            fields[ENERGY_FIELD] = counter
        if watts:
            fields[POWER_FIELD] = power(t)
        if util is not None:
            fields[UTIL_FIELD] = util
        attribution.observe(sample(t, fields, uuid=uuid))


def build(requests: Iterable[tuple[float, float]] = (), **options: object) -> tuple[Attribution, Clock, ScriptedProxy]:
    clock = Clock(0.0)
    proxy = ScriptedProxy(clock, requests)
    attribution = Attribution(request_seconds=proxy.request_seconds, clock=clock, **options)  # type: ignore[arg-type]
    return attribution, clock, proxy


def seconds(start: float, stop: float, step: float = 1.0) -> list[float]:
    return [start + i * step for i in range(round((stop - start) / step) + 1)]


def test_two_overlapping_requests_share_the_energy_of_their_union():
    a, b = (10.0, 14.5), (12.3, 17.0)
    attribution, clock, _ = build([a, b])
    feed(attribution, clock, RAMP, seconds(0, 30))

    usage_a = attribution.usage(*a)
    usage_b = attribution.usage(*b)
    assert usage_a is not None and usage_b is not None
    measured = integral(RAMP, 10.0, 17.0)
    assert usage_a[1] + usage_b[1] == pytest.approx(measured, rel=0.01)
    # At 100 % utilisation the busy time is the union's wall time, split the same way.
    assert usage_a[0] + usage_b[0] == pytest.approx(7.0, rel=0.01)
    # In [12, 13] A is in flight for 1 s and B for 0.7 s: A takes 1/1.7 of that second.
    alone_a = integral(RAMP, 10.0, 12.0)
    shared = integral(RAMP, 12.0, 13.0) / 1.7 + integral(RAMP, 13.0, 14.0) / 2 + integral(RAMP, 14.0, 15.0) * 0.5 / 1.5
    assert usage_a[1] == pytest.approx(alone_a + shared, rel=1e-6)


def test_shares_of_random_concurrent_requests_add_up_to_the_energy_drawn_under_load():
    rng = random.Random(7)
    requests = [(start, start + rng.uniform(0.05, 8.0)) for start in (rng.uniform(5.0, 40.0) for _ in range(40))]
    curve = piecewise_linear([(float(t), rng.uniform(80.0, 700.0)) for t in range(0, 51, 5)])
    attribution, clock, proxy = build(requests)
    feed(attribution, clock, curve, seconds(0, 50, 0.5))

    charged = sum(attribution.usage(*request)[1] for request in requests)  # type: ignore[index]
    loaded = [t for t in seconds(0, 49.5, 0.5) if proxy_load(proxy, t, t + 0.5) > 0]
    assert charged == pytest.approx(sum(integral(curve, t, t + 0.5) for t in loaded), rel=1e-9)


def proxy_load(proxy: ScriptedProxy, a: float, b: float) -> float:
    return sum(max(0.0, min(end, b) - max(start, a)) for start, end in proxy.requests)


def test_a_request_alone_gets_the_whole_energy_delta():
    attribution, clock, _ = build([(10.0, 17.0)])
    feed(attribution, clock, RAMP, seconds(0, 30))

    gpu_seconds, energy = attribution.usage(10.0, 17.0)  # type: ignore[misc]
    assert energy == pytest.approx(integral(RAMP, 10.0, 17.0), rel=1e-6)
    assert gpu_seconds == pytest.approx(7.0)


def test_intervals_a_request_only_partly_spans_are_charged_whole_when_nothing_else_ran():
    # Energy drawn while at least one request is in flight is all charged: the
    # edge intervals carry their idle part too (idle subtraction removes it).
    attribution, clock, _ = build([(10.4, 16.5)])
    feed(attribution, clock, RAMP, seconds(0, 30))

    _, energy = attribution.usage(10.4, 16.5)  # type: ignore[misc]
    assert energy == pytest.approx(integral(RAMP, 10.0, 17.0), rel=1e-6)


def test_busy_time_follows_utilisation():
    attribution, clock, _ = build([(10.0, 15.0)])
    feed(attribution, clock, RAMP, seconds(0, 20), util=50.0)

    gpu_seconds, _ = attribution.usage(10.0, 15.0)  # type: ignore[misc]
    assert gpu_seconds == pytest.approx(2.5)


def test_a_request_ending_between_samples_is_extrapolated_from_the_newest_reading():
    start, end = 3.2, 5.6
    attribution, clock, _ = build([(start, end)])
    feed(attribution, clock, RAMP, seconds(0, 5))
    clock.now = end  # the request ends before the next sample

    gpu_seconds, energy = attribution.usage(start, end)  # type: ignore[misc]
    # [3, 5] is measured (whole intervals, nothing else in flight); [5, 5.6] is 300 W x 0.6 s.
    assert energy == pytest.approx(integral(RAMP, 3.0, 5.0) + 300.0 * 0.6, rel=1e-6)
    assert gpu_seconds == pytest.approx(2.6)


def test_the_extrapolated_tail_is_shared_with_requests_still_in_flight():
    # B started after the newest sample and is still running when A ends.
    a, b = (3.0, 5.5), (5.1, 9.0)
    attribution, clock, _ = build([a, b])
    feed(attribution, clock, RAMP, seconds(0, 5))
    clock.now = 5.5

    _, energy = attribution.usage(*a)  # type: ignore[misc]
    # Tail [5, 5.5]: A in flight 0.5 s, B 0.4 s, 300 W x 0.5 s drawn.
    assert energy == pytest.approx(600.0 + 150.0 * 0.5 / 0.9, rel=1e-6)


def test_a_gpu_silent_for_several_intervals_covers_nothing_past_its_last_sample():
    attribution, clock, _ = build([(9.0, 10.0)])
    feed(attribution, clock, RAMP, seconds(0, 5))
    clock.now = 10.0

    assert attribution.usage(9.0, 10.0) is None


def test_idle_power_is_learned_from_intervals_without_requests_and_subtracted():
    requests = [(10.0, 15.0)]
    clock = Clock(0.0)
    proxy = ScriptedProxy(clock, requests)

    def power(t: float) -> float:
        return 300.0 if proxy.in_flight(t) else 60.0

    charged = Attribution(request_seconds=proxy.request_seconds, clock=clock, subtract_idle_power=True)
    whole = Attribution(request_seconds=proxy.request_seconds, clock=clock)
    for t in seconds(0, 20):
        clock.now = t
        fields = {ENERGY_FIELD: integral(power, 0, t) * 1000, POWER_FIELD: power(t), UTIL_FIELD: 100.0}
        charged.observe(sample(t, fields))
        whole.observe(sample(t, fields))

    assert charged.idle_power_watts("GPU-x") == pytest.approx(60.0)
    assert charged.idle_power_watts("GPU-unknown") is None
    assert charged.usage(10.0, 15.0)[1] == pytest.approx(240.0 * 5, rel=1e-3)  # type: ignore[index]
    assert whole.usage(10.0, 15.0)[1] == pytest.approx(300.0 * 5, rel=1e-3)  # type: ignore[index]


def test_no_idle_power_is_known_before_an_idle_interval():
    attribution, clock, _ = build([(0.0, 100.0)], subtract_idle_power=True)
    feed(attribution, clock, RAMP, seconds(0, 10))

    assert attribution.idle_power_watts("GPU-x") is None
    assert attribution.usage(0.0, 10.0)[1] == pytest.approx(3000.0, rel=1e-6)  # type: ignore[index]


def test_a_counter_reset_starts_a_new_series_and_the_interval_across_it_uses_power():
    attribution, clock, _ = build([(4.0, 8.0)])
    flat = piecewise_linear([(0.0, 300.0)])
    feed(attribution, clock, flat, seconds(0, 5), counter_offset=5e9)
    # The driver reloads at 5.5 s: the counter starts again from zero.
    feed(attribution, clock, flat, seconds(6, 10), counter_from=5.5)

    _, energy = attribution.usage(4.0, 8.0)  # type: ignore[misc]
    assert energy == pytest.approx(1200.0, rel=1e-6)


def test_without_an_energy_counter_power_readings_are_integrated():
    attribution, clock, _ = build([(10.0, 17.0)])
    feed(attribution, clock, RAMP, seconds(0, 30), energy=False)

    _, energy = attribution.usage(10.0, 17.0)  # type: ignore[misc]
    assert energy == pytest.approx(integral(RAMP, 10.0, 17.0), rel=1e-6)


def test_a_counter_slower_than_the_samples_is_bridged_by_power_without_counting_twice():
    # The counter moves every 2 s, the samples come every second, the GPU draws 200 W.
    attribution, clock, _ = build([(0.0, 4.0)])
    for t in seconds(0, 4):
        clock.now = t
        attribution.observe(sample(t, {ENERGY_FIELD: 400_000.0 * (t // 2), POWER_FIELD: 200.0}))

    _, energy = attribution.usage(0.0, 4.0)  # type: ignore[misc]
    assert energy == pytest.approx(800.0)
    _, first_second = attribution.usage(0.0, 1.0)  # type: ignore[misc]
    assert first_second == pytest.approx(200.0)


def test_without_power_the_tail_is_extrapolated_from_the_counter():
    attribution, clock, _ = build([(3.0, 5.5)])
    feed(attribution, clock, RAMP, seconds(0, 5), watts=False)
    clock.now = 5.5

    _, energy = attribution.usage(3.0, 5.5)  # type: ignore[misc]
    assert energy == pytest.approx(750.0, rel=1e-6)


def test_energy_and_busy_time_are_summed_over_gpus():
    attribution, clock, _ = build([(10.0, 15.0)])
    feed(attribution, clock, piecewise_linear([(0.0, 300.0)]), seconds(0, 20), uuid="GPU-a", util=50.0)
    feed(attribution, clock, piecewise_linear([(0.0, 200.0)]), seconds(0.5, 20.5), uuid="GPU-b", util=100.0)

    gpu_seconds, energy = attribution.usage(10.0, 15.0)  # type: ignore[misc]
    # GPU-b's samples straddle the request: its edge intervals [9.5, 10.5] and [14.5, 15.5]
    # are partly idle and charged whole, as nothing else was in flight.
    assert energy == pytest.approx(300.0 * 5 + 200.0 * 6, rel=1e-6)
    assert gpu_seconds == pytest.approx(2.5 + 6.0, rel=1e-6)


def test_a_gpu_read_per_mig_instance_counts_its_energy_once_and_busy_time_per_instance():
    attribution, clock, _ = build([(0.0, 10.0)])
    for t in seconds(0, 10):
        clock.now = t
        for instance, active in (("1", 0.5), ("2", 0.25)):
            fields = {ENERGY_FIELD: 250_000.0 * t, POWER_FIELD: 250.0, ENGINE_ACTIVE_FIELD: active}
            attribution.observe(sample(t, fields, instance=instance))

    gpu_seconds, energy = attribution.usage(0.0, 10.0)  # type: ignore[misc]
    assert energy == pytest.approx(2500.0)
    assert gpu_seconds == pytest.approx(7.5)


def test_samples_that_are_not_ok_are_skipped():
    attribution, clock, _ = build([(0.0, 1.0)])
    attribution.observe(sample(0.0, {POWER_FIELD: 100.0}, state=GpuState.STALE))
    attribution.observe(sample(1.0, {POWER_FIELD: 100.0}, state=GpuState.LOST))

    assert attribution.usage(0.0, 1.0) is None


def test_a_second_source_for_the_same_gpu_is_ignored_while_the_first_is_live():
    attribution, clock, _ = build([(0.0, 10.0)])
    for t in seconds(0, 10):
        clock.now = t
        attribution.observe(sample(t, {POWER_FIELD: 100.0}))
        attribution.observe(sample(t + 0.5, {POWER_FIELD: 700.0}, source="dcgm-exporter"))

    assert attribution.usage(0.0, 10.0)[1] == pytest.approx(1000.0)  # type: ignore[index]


def test_no_samples_means_no_usage():
    attribution, clock, _ = build([(0.0, 1.0)])
    assert attribution.usage(0.0, 1.0) is None
    feed(attribution, clock, RAMP, seconds(100, 110))
    assert attribution.usage(0.0, 1.0) is None


def test_readings_older_than_the_horizon_are_dropped():
    attribution, clock, _ = build([(0.0, 2000.0)], horizon=60.0)
    feed(attribution, clock, piecewise_linear([(0.0, 100.0)]), seconds(0, 2000))

    assert attribution.usage(0.0, 2000.0)[1] == pytest.approx(100.0 * 60, rel=0.02)  # type: ignore[index]


SEED_PRICES = CostConfig(
    electricity_per_kwh=0.15,
    cloud_prices={"default": ModelPrice(input_per_1k=0.015, output_per_1k=0.025, per_request=0.001)},
)


def test_enrich_sets_gpu_usage_and_cost_on_the_exchange():
    started = 1_763_900_000.0
    attribution, clock, _ = build([(started, started + 2.0)])
    feed(attribution, clock, piecewise_linear([(0.0, 300.0)]), seconds(started - 5, started + 5))
    exchange = make_exchange(started_at=started, duration_s=2.0)

    enriched = attribution.enrich(exchange, CostModel(SEED_PRICES))

    usage = enriched.usage
    assert usage is not None
    assert usage.energy_joules == pytest.approx(600.0, rel=1e-6)
    assert usage.gpu_seconds == pytest.approx(2.0)
    assert usage.cost_local == pytest.approx(600.0 / 3.6e6 * 0.15)
    # make_exchange's call: 30 input and 50 output tokens.
    assert usage.cost_cloud_equivalent == pytest.approx(0.030 * 0.015 + 0.050 * 0.025 + 0.001)
    assert enriched.request_id == exchange.request_id


def test_enrich_without_a_cost_model_or_tokens_leaves_costs_unset():
    started = 1_763_900_000.0
    attribution, clock, _ = build([(started, started + 2.0)])
    feed(attribution, clock, piecewise_linear([(0.0, 300.0)]), seconds(started - 5, started + 5))

    plain = attribution.enrich(make_exchange(started_at=started, duration_s=2.0), None)
    assert plain.usage == GpuUsage(pytest.approx(2.0), pytest.approx(600.0, rel=1e-6))  # type: ignore[arg-type]
    no_call = attribution.enrich(make_exchange(started_at=started, duration_s=2.0, gen_ai=None), CostModel(SEED_PRICES))
    assert no_call.usage is not None and no_call.usage.cost_cloud_equivalent is None
    assert no_call.usage.cost_local is not None


def test_enrich_leaves_the_exchange_alone_when_no_gpu_covers_it():
    attribution, _, _ = build()
    exchange = make_exchange()
    assert attribution.enrich(exchange, CostModel(SEED_PRICES)) is exchange


def test_usage_cost_micro_benchmark():
    """Prints what `usage()` costs on the event loop: a 2 s request, 1 s samples, 2 GPUs, full rings."""
    clock = Clock(0.0)
    # Four requests in flight at all times; an O(1) integral, as the proxy keeps it.
    attribution = Attribution(request_seconds=lambda: 4 * clock.now, clock=clock)
    for t in seconds(0, 900):
        clock.now = t
        for uuid in ("GPU-a", "GPU-b"):
            fields = {ENERGY_FIELD: 300_000.0 * t, POWER_FIELD: 300.0, UTIL_FIELD: 80.0}
            attribution.observe(sample(t, fields, uuid=uuid))
    clock.now = 900.4
    start, end = 898.4, 900.4  # two measured intervals and an extrapolated tail per GPU
    assert attribution.usage(start, end) is not None
    rounds = 20_000
    began = time.perf_counter()
    for _ in range(rounds):
        attribution.usage(start, end)
    elapsed = time.perf_counter() - began
    print(f"\nusage(): {elapsed / rounds * 1e6:.2f} µs per call (2 s request, 1 s samples, 2 GPUs)")
