"""Attribution on synthetic timelines: a known power curve, its exact energy integral, scripted requests."""

from __future__ import annotations

import math
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
    """The proxy's integrals of requests at the model server, for a fixed set of request intervals."""

    def __init__(self, clock: Clock, requests: Iterable[tuple[float, float]] = ()) -> None:
        self.clock = clock
        self.requests = list(requests)

    def request_seconds(self) -> float:
        now = self.clock.now
        return sum(max(0.0, min(end, now) - start) for start, end in self.requests if start < now)

    def occupied_seconds(self) -> float:
        """The measure of the union of the requests' intervals up to now."""
        now, total, reach = self.clock.now, 0.0, -math.inf
        for start, end in sorted(self.requests):
            start, end = max(start, reach), min(end, now)
            if end > start:
                total += end - start
                reach = end
        return total

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
    attribution = Attribution(request_seconds=proxy.request_seconds, occupied_seconds=proxy.occupied_seconds,
                              clock=clock, **options)  # type: ignore[arg-type]  # fmt: skip
    return attribution, clock, proxy


def seconds(start: float, stop: float, step: float = 1.0) -> list[float]:
    return [start + i * step for i in range(round((stop - start) / step) + 1)]


# In these, only the sharing between requests is under test: idle power is charged to them
# (gpu.idle_power: in_flight), so a request alone is charged all the GPU drew while it was there.
SHARED = {"idle_power": "in_flight"}


def test_two_overlapping_requests_share_the_energy_of_their_union():
    a, b = (10.0, 14.5), (12.3, 17.0)
    attribution, clock, _ = build([a, b], **SHARED)
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


def busy_gpu(proxy: ScriptedProxy) -> PowerCurve:
    """60 W idle, 300 W while at least one request is at the model server."""
    return lambda t: 300.0 if proxy.in_flight(t) else 60.0


def feed_busy_gpu(attribution: Attribution, clock: Clock, proxy: ScriptedProxy, times: list[float]) -> None:
    """Samples of `busy_gpu`, its utilisation the share of each interval with a request there."""
    power = busy_gpu(proxy)
    counter, previous = 0.0, None
    for t in times:
        clock.now = t
        util = 0.0
        if previous is not None:
            counter += integral(power, previous, t, step=0.005) * 1000
            util = sum(1 for i in range(100) if proxy.in_flight(previous + (i + 0.5) * (t - previous) / 100))
        previous = t
        attribution.observe(sample(t, {ENERGY_FIELD: counter, POWER_FIELD: power(t), UTIL_FIELD: util}))


@pytest.mark.parametrize(("idle_power", "charged_watts"), [("unattributed", 240.0), ("in_flight", 300.0)])
def test_shares_of_random_concurrent_requests_add_up_to_what_the_rule_charges_and_the_rest_is_unattributed(
    idle_power: str, charged_watts: float
):
    rng = random.Random(7)
    # Request edges on a 0.01 s grid, so that the power curve's integral is exact at the sampled points.
    requests = [(round(start, 2), round(start + rng.uniform(0.05, 8.0), 2))
                for start in (rng.uniform(5.0, 40.0) for _ in range(40))]  # fmt: skip
    attribution, clock, proxy = build(requests, idle_power=idle_power)
    feed_busy_gpu(attribution, clock, proxy, seconds(0, 50, 0.5))

    charged = sum(attribution.usage(*request)[1] for request in requests)  # type: ignore[index]
    occupied = proxy.occupied_seconds()
    drawn = integral(busy_gpu(proxy), 0.0, 50.0, step=0.005)
    # Idle power is learned as 60 W; the rule charges the surplus (and, in_flight, the idle power too)
    # for the time requests were at the model server, and nothing else.
    assert charged == pytest.approx(charged_watts * occupied, rel=1e-3)
    assert attribution.unattributed().energy_joules == pytest.approx(drawn - charged, rel=1e-3)
    gpu_seconds = sum(attribution.usage(*request)[0] for request in requests)  # type: ignore[index]
    assert gpu_seconds == pytest.approx(occupied, rel=1e-3)
    assert attribution.unattributed().gpu_seconds == pytest.approx(50.0 - occupied, rel=1e-3)


def test_a_request_alone_gets_the_whole_energy_delta():
    attribution, clock, _ = build([(10.0, 17.0)], **SHARED)
    feed(attribution, clock, RAMP, seconds(0, 30))

    gpu_seconds, energy = attribution.usage(10.0, 17.0)  # type: ignore[misc]
    assert energy == pytest.approx(integral(RAMP, 10.0, 17.0), rel=1e-6)
    assert gpu_seconds == pytest.approx(7.0)


def test_intervals_a_request_only_partly_spans_are_charged_for_its_part_of_them():
    # A flat 300 W, all of it idle power (learned before the request): in_flight charges the
    # request 300 W for its 6.1 s, not for the 7 whole intervals it touches; unattributed nothing.
    flat = piecewise_linear([(0.0, 300.0)])
    shared, clock, _ = build([(10.4, 16.5)], **SHARED)
    feed(shared, clock, flat, seconds(0, 30))
    alone, clock, _ = build([(10.4, 16.5)])
    feed(alone, clock, flat, seconds(0, 30))

    assert shared.usage(10.4, 16.5)[1] == pytest.approx(300.0 * 6.1, rel=1e-6)  # type: ignore[index]
    assert alone.usage(10.4, 16.5)[1] == pytest.approx(0.0, abs=1e-6)  # type: ignore[index]
    assert alone.unattributed().energy_joules == pytest.approx(300.0 * 30, rel=1e-6)


def test_busy_time_follows_utilisation():
    attribution, clock, _ = build([(10.0, 15.0)])
    feed(attribution, clock, RAMP, seconds(0, 20), util=50.0)

    gpu_seconds, _ = attribution.usage(10.0, 15.0)  # type: ignore[misc]
    assert gpu_seconds == pytest.approx(2.5)


def test_a_request_ending_between_samples_is_extrapolated_from_the_newest_reading():
    start, end = 3.2, 5.6
    attribution, clock, _ = build([(start, end)], **SHARED)
    feed(attribution, clock, RAMP, seconds(0, 5))
    clock.now = end  # the request ends before the next sample

    gpu_seconds, energy = attribution.usage(start, end)  # type: ignore[misc]
    # 300 W throughout, all idle: 0.8 s of [3, 4], all of [4, 5], then [5, 5.6] from the newest reading.
    assert energy == pytest.approx(300.0 * (0.8 + 1.0 + 0.6), rel=1e-6)
    assert gpu_seconds == pytest.approx(2.4)


def test_the_extrapolated_tail_is_shared_with_requests_still_in_flight():
    # B started after the newest sample and is still running when A ends.
    a, b = (3.0, 5.5), (5.1, 9.0)
    attribution, clock, _ = build([a, b], **SHARED)
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


def test_idle_power_is_learned_from_intervals_without_requests_and_charged_by_the_rule():
    requests = [(10.0, 15.0)]
    clock = Clock(0.0)
    proxy = ScriptedProxy(clock, requests)
    power = busy_gpu(proxy)

    def attribution(idle_power: str) -> Attribution:
        return Attribution(request_seconds=proxy.request_seconds, occupied_seconds=proxy.occupied_seconds,
                           clock=clock, idle_power=idle_power)  # type: ignore[arg-type]  # fmt: skip

    default = Attribution(request_seconds=proxy.request_seconds, occupied_seconds=proxy.occupied_seconds,
                          clock=clock)  # fmt: skip
    unattributed, in_flight = attribution("unattributed"), attribution("in_flight")
    for t in seconds(0, 20):
        clock.now = t
        fields = {ENERGY_FIELD: integral(power, 0, t) * 1000, POWER_FIELD: power(t), UTIL_FIELD: 100.0}
        for each in (default, unattributed, in_flight):
            each.observe(sample(t, fields))

    assert unattributed.idle_power_watts("GPU-x") == pytest.approx(60.0)
    assert unattributed.idle_power_watts("GPU-unknown") is None
    assert unattributed.usage(10.0, 15.0)[1] == pytest.approx(240.0 * 5, rel=1e-3)  # type: ignore[index]
    assert unattributed.unattributed().energy_joules == pytest.approx(60.0 * 20, rel=1e-3)
    assert default.usage(10.0, 15.0) == unattributed.usage(10.0, 15.0)  # unattributed is the default
    assert in_flight.usage(10.0, 15.0)[1] == pytest.approx(300.0 * 5, rel=1e-3)  # type: ignore[index]
    assert in_flight.unattributed().energy_joules == pytest.approx(60.0 * 15, rel=1e-3)


def test_no_idle_power_is_known_before_an_idle_interval():
    attribution, clock, _ = build([(0.0, 100.0)])
    feed(attribution, clock, RAMP, seconds(0, 10))

    assert attribution.idle_power_watts("GPU-x") is None
    assert attribution.usage(0.0, 10.0)[1] == pytest.approx(3000.0, rel=1e-6)  # type: ignore[index]


def test_an_idle_rule_other_than_unattributed_or_in_flight_is_refused():
    with pytest.raises(ValueError, match="idle_power: expected unattributed or in_flight, got 'requests'"):
        build(idle_power="requests")


# The worked example in docs/gpu-attribution.md: an H100 idling at 70 W, read every second.
def worked_example(idle_power: str) -> tuple[Attribution, Clock]:
    a, b1, b2, refused = (10.0, 10.4), (20.0, 21.0), (20.0, 21.0), (30.5, 30.501)
    attribution, clock, proxy = build([a, b1, b2, refused], idle_power=idle_power)
    counter = 0.0
    for t in seconds(0, 40):
        clock.now = t
        util, joules = 0.0, 70.0
        if t == 11.0:  # [10, 11]: A kept the GPU busy 0.4 s at 410 W
            util, joules = 40.0, 70.0 * 0.6 + 410.0 * 0.4
        elif t == 21.0:  # [20, 21]: B1 and B2 together kept it busy all second at 410 W
            util, joules = 100.0, 410.0
        counter += joules * 1000 if t > 0 else 0.0
        attribution.observe(sample(t, {ENERGY_FIELD: counter, POWER_FIELD: joules, UTIL_FIELD: util}))
    return attribution, clock


@pytest.mark.parametrize(("idle_power", "a_joules", "b_joules", "loose_joules"),
                         [("unattributed", 136.0, 170.0, 40 * 70.0), ("in_flight", 164.0, 205.0, 40 * 70.0 - 28 - 70)])
def test_the_documented_worked_example(idle_power: str, a_joules: float, b_joules: float, loose_joules: float):
    attribution, _ = worked_example(idle_power)
    cost = CostModel(CostConfig(electricity_per_kwh=0.15, hardware_price=30000))

    a = attribution.usage_of(10.0, 0.4, None, cost)
    b1 = attribution.usage_of(20.0, 1.0, None, cost)
    assert a is not None and b1 is not None
    assert a.energy_joules == pytest.approx(a_joules) and a.gpu_seconds == pytest.approx(0.4)
    assert b1.energy_joules == pytest.approx(b_joules) and b1.gpu_seconds == pytest.approx(0.5)
    if idle_power == "unattributed":
        assert a.cost_local == pytest.approx(0.0001325, rel=1e-3)  # 136 J and 0.4 GPU-seconds
    # The 502 at 30.5 s never reached the model server: nothing, and its sliver of idle power stays unattributed.
    assert attribution.usage_of(30.5, 0.001, None, cost, processed=False) is None
    loose = attribution.unattributed()
    assert loose.energy_joules == pytest.approx(loose_joules, rel=1e-6)
    assert loose.gpu_seconds == pytest.approx(40.0 - 0.4 - 1.0)
    assert loose.energy_joules + a.energy_joules + 2 * b1.energy_joules == pytest.approx(40 * 70.0 + 136 + 340)


def test_a_request_the_model_server_never_processed_is_charged_nothing():
    # During an outage each 502 is a millisecond alone in a one-second interval of an idle GPU
    # (90 W, and 19 % utilisation from other work); it was charged 90 J and 0.19 GPU-seconds.
    refused = (5.2, 5.201)
    for idle_power in ("unattributed", "in_flight"):
        attribution, clock, _ = build([refused], idle_power=idle_power)
        feed(attribution, clock, piecewise_linear([(0.0, 90.0)]), seconds(0, 10), util=19.0)
        before = attribution.unattributed()

        assert attribution.usage_of(refused[0], 0.001, None, None, processed=False) is None
        after = attribution.unattributed()
        assert after.energy_joules >= before.energy_joules and after.gpu_seconds >= before.gpu_seconds
        # Had it been processed, it would have been charged for its own millisecond, not the whole second.
        processed = attribution.usage_of(refused[0], 0.001, None, None)
        assert processed is not None
        assert processed.energy_joules <= 90.0 * 0.001 + 1e-9 and processed.gpu_seconds <= 0.001 + 1e-9
        assert after.energy_joules == pytest.approx(90.0 * 10, rel=1e-6)


def test_a_counter_reset_starts_a_new_series_and_the_interval_across_it_uses_power():
    attribution, clock, _ = build([(4.0, 8.0)], **SHARED)
    flat = piecewise_linear([(0.0, 300.0)])
    feed(attribution, clock, flat, seconds(0, 5), counter_offset=5e9)
    # The driver reloads at 5.5 s: the counter starts again from zero.
    feed(attribution, clock, flat, seconds(6, 10), counter_from=5.5)

    _, energy = attribution.usage(4.0, 8.0)  # type: ignore[misc]
    assert energy == pytest.approx(1200.0, rel=1e-6)


def test_without_an_energy_counter_power_readings_are_integrated():
    attribution, clock, _ = build([(10.0, 17.0)], **SHARED)
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
    attribution, clock, _ = build([(3.0, 5.5)], **SHARED)
    feed(attribution, clock, RAMP, seconds(0, 5), watts=False)
    clock.now = 5.5

    _, energy = attribution.usage(3.0, 5.5)  # type: ignore[misc]
    assert energy == pytest.approx(750.0, rel=1e-6)


def test_energy_and_busy_time_are_summed_over_gpus():
    attribution, clock, _ = build([(10.0, 15.0)], **SHARED)
    feed(attribution, clock, piecewise_linear([(0.0, 300.0)]), seconds(0, 20), uuid="GPU-a", util=50.0)
    feed(attribution, clock, piecewise_linear([(0.0, 200.0)]), seconds(0.5, 20.5), uuid="GPU-b", util=100.0)

    gpu_seconds, energy = attribution.usage(10.0, 15.0)  # type: ignore[misc]
    # GPU-b's samples straddle the request: of its edge intervals [9.5, 10.5] and [14.5, 15.5]
    # the request is charged the half it was there for.
    assert energy == pytest.approx(300.0 * 5 + 200.0 * 5, rel=1e-6)
    assert gpu_seconds == pytest.approx(2.5 + 5.0, rel=1e-6)


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
    attribution, clock, _ = build([(started, started + 2.0)], **SHARED)
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
    attribution, clock, _ = build([(started, started + 2.0)], **SHARED)
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
    attribution = Attribution(request_seconds=lambda: 4 * clock.now, occupied_seconds=lambda: clock.now, clock=clock)
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
