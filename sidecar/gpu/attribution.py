"""Each request's share of GPU busy time and energy, from GPU samples and the proxy's load.

What is measured. Every GPU sample (NVML or dcgm-exporter) gives, per GPU or
MIG instance, the total-energy counter (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`,
mJ), the power draw (`DCGM_FI_DEV_POWER_USAGE`, W) and the utilisation
(`DCGM_FI_DEV_GPU_UTIL`, %, or `DCGM_FI_PROF_GR_ENGINE_ACTIVE` where only that
is given, as on MIG instances). Beside each sample the proxy's running
integral of requests in flight, R(t) (request-seconds since start), is noted.

How it is shared. Consecutive samples t_{k-1} < t_k bound an interval k with

- energy E_k: the counter's delta; where the counter is absent, did not move,
  or went backwards (a driver reload resets it), the mean of the two power
  readings times the interval (a stalled counter's next step is reduced by
  what was estimated meanwhile, so nothing is counted twice); less idle power
  x interval when `subtract_idle_power` is on (never below 0);
- busy time B_k: the interval times the utilisation read at its end (the
  driver reports utilisation over the period just past);
- load W_k = R(t_k) - R(t_{k-1}): the request-seconds spent in flight in it.

A request in flight over [s, e] overlapping interval k by o_k gets
E_k x o_k / W_k and B_k x o_k / W_k. The overlaps of all requests in an
interval add up to W_k, so the shares of an interval add up to E_k: all
energy drawn while at least one request was in flight is charged, split in
proportion to time in flight (a request alone gets all of it; two concurrent
ones half each). Where the load says nothing was in flight but the request
claims to have been (two clocks disagreeing), o_k / (t_k - t_{k-1}) is used.
Requests end between samples: the part after the newest sample t_L is
extrapolated with the newest power and utilisation over [t_L, now], divided
by R(now) - R(t_L) (at least the request's own part), as long as the newest
sample is at most three sample intervals old; a GPU silent for longer (lost,
collector stopped) covers nothing past its last sample.

Error bounds (docs/gpu-attribution.md says the same for operators):

- Sampling interval vs request length. Within an interval energy is split by
  time in flight, not by what each request actually made the GPU do: a
  request sharing an interval with a heavier one is over-charged and the
  heavy one under-charged, by at most the interval's energy each. The
  interval at each end of a request also carries energy drawn while nothing
  was in flight (up to one interval of idle power; idle subtraction removes
  it). Requests lasting many intervals are accurate to a few percent; one
  shorter than an interval carries an error of the order of the interval's
  energy, and its tail is an extrapolation.
- Counter resolution. The energy counter counts millijoules (negligible
  against hundreds of joules a second) but the driver refreshes it on its own
  period, so each interval's edges are blurred by up to that period; an
  interval in which it did not move falls back to power x time. Power readings
  are averages over the last second on Ampere (except GA100) and newer GPUs
  and instantaneous before, and utilisation covers a driver period between
  1/6 s and 1 s: the fallbacks are as good as those readings.
- Timing. R is read when a sample reaches the event loop, not when the GPU
  was read (microseconds for NVML; up to the exporter's own collection period
  for dcgm-exporter), which shifts the load against the energy by that much.
- Other work on the GPU (processes not behind this proxy, other MIG instances
  on a GPU whose power is metered whole) is charged to whatever requests are
  in flight while it runs. Energy drawn while no request is in flight is
  charged to nobody.
- Idle power is an exponentially weighted average of intervals with no request
  in flight; until one has been seen nothing is subtracted.
- Several GPUs: shares are summed over every GPU sampled, so sample only the
  GPUs the model server uses. A physical GPU's energy is counted once even when
  it is sampled per MIG instance (the driver meters power per GPU, not per
  instance); busy time is summed over instances.
"""

from __future__ import annotations

import dataclasses
import math
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping

from sidecar.exchange import Exchange, GenAiCall, GpuSample, GpuState, GpuUsage
from sidecar.gpu.cost import CostModel

ENERGY_FIELD = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
"""Millijoules since the driver loaded."""
POWER_FIELD = "DCGM_FI_DEV_POWER_USAGE"
"""Watts."""
UTIL_FIELD = "DCGM_FI_DEV_GPU_UTIL"
"""Percent of the last sample period with a kernel running."""
ENGINE_ACTIVE_FIELD = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
"""Ratio (0-1) of time the graphics engine was active; dcgm-exporter gives it per MIG instance."""

_MILLIJOULES = 1e-3
# Extrapolating the newest reading is sound for a sample period or so; beyond a
# few the GPU is lost or its collector stalled, and a guess would be fiction.
_EXTRAPOLATE_INTERVALS = 3.0
_EXTRAPOLATE_MIN_S = 2.0
# Idle power drifts with temperature over minutes; a shorter memory would
# chase the clock ramp-down after each burst of requests.
_IDLE_TIME_CONSTANT_S = 300.0
_MAX_SAMPLES = 16384
# Both collectors may read the same GPU; mixing their samples would pair
# readings taken at different moments, so one source feeds a series until it
# has been silent this long.
_SOURCE_SWITCH_AFTER_S = 30.0

GpuKey = tuple[str, str | None]
"""(GPU uuid, MIG GPU instance id or None)."""


class _Series:
    """One GPU's (or MIG instance's) readings over the horizon, oldest first, in parallel lists.

    Index i holds the sample at `times[i]` and the interval that ends there
    (from `times[i - 1]`); intervals exist for head < i < len. Old entries are
    skipped by `head` and deleted in bulk, so trimming is amortised O(1).
    """

    __slots__ = ("source", "head", "times", "loads", "energy", "busy", "watts", "util",
                 "counter", "estimated", "idle_watts", "counts_energy", "counts_busy")  # fmt: skip

    def __init__(self, source: str) -> None:
        self.source = source
        self.head = 0
        self.times: list[float] = []
        self.loads: list[float] = []
        """request_seconds() when the sample was observed."""
        self.energy: list[float] = []
        """Joules in the interval ending here (before idle subtraction)."""
        self.busy: list[float] = []
        """Busy seconds in the interval ending here."""
        self.watts: float | None = None
        """Newest power, for extrapolating past the newest sample."""
        self.util: float | None = None
        """Newest utilisation as a fraction."""
        self.counter: float | None = None
        """Newest energy counter reading (mJ)."""
        self.estimated = 0.0
        """Joules charged from power while the counter stood still, owed back when it moves."""
        self.idle_watts: float | None = None
        self.counts_energy = True
        self.counts_busy = True

    def add(self, at: float, load: float, counter: float | None, watts: float | None, util: float | None,
            horizon: float) -> None:  # fmt: skip
        energy = busy = 0.0
        if self.times:
            dt = at - self.times[-1]
            delta = None if counter is None or self.counter is None else counter - self.counter
            measured = True
            if delta is not None and delta > 0:
                # A counter that lagged catches up in one step: what the power
                # estimates already charged for the lag is taken off, so the
                # interval pair adds up to the counter's delta.
                counted = delta * _MILLIJOULES
                energy = max(counted - self.estimated, 0.0)
                self.estimated = max(self.estimated - counted, 0.0)
                if watts is None:
                    watts = counted / dt
            else:
                # No counter, a counter that has not ticked yet, or one reset by a
                # driver reload: the interval is estimated from power instead.
                mean = _mean(self.watts, watts)
                measured = mean is not None
                energy = 0.0 if mean is None else mean * dt
                stalled = delta is not None and delta == 0
                self.estimated = self.estimated + energy if stalled else 0.0
            fraction = util if util is not None else self.util
            busy = 0.0 if fraction is None else fraction * dt
            if measured and load - self.loads[-1] <= 0:
                self._learn_idle(energy / dt, dt)
        self.times.append(at)
        self.loads.append(load)
        self.energy.append(energy)
        self.busy.append(busy)
        if watts is not None:
            self.watts = watts
        if util is not None:
            self.util = util
        self.counter = counter
        self._trim(at - horizon)

    def _learn_idle(self, watts: float, dt: float) -> None:
        if self.idle_watts is None:
            self.idle_watts = watts
            return
        weight = 1.0 - math.exp(-dt / _IDLE_TIME_CONSTANT_S)
        self.idle_watts += weight * (watts - self.idle_watts)

    def _trim(self, cutoff: float) -> None:
        times, head = self.times, self.head
        last = len(times) - 1
        # Keep interval head+1 while it ends after the cutoff.
        while head < last - 1 and (times[head + 1] <= cutoff or last - head >= _MAX_SAMPLES):
            head += 1
        if head > 1024 and head * 2 > len(times):
            for column in (self.times, self.loads, self.energy, self.busy):
                del column[:head]
            head = 0
        self.head = head

    def last_interval(self) -> float:
        n = len(self.times)
        return self.times[-1] - self.times[-2] if n - self.head >= 2 else 0.0


def _mean(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return (a + b) / 2


def _util_fraction(fields: Mapping[str, float]) -> float | None:
    util = fields.get(UTIL_FIELD)
    if util is not None:
        return min(max(util / 100.0, 0.0), 1.0)
    active = fields.get(ENGINE_ACTIVE_FIELD)
    return None if active is None else min(max(active, 0.0), 1.0)


class Attribution:
    """Attributes GPU busy time and energy to requests; `observe` GPU samples, `enrich` Exchanges.

    Runs on the event loop: `observe` once per sample per GPU, `usage` once per
    request, each O(samples inside the request) after a bisection.
    """

    def __init__(
        self,
        *,
        request_seconds: Callable[[], float],
        subtract_idle_power: bool = False,
        clock: Callable[[], float] = time.time,
        horizon: float = 900.0,
    ) -> None:
        """`request_seconds` is the proxy's integral of requests in flight over wall time (seconds,
        non-decreasing); `clock` the wall clock the samples and Exchanges use; `horizon` how far
        back readings are kept (longer requests are charged only for their last `horizon`)."""
        self._request_seconds = request_seconds
        self._subtract_idle = subtract_idle_power
        self._clock = clock
        self._horizon = horizon
        self._series: dict[GpuKey, _Series] = {}

    def observe(self, sample: GpuSample) -> None:
        if sample.state is not GpuState.OK:
            return
        fields = sample.fields
        counter = fields.get(ENERGY_FIELD)
        watts = fields.get(POWER_FIELD)
        if watts is not None and watts < 0:
            watts = None  # a driver glitch; it would make energy, and the counters fed by it, go negative
        util = _util_fraction(fields)
        if counter is None and watts is None and util is None:
            return
        key = (sample.uuid, sample.gpu_instance_id)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(sample.source)
            self._assign_roles(sample.uuid)
        elif series.times and sample.at <= series.times[-1]:
            return  # a repeat or out of order: the interval would be empty or negative
        elif sample.source != series.source:
            if not series.times or sample.at - series.times[-1] < _SOURCE_SWITCH_AFTER_S:
                return
            series = self._series[key] = _Series(sample.source)
            self._assign_roles(sample.uuid)
        series.add(sample.at, self._request_seconds(), counter, watts, util, self._horizon)

    def _assign_roles(self, uuid: str) -> None:
        # The driver meters power per physical GPU, so a GPU read per MIG instance
        # would repeat the same energy once per instance: count it once, from the
        # whole-GPU series where there is one. Busy time is per instance.
        keys = sorted((key for key in self._series if key[0] == uuid), key=lambda k: (k[1] is not None, k[1] or ""))
        has_instances = any(instance is not None for _, instance in keys)
        for index, key in enumerate(keys):
            series = self._series[key]
            series.counts_energy = index == 0
            series.counts_busy = key[1] is not None or not has_instances

    def idle_power_watts(self, uuid: str) -> float | None:
        """The GPU's estimated idle power; None until an interval without requests was seen."""
        for (key_uuid, _), series in self._series.items():
            if key_uuid == uuid and series.counts_energy:
                return series.idle_watts
        return None

    def usage(self, start: float, end: float) -> tuple[float, float] | None:
        """(gpu_seconds, energy_joules) for a request in flight over [start, end] (wall clock),
        summed over GPUs; None when no GPU readings cover any of it."""
        if end < start:
            start, end = end, start
        gpu_seconds = energy = 0.0
        covered = False
        load_now: float | None = None
        now = 0.0
        subtract = self._subtract_idle
        for series in self._series.values():
            times = series.times
            n = len(times)
            idle = (series.idle_watts or 0.0) if subtract else 0.0
            counts_energy, counts_busy = series.counts_energy, series.counts_busy
            loads, energies, busies = series.loads, series.energy, series.busy
            k = bisect_right(times, start, series.head + 1, n)
            while k < n and times[k - 1] < end:
                before, after = times[k - 1], times[k]
                overlap = (end if end < after else after) - (start if start > before else before)
                load = loads[k] - loads[k - 1]
                if load <= 0:
                    share = overlap / (after - before)
                else:
                    share = overlap / (load if load > overlap else overlap)
                if counts_energy:
                    joules = energies[k]
                    if idle:
                        joules = max(joules - idle * (after - before), 0.0)
                    energy += joules * share
                if counts_busy:
                    gpu_seconds += busies[k] * share
                covered = True
                k += 1
            last = times[-1]
            if end <= last or end - last > max(_EXTRAPOLATE_INTERVALS * series.last_interval(), _EXTRAPOLATE_MIN_S):
                continue
            if load_now is None:
                load_now, now = self._request_seconds(), self._clock()
            overlap = end - (start if start > last else last)
            span = (now if now > end else end) - last
            load = load_now - loads[-1]
            share = overlap / (load if load > overlap else overlap) if overlap > 0 else 0.0
            watts = series.watts
            if watts is not None and counts_energy:
                energy += max(watts - idle, 0.0) * span * share
            if series.util is not None and counts_busy:
                gpu_seconds += series.util * span * share
            covered = True
        return (gpu_seconds, energy) if covered else None

    def enrich(self, exchange: Exchange, cost: CostModel | None) -> Exchange:
        """The exchange with its GPU usage (and cost, given a cost model) set, when known."""
        usage = self.usage_of(exchange.started_at, exchange.duration_s, exchange.gen_ai, cost)
        return exchange if usage is None else dataclasses.replace(exchange, usage=usage)

    def usage_of(
        self, started_at: float, duration_s: float, call: GenAiCall | None, cost: CostModel | None
    ) -> GpuUsage | None:
        """A request's GPU usage (and cost, given a cost model), or None when unknown. The proxy
        calls this while it builds the Exchange, so the record is made once, usage included."""
        measured = self.usage(started_at, started_at + duration_s)
        if measured is None:
            return None
        gpu_seconds, energy = measured
        cost_local = cost_cloud = None
        if cost is not None:
            cost_local = cost.local(energy, gpu_seconds)
            if call is not None and (call.input_tokens is not None or call.output_tokens is not None):
                cost_cloud = cost.cloud_equivalent(
                    call.request_model or call.response_model, call.input_tokens or 0, call.output_tokens or 0
                )
        return GpuUsage(gpu_seconds, energy, cost_local, cost_cloud)
