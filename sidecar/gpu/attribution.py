"""Each request's share of GPU busy time and energy, from GPU samples and the proxy's load.

    attribution.observe(sample)                 # every GPU sample
    attribution.usage_of(start, seconds, call, cost)   # each request the model server processed
    attribution.unattributed()                  # what no request was charged, since start

Consecutive samples of a GPU (or MIG instance) bound an interval. For each one
the proxy's integrals give the load W (request-seconds at the model server)
and the occupancy U (seconds with at least one request there). The interval's
energy E (the counter's delta, else mean power x length) splits into idle
(learned idle power x length) and work (the rest). The requests in it are
charged, split in proportion to their time in it:

- the work done while they were there: work x min(1, U / busy time), where busy
  time is utilisation x length (U / length without a utilisation reading);
- busy time min(busy time, U);
- under `idle_power="in_flight"`, also idle power x U.

What is not charged (idle power under "unattributed", and work or idle power
while nothing was at the model server) is added up by `unattributed()`, as is
the share of a request the model server never processed (`processed=False`).
The part of a request after the newest sample is a virtual interval from that
sample to now, with the newest power and utilisation readings, while the
sample is at most three sample intervals old. docs/gpu-attribution.md states
the rule with worked examples and its error bounds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping
from typing import Literal

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

IdlePower = Literal["unattributed", "in_flight"]
"""Who pays for idle power: nobody (it is counted as unattributed), or the requests at the model server."""


@dataclasses.dataclass(frozen=True, slots=True)
class Unattributed:
    """What the sampled GPUs drew or spent that no request was charged, cumulative since start."""

    energy_joules: float
    """Idle power under "unattributed", energy drawn while nothing was at the model server, and the shares of
    requests the model server never processed."""
    gpu_seconds: float
    """GPU time not charged as a request's busy time: time idle, or busy with nothing at the model server."""


def _charged(energy: float, busy: float | None, length: float, load: float, occupied: float,
             idle_watts: float | None, in_flight: bool) -> tuple[float, float]:  # fmt: skip
    """(joules, busy seconds) of one interval charged to the requests at the model server during it."""
    if load <= 0 or occupied <= 0 or length <= 0:
        return 0.0, 0.0
    idle = min(energy, idle_watts * length) if idle_watts is not None else 0.0
    # The GPU's work beyond idle is charged as far as it can have happened while requests were there:
    # all of it when they were there for at least its busy time, else their fraction of it.
    if busy is not None and busy > 0:
        work_share = min(1.0, occupied / busy)
    else:
        work_share = occupied / length
    joules = (energy - idle) * work_share
    if in_flight:
        joules += idle * occupied / length
    return joules, 0.0 if busy is None else min(busy, occupied)


class _Series:
    """One GPU's (or MIG instance's) readings over the horizon, oldest first, in parallel lists.

    Index i holds the sample at `times[i]` and what the interval ending there (from `times[i - 1]`)
    charges to requests; intervals exist for head < i < len. Old entries are skipped by `head` and
    deleted in bulk, so trimming is amortised O(1).
    """

    __slots__ = ("source", "head", "times", "loads", "occupied", "joules", "busy", "watts", "util",
                 "counter", "estimated", "idle_watts", "counts_energy", "counts_busy")  # fmt: skip

    def __init__(self, source: str) -> None:
        self.source = source
        self.head = 0
        self.times: list[float] = []
        self.loads: list[float] = []
        """request_seconds() when the sample was observed."""
        self.occupied: list[float] = []
        """occupied_seconds() when the sample was observed."""
        self.joules: list[float] = []
        """Joules of the interval ending here charged to the requests in it, all together."""
        self.busy: list[float] = []
        """Busy seconds of the interval ending here charged to the requests in it, all together."""
        self.watts: float | None = None
        """Newest power, for extrapolating past the newest sample."""
        self.util: float | None = None
        """Newest utilisation as a fraction."""
        self.counter: float | None = None
        """Newest energy counter reading (mJ)."""
        self.estimated = 0.0
        """Joules estimated from power while the counter stood still, owed back when it moves."""
        self.idle_watts: float | None = None
        self.counts_energy = True
        self.counts_busy = True

    def add(self, at: float, load: float, occupied: float, counter: float | None, watts: float | None,
            util: float | None, horizon: float, in_flight: bool) -> tuple[float, float]:  # fmt: skip
        """Adds a sample; returns the (joules, seconds) of the interval it closes that no request is charged."""
        charged = charged_busy = 0.0
        loose = (0.0, 0.0)
        if self.times:
            dt = at - self.times[-1]
            delta = None if counter is None or self.counter is None else counter - self.counter
            measured = True
            if delta is not None and delta > 0:
                # A counter that lagged catches up in one step: what the power
                # estimates already counted for the lag is taken off, so the
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
            busy = None if fraction is None else fraction * dt
            load_delta = load - self.loads[-1]
            occupied_delta = min(max(occupied - self.occupied[-1], 0.0), dt)
            charged, charged_busy = _charged(energy, busy, dt, load_delta, occupied_delta, self.idle_watts, in_flight)
            loose = (energy - charged, max(dt - charged_busy, 0.0))
            if measured and load_delta <= 0:
                self._learn_idle(energy / dt, dt)
        self.times.append(at)
        self.loads.append(load)
        self.occupied.append(occupied)
        self.joules.append(charged)
        self.busy.append(charged_busy)
        if watts is not None:
            self.watts = watts
        if util is not None:
            self.util = util
        self.counter = counter
        self._trim(at - horizon)
        return loose

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
            for column in (self.times, self.loads, self.occupied, self.joules, self.busy):
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
    """Attributes GPU busy time and energy to requests; `observe` GPU samples, `usage_of` requests.

    Runs on the event loop: `observe` once per sample per GPU, `usage_of` once per
    request, each O(samples inside the request) after a bisection.
    """

    def __init__(
        self,
        *,
        request_seconds: Callable[[], float],
        occupied_seconds: Callable[[], float],
        idle_power: IdlePower = "unattributed",
        clock: Callable[[], float] = time.time,
        horizon: float = 900.0,
    ) -> None:
        """`request_seconds` is the proxy's integral over wall time of the requests at the model server
        (seconds, non-decreasing), `occupied_seconds` the time during which at least one was there;
        `idle_power` says who pays for idle power; `clock` is the wall clock the samples and requests
        use; `horizon` how far back readings are kept (longer requests are charged for their last
        `horizon`)."""
        if idle_power not in ("unattributed", "in_flight"):
            raise ValueError(f"idle_power: expected unattributed or in_flight, got {idle_power!r}")
        self._request_seconds = request_seconds
        self._occupied_seconds = occupied_seconds
        self._in_flight = idle_power == "in_flight"
        self._clock = clock
        self._horizon = horizon
        self._series: dict[GpuKey, _Series] = {}
        self._loose_joules = 0.0
        self._loose_seconds = 0.0

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
        joules, seconds = series.add(sample.at, self._request_seconds(), self._occupied_seconds(), counter, watts,
                                     util, self._horizon, self._in_flight)  # fmt: skip
        if series.counts_energy:
            self._loose_joules += joules
        if series.counts_busy:
            self._loose_seconds += seconds

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

    def unattributed(self) -> Unattributed:
        """What no request was charged since start (intervals up to each GPU's newest sample)."""
        return Unattributed(self._loose_joules, self._loose_seconds)

    def usage(self, start: float, end: float) -> tuple[float, float] | None:
        """(gpu_seconds, energy_joules) for a request at the model server over [start, end] (wall clock),
        summed over GPUs; None when no GPU readings cover any of it."""
        if end < start:
            start, end = end, start
        gpu_seconds = energy = 0.0
        covered = False
        load_now = occupied_now = now = 0.0
        read_now = False
        for series in self._series.values():
            times = series.times
            n = len(times)
            counts_energy, counts_busy = series.counts_energy, series.counts_busy
            loads, joules, busies = series.loads, series.joules, series.busy
            k = bisect_right(times, start, series.head + 1, n)
            while k < n and times[k - 1] < end:
                before, after = times[k - 1], times[k]
                overlap = (end if end < after else after) - (start if start > before else before)
                load = loads[k] - loads[k - 1]
                # The request's own time bounds the load from below: the two clocks may disagree a little.
                share = overlap / (load if load > overlap else overlap) if overlap > 0 else 0.0
                if counts_energy:
                    energy += joules[k] * share
                if counts_busy:
                    gpu_seconds += busies[k] * share
                covered = True
                k += 1
            last = times[-1]
            if end <= last or end - last > max(_EXTRAPOLATE_INTERVALS * series.last_interval(), _EXTRAPOLATE_MIN_S):
                continue
            if not read_now:
                load_now, occupied_now, now = self._request_seconds(), self._occupied_seconds(), self._clock()
                read_now = True
            # From the newest sample to now: a virtual interval with the newest readings.
            overlap = end - (start if start > last else last)
            span = (now if now > end else end) - last
            load = max(load_now - series.loads[-1], overlap)
            occupied = min(max(occupied_now - series.occupied[-1], overlap), span)
            drawn = 0.0 if series.watts is None else series.watts * span
            busy = None if series.util is None else series.util * span
            tail_joules, tail_busy = _charged(drawn, busy, span, load, occupied, series.idle_watts, self._in_flight)
            share = overlap / load if overlap > 0 else 0.0
            if series.watts is not None and counts_energy:
                energy += tail_joules * share
            if counts_busy:
                gpu_seconds += tail_busy * share
            covered = True
        return (gpu_seconds, energy) if covered else None

    def enrich(self, exchange: Exchange, cost: CostModel | None) -> Exchange:
        """The exchange with its GPU usage (and cost, given a cost model) set, when known."""
        usage = self.usage_of(exchange.started_at, exchange.duration_s, exchange.gen_ai, cost)
        return exchange if usage is None else dataclasses.replace(exchange, usage=usage)

    def usage_of(
        self, started_at: float, duration_s: float, call: GenAiCall | None, cost: CostModel | None,
        processed: bool = True,
    ) -> GpuUsage | None:  # fmt: skip
        """A request's GPU usage (and cost, given a cost model) over the time it spent at the model
        server, or None when unknown. A request the model server never processed (`processed=False`:
        it could not be reached) gets none, and its share counts as unattributed. The proxy calls this
        while it builds the Exchange, so the record is made once, usage included."""
        measured = self.usage(started_at, started_at + duration_s)
        if measured is None:
            return None
        gpu_seconds, energy = measured
        if not processed:
            self._loose_seconds += gpu_seconds
            self._loose_joules += energy
            return None
        cost_local = cost_cloud = None
        if cost is not None:
            cost_local = cost.local(energy, gpu_seconds)
            if call is not None and (call.input_tokens is not None or call.output_tokens is not None):
                cost_cloud = cost.cloud_equivalent(
                    call.request_model or call.response_model, call.input_tokens or 0, call.output_tokens or 0
                )
        return GpuUsage(gpu_seconds, energy, cost_local, cost_cloud)
