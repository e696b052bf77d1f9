"""The status page: one HTML page on the admin port for people without Grafana, and the JSON it polls.

`StatusPage` builds `/-/status.json` from what the sidecar already keeps, never from a scrape of its
own `/metrics`:

- requests, errors, latency and TTFT quantiles and tokens/s: the rules engine's closed 10-second
  slots (`RuleEngine.recent_slots`), so the page and the alert rules read the same counts;
- GPU utilisation, memory, temperature and power: a bounded ring per GPU of 5-second averages,
  fed from the sidecar's `gpu_samples` broadcast (`observe_gpu_sample`);
- audit pipeline health, cost totals and SLO budgets: read every `sample_interval_s` into one
  bounded ring (`sample`, run by `start()`), from which rates are computed;
- alerts: the engine's current alerts as they are.

An SLO's budget is a share of what its whole period allows; while less than `BUDGET_MIN_COVERAGE` of
the period has been counted, that share would extrapolate minutes to weeks, so the data gives the
budget as time spent against time allowed so far, with the coverage, and no percentage
(`budget.remaining_ratio` is null). GPUs read from a simulation are marked `simulated`.

Every section says whether it is `available`; when a part is off (no GPU, audit disabled, rules
disabled) its section carries a `note` saying why, and the page shows that instead of a chart.
Units are in the key names (`_per_s`, `_s`, `_percent`, `_celsius`, `_watts`, `_ratio`); times are
Unix seconds. Memory is fixed: `window_s / step` points per series, at most `max_gpus` GPUs.

The page itself is static (`static/status.html`, `status.js`, `status.css`; no build step, nothing
fetched from elsewhere); `StatusAssets` serves it. This module imports nothing from the other
parts: `app.py` hands it callables (`StatusSources`), read on the event loop when the page asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Protocol

from sidecar.exchange import Exchange, GpuSample, GpuState
from sidecar.observe import ProblemLog

logger = logging.getLogger(__name__)

WINDOW_S = 900.0
"""What the charts show: the last 15 minutes."""
SAMPLE_INTERVAL_S = 5.0
"""How often audit, cost and SLO readings are taken (and the page polls)."""
GPU_STEP_S = 5.0
"""GPU readings are averaged over steps this long."""
MAX_GPUS = 64
REQUEST_QUANTILES = (0.5, 0.95, 0.99)
TTFT_QUANTILES = (0.5, 0.95)
BURN_RATE_WINDOWS_S = (300.0, 3600.0)
"""The burn rates charted over time (every SLO window's current burn rate is in the table)."""
BUDGET_MIN_COVERAGE = 0.1
"""Share of an SLO's period that must be counted before its budget is given as a percentage: 3 of 30
days, the longest burn-rate window (Google's SRE workbook's slowest ticket alert)."""

# dcgm-exporter's field names, which every GPU sample carries (telemetry does not import sidecar.gpu).
_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
_FB_USED = "DCGM_FI_DEV_FB_USED"
_FB_FREE = "DCGM_FI_DEV_FB_FREE"
_GPU_TEMP = "DCGM_FI_DEV_GPU_TEMP"
_POWER_USAGE = "DCGM_FI_DEV_POWER_USAGE"
_GPU_FIELDS = ("utilization_percent", "memory_used_percent", "temperature_celsius", "power_watts")


# --- what app.py hands in ------------------------------------------------------------------------


class RequestSlot(Protocol):
    """One closed slot of request counts (`sidecar.rules.engine.SlotSummary`)."""

    start: float
    duration_s: float
    requests: float
    errors: float
    rate_limited: float
    input_tokens: float
    output_tokens: float
    request_duration_s: Mapping[float, float | None]
    ttft_s: Mapping[float, float | None]


class SloReading(Protocol):
    """One SLO's standing (`sidecar.rules.engine.SloStatus`)."""

    name: str
    sli: str
    objective: float
    period_s: float
    covered_s: float
    total: float
    bad: float
    availability: float | None
    budget_remaining: float
    burn_rates: Mapping[float, float | None]
    error_budget: float
    allowed_downtime_s: float
    """The error budget as time over the whole period."""
    used_downtime_s: float
    """Error ratio x the time counted."""


class AlertReading(Protocol):
    """One alert (`sidecar.rules.alert.Alert`): pending, firing or recently resolved."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: Any
    """An enum whose value is pending, firing or resolved."""
    value: float
    active_at: float
    fired_at: float | None
    resolved_at: float | None


@dataclass(frozen=True, slots=True)
class AuditReading:
    """The audit pipeline's counters and gauges at one moment."""

    sink: str
    sink_up: bool
    accepted: float
    """Events written to the spool since start (cumulative)."""
    dropped: float
    """Events lost since start, every reason (cumulative)."""
    dead_letters: float
    """Events the sink refused for good since start (cumulative)."""
    spool_used_bytes: float
    spool_max_bytes: float
    lag_events: float
    """Events in the spool not yet delivered."""


@dataclass(frozen=True, slots=True)
class CostSource:
    currency: str
    hardware_price: float
    cloud_priced: bool
    """Whether any cloud price is configured (without one there is no cloud equivalent)."""
    savings: Callable[[], float]
    """Savings against the cloud over the payback window (24 h)."""
    payback_months: Callable[[], float | None]
    unattributed: Callable[[], float] | None = None
    """Cost since start of what no request was charged (idle GPUs), in `currency`."""
    idle_power: str = "unattributed"
    """gpu.idle_power: who pays for idle power."""


@dataclass(frozen=True)
class StatusSources:
    """What the page reads; a source left None is a part that is off, and `off` says why."""

    instance: str
    version: str
    upstream: str
    readiness: Callable[[], Mapping[str, str | None]] = dict
    """Check name -> None when ready, else the reason (the same checks as `/-/ready`)."""
    request_slots: Callable[[int], Sequence[RequestSlot]] | None = None
    slos: Callable[[], Sequence[SloReading]] | None = None
    alerts: Callable[[], Sequence[AlertReading]] | None = None
    rules: Callable[[], Sequence[Any]] | None = None
    """Rule states (anything with `health`); counted for the alerts section."""
    gpu_problem: Callable[[], str | None] | None = None
    """Set when GPU readings are on: why there are none yet (no driver, ...), else None."""
    audit: Callable[[], AuditReading] | None = None
    cost: CostSource | None = None
    off: Mapping[str, str] = field(default_factory=dict)
    """Section (requests, gpu, slo, alerts, audit, cost) -> why it is off."""


# --- rings ---------------------------------------------------------------------------------------


class _GpuTrack:
    """One GPU's recent readings: `step_s` averages, the open step last."""

    __slots__ = ("gpu", "uuid", "name", "state", "error", "seen_at", "memory_total_mib", "simulated", "points",
                 "_step", "_sums", "_counts")  # fmt: skip

    def __init__(self, sample: GpuSample, maxlen: int) -> None:
        self.gpu = sample.gpu
        self.uuid = sample.uuid
        self.name = sample.model_name
        self.state = sample.state.value
        self.error: str | None = None
        self.seen_at = sample.at
        self.memory_total_mib: float | None = None
        self.simulated = sample.simulated
        self.points: deque[tuple[float, tuple[float | None, ...]]] = deque(maxlen=maxlen)
        """(step end, averages) of closed steps, oldest first."""
        self._step: int | None = None
        self._sums = [0.0] * len(_GPU_FIELDS)
        self._counts = [0] * len(_GPU_FIELDS)

    def add(self, sample: GpuSample, step_s: float) -> None:
        self.seen_at = max(self.seen_at, sample.at)
        self.state = sample.state.value
        self.error = sample.error
        self.name = sample.model_name or self.name
        self.simulated = sample.simulated
        step = int(sample.at // step_s)
        if self._step is not None and step > self._step:
            self.points.append(((self._step + 1) * step_s, self._averages()))
            self._sums = [0.0] * len(_GPU_FIELDS)
            self._counts = [0] * len(_GPU_FIELDS)
        if self._step is None or step >= self._step:
            self._step = step
        if sample.state is not GpuState.OK:
            return  # a lost or stale GPU leaves a gap, not a zero
        fields = sample.fields
        used, free = fields.get(_FB_USED), fields.get(_FB_FREE)
        memory = used / (used + free) * 100.0 if used is not None and free is not None and used + free > 0 else None
        if used is not None and free is not None:
            self.memory_total_mib = used + free
        for index, value in enumerate((fields.get(_GPU_UTIL), memory, fields.get(_GPU_TEMP),
                                       fields.get(_POWER_USAGE))):  # fmt: skip
            if value is not None and math.isfinite(value):
                self._sums[index] += value
                self._counts[index] += 1

    def _averages(self) -> tuple[float | None, ...]:
        return tuple(total / count if count else None for total, count in zip(self._sums, self._counts, strict=True))

    def series(self, since: float, step_s: float) -> list[tuple[float, tuple[float | None, ...]]]:
        points = [point for point in self.points if point[0] > since]
        if self._step is not None and any(self._counts):
            # The open step, as far as it has come: the chart reaches the latest reading.
            points.append((min((self._step + 1) * step_s, max(self.seen_at, self._step * step_s)), self._averages()))
        return points


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    audit: AuditReading | None
    cost_local: float | None
    cost_cloud: float | None
    cost_unattributed: float | None
    slos: Mapping[str, tuple[float, float, float, tuple[float | None, ...]]]
    """SLO name -> (budget remaining, budget spent as time, budget allowed so far as time, burn rates over
    BURN_RATE_WINDOWS_S)."""


# --- the page's data -----------------------------------------------------------------------------


class StatusPage:
    """Builds `/-/status.json`; see the module docstring. Call everything from the event loop."""

    def __init__(
        self,
        sources: StatusSources,
        *,
        clock: Callable[[], float] = time.time,
        window_s: float = WINDOW_S,
        sample_interval_s: float = SAMPLE_INTERVAL_S,
        gpu_step_s: float = GPU_STEP_S,
        max_gpus: int = MAX_GPUS,
    ) -> None:
        self.sources = sources
        self._clock = clock
        self.window_s = float(window_s)
        self.sample_interval_s = float(sample_interval_s)
        self._gpu_step_s = float(gpu_step_s)
        self._max_gpus = max_gpus
        self._started_at = clock()
        self._gpus: dict[str, _GpuTrack] = {}
        # One sample before the window too, so the first point of the window has a rate.
        self._samples: deque[_Sample] = deque(maxlen=int(math.ceil(self.window_s / self.sample_interval_s)) + 2)
        self._cost_local = 0.0
        self._cost_cloud = 0.0
        self._cost_seen = False
        self._task: asyncio.Task[None] | None = None
        self._problems = ProblemLog(logger)

    # --- feeding ---------------------------------------------------------------------------------

    def observe_gpu_sample(self, sample: GpuSample) -> None:
        if sample.gpu_instance_id is not None:
            return  # MIG instances: the page charts whole GPUs
        key = sample.uuid or sample.gpu
        track = self._gpus.get(key)
        if track is None:
            self._forget_gpus(self._clock())
            if len(self._gpus) >= self._max_gpus:
                return
            track = self._gpus[key] = _GpuTrack(sample, int(self.window_s / self._gpu_step_s) + 1)
        track.add(sample, self._gpu_step_s)

    def observe_exchange(self, exchange: Exchange) -> None:
        """Adds the request's attributed cost (subscribed only while GPU attribution prices requests)."""
        usage = exchange.usage
        if usage is None:
            return
        self._cost_seen = True
        if usage.cost_local is not None:
            self._cost_local += usage.cost_local
        if usage.cost_cloud_equivalent is not None:
            self._cost_cloud += usage.cost_cloud_equivalent

    def sample(self, now: float | None = None) -> None:
        """Read the audit, cost and SLO sources into the ring (`start()` does this every interval)."""
        now = self._clock() if now is None else now
        sources = self.sources
        audit = self._read("audit", sources.audit) if sources.audit is not None else None
        slos: dict[str, tuple[float, float, float, tuple[float | None, ...]]] = {}
        if sources.slos is not None:
            for slo in self._read("slo", sources.slos) or ():
                rates = tuple(_finite(slo.burn_rates.get(window)) for window in BURN_RATE_WINDOWS_S)
                slos[slo.name] = (slo.budget_remaining, slo.used_downtime_s, _allowed_so_far(slo), rates)
        cost = sources.cost
        local = self._cost_local if cost is not None else None
        cloud = self._cost_cloud if cost is not None and cost.cloud_priced else None
        unattributed = None
        if cost is not None and cost.unattributed is not None:
            unattributed = self._read("cost", cost.unattributed)
        self._samples.append(_Sample(now, audit, local, cloud, unattributed, MappingProxyType(slos)))

    def _read(self, source: str, read: Callable[[], Any]) -> Any:
        """The source's answer, or None when it fails (logged once per problem, not per poll)."""
        return self._problems.read(source, read, "status page: reading a source failed", source=source)

    async def start(self) -> None:
        if self._task is None:
            self.sample()
            self._task = asyncio.create_task(self._run(), name="status-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at = max(next_at + self.sample_interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())
            try:
                self.sample()
            except Exception:
                logger.exception("status page: sampling failed")

    def _forget_gpus(self, now: float) -> None:
        for key in [key for key, track in self._gpus.items() if now - track.seen_at > self.window_s]:
            del self._gpus[key]

    # --- building --------------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        """The whole page's data, JSON-able (NaN and infinities become null)."""
        now = self._clock()
        since = now - self.window_s
        sources = self.sources
        readiness = self._read("readiness", sources.readiness) or {}
        return _jsonable({
            "generated_at": now,
            "window_s": self.window_s,
            "refresh_s": self.sample_interval_s,
            "service": {
                "instance": sources.instance,
                "version": sources.version,
                "upstream": sources.upstream,
                "started_at": self._started_at,
                "ready": not any(readiness.values()),
                "checks": {name: reason or "ok" for name, reason in readiness.items()},
            },
            "requests": self._requests(since),
            "gpu": self._gpu(now, since),
            "slo": self._slo(since),
            "alerts": self._alerts(),
            "audit": self._audit(since),
            "cost": self._cost(since),
        })

    def _off(self, section: str, default: str) -> dict[str, Any]:
        return {"available": False, "note": self.sources.off.get(section, default)}

    def _requests(self, since: float) -> dict[str, Any]:
        read = self.sources.request_slots
        if read is None:
            return self._off("requests", "request history is off: it comes from the rules engine")
        count = int(self.window_s // 10)  # the engine keeps 10-second slots
        slots = [slot for slot in (self._read("requests", lambda: read(count)) or ())
                 if slot.start + slot.duration_s > since]  # fmt: skip
        columns: dict[str, list[float | None]] = {
            name: [] for name in (
                "t", "requests_per_s", "errors_per_s", "rate_limited_per_s", "error_ratio",
                *(f"latency_p{_percent(q)}_s" for q in REQUEST_QUANTILES),
                *(f"ttft_p{_percent(q)}_s" for q in TTFT_QUANTILES),
                "input_tokens_per_s", "output_tokens_per_s",
            )
        }  # fmt: skip
        for slot in slots:
            seconds = slot.duration_s
            columns["t"].append(slot.start + seconds)
            columns["requests_per_s"].append(slot.requests / seconds)
            columns["errors_per_s"].append(slot.errors / seconds)
            columns["rate_limited_per_s"].append(slot.rate_limited / seconds)
            columns["error_ratio"].append(slot.errors / slot.requests if slot.requests else None)
            for q in REQUEST_QUANTILES:
                columns[f"latency_p{_percent(q)}_s"].append(_finite(slot.request_duration_s.get(q)))
            for q in TTFT_QUANTILES:
                columns[f"ttft_p{_percent(q)}_s"].append(_finite(slot.ttft_s.get(q)))
            columns["input_tokens_per_s"].append(slot.input_tokens / seconds)
            columns["output_tokens_per_s"].append(slot.output_tokens / seconds)
        requests = sum(slot.requests for slot in slots)
        errors = sum(slot.errors for slot in slots)
        covered = sum(slot.duration_s for slot in slots)
        return {
            "available": True,
            "note": None if slots else "no 10-second slot has closed yet",
            "slot_s": slots[-1].duration_s if slots else 10.0,
            "series": columns,
            "latest": {name: values[-1] for name, values in columns.items()} if slots else None,
            "window": {
                "requests": requests,
                "errors": errors,
                "error_ratio": errors / requests if requests else None,
                "requests_per_s": requests / covered if covered else None,
                "input_tokens": sum(slot.input_tokens for slot in slots),
                "output_tokens": sum(slot.output_tokens for slot in slots),
            },
        }

    def _gpu(self, now: float, since: float) -> dict[str, Any]:
        problem_source = self.sources.gpu_problem
        if problem_source is None:
            return self._off("gpu", "GPU readings are off")
        self._forget_gpus(now)
        gpus = []
        for track in sorted(self._gpus.values(), key=lambda track: (_index_key(track.gpu), track.uuid)):
            points = track.series(since, self._gpu_step_s)
            series: dict[str, list[float | None]] = {"t": [at for at, _ in points]}
            for index, name in enumerate(_GPU_FIELDS):
                series[name] = [_round(values[index]) for _, values in points]
            gpus.append({
                "gpu": track.gpu, "uuid": track.uuid, "name": track.name, "state": track.state,
                "simulated": track.simulated,
                "error": track.error, "seen_at": track.seen_at, "memory_total_mib": track.memory_total_mib,
                "latest": {name: next((v for v in reversed(series[name]) if v is not None), None)
                           for name in _GPU_FIELDS},
                "series": series,
            })  # fmt: skip
        problem = self._read("gpu", problem_source)
        return {
            "available": True,
            "note": (problem or "no GPU reading yet") if not gpus else None,
            "simulated": any(gpu["simulated"] for gpu in gpus),
            "step_s": self._gpu_step_s,
            "gpus": gpus,
        }

    def _window_samples(self, since: float) -> tuple[_Sample | None, list[_Sample]]:
        """The last sample before the window (the base of the first rate) and those inside it."""
        before, inside = None, []
        for sample in self._samples:
            if sample.at > since:
                inside.append(sample)
            else:
                before = sample
        return before, inside

    def _slo(self, since: float) -> dict[str, Any]:
        read = self.sources.slos
        if read is None:
            return self._off("slo", "SLOs are off: they are evaluated by the rules engine")
        _, samples = self._window_samples(since)
        slos = []
        for slo in self._read("slo", read) or ():
            history = [(sample.at, sample.slos[slo.name]) for sample in samples if slo.name in sample.slos]
            series: dict[str, list[float | None]] = {
                "t": [at for at, _ in history],
                "budget_remaining_ratio": [_finite(reading[0]) for _, reading in history],
                "budget_spent_s": [_finite(reading[1]) for _, reading in history],
                "budget_allowed_so_far_s": [_finite(reading[2]) for _, reading in history],
            }
            for index, window in enumerate(BURN_RATE_WINDOWS_S):
                series[f"burn_rate_{_window_name(window)}"] = [reading[3][index] for _, reading in history]
            coverage = min(slo.covered_s / slo.period_s, 1.0) if slo.period_s > 0 else 0.0
            shown = coverage >= BUDGET_MIN_COVERAGE
            slos.append({
                "name": slo.name, "sli": slo.sli, "objective": slo.objective, "period_s": slo.period_s,
                "covered_s": slo.covered_s, "coverage_ratio": coverage, "total": slo.total, "bad": slo.bad,
                "availability": _finite(slo.availability), "budget_remaining_ratio": _finite(slo.budget_remaining),
                "budget": {
                    # The period's share only once enough of it is counted; time spent against time allowed always.
                    "remaining_ratio": _finite(slo.budget_remaining) if shown else None,
                    "min_coverage_ratio": BUDGET_MIN_COVERAGE,
                    "spent_s": _finite(slo.used_downtime_s),
                    "allowed_so_far_s": _allowed_so_far(slo),
                    "allowed_s": slo.allowed_downtime_s,
                },
                "burn_rates": {_window_name(window): _finite(rate) for window, rate in slo.burn_rates.items()},
                "series": series,
            })  # fmt: skip
        return {"available": True, "note": None if slos else "no SLO is configured (rules.slos)", "slos": slos}

    def _alerts(self) -> dict[str, Any]:
        read = self.sources.alerts
        if read is None:
            return self._off("alerts", "alert rules are off")
        alerts = []
        for alert in self._read("alerts", read) or ():
            state = str(getattr(alert.state, "value", alert.state))
            since = alert.resolved_at if state == "resolved" else alert.fired_at if state == "firing" else None
            labels = dict(alert.labels)
            alerts.append({
                "name": alert.name, "state": state, "severity": labels.get("severity"),
                "since": since if since is not None else alert.active_at, "active_at": alert.active_at,
                "summary": alert.annotations.get("summary") or alert.annotations.get("description") or "",
                "value": _finite(alert.value), "labels": labels,
            })  # fmt: skip
        order = {"firing": 0, "pending": 1, "resolved": 2}
        alerts.sort(key=lambda alert: (order.get(alert["state"], 3), -(alert["since"] or 0.0)))
        counts = {state: sum(1 for alert in alerts if alert["state"] == state) for state in order}
        rules = self._read("rules", self.sources.rules) if self.sources.rules is not None else None
        return {
            "available": True,
            "note": None,
            "alerts": alerts,
            "counts": counts,
            "rules": None if rules is None else {
                "total": len(rules), "failing": sum(1 for rule in rules if getattr(rule, "health", "ok") == "err"),
            },
        }  # fmt: skip

    def _audit(self, since: float) -> dict[str, Any]:
        if self.sources.audit is None:
            return self._off("audit", "the audit trail is off")
        before, samples = self._window_samples(since)
        series: dict[str, list[float | None]] = {
            name: [] for name in ("t", "accepted_per_s", "dropped_per_s", "dead_letters_per_s",
                                  "spool_fill_ratio", "sink_up", "lag_events")  # fmt: skip
        }
        previous = before.audit if before is not None else None
        previous_at = before.at if before is not None else None
        for sample in samples:
            audit = sample.audit
            if audit is None:
                previous = None
                continue
            series["t"].append(sample.at)
            for name, attribute in (("accepted_per_s", "accepted"), ("dropped_per_s", "dropped"),
                                    ("dead_letters_per_s", "dead_letters")):  # fmt: skip
                series[name].append(_rate(getattr(previous, attribute, None), getattr(audit, attribute),
                                          previous_at, sample.at))  # fmt: skip
            series["spool_fill_ratio"].append(_fill(audit))
            series["sink_up"].append(1.0 if audit.sink_up else 0.0)
            series["lag_events"].append(audit.lag_events)
            previous, previous_at = audit, sample.at
        now_reading = self._read("audit", self.sources.audit)
        latest = None
        if now_reading is not None:
            latest = {
                "sink_up": now_reading.sink_up, "accepted": now_reading.accepted, "dropped": now_reading.dropped,
                "dead_letters": now_reading.dead_letters, "spool_used_bytes": now_reading.spool_used_bytes,
                "spool_max_bytes": now_reading.spool_max_bytes, "spool_fill_ratio": _fill(now_reading),
                "lag_events": now_reading.lag_events,
                "accepted_per_s": next((v for v in reversed(series["accepted_per_s"]) if v is not None), None),
            }  # fmt: skip
        return {
            "available": True,
            "note": None if len(series["t"]) > 1 else "collecting: a rate needs two readings 5 s apart",
            "sink": now_reading.sink if now_reading is not None else None,
            "latest": latest,
            "series": series,
        }

    def _cost(self, since: float) -> dict[str, Any]:
        cost = self.sources.cost
        if cost is None:
            return self._off("cost", "cost needs GPU attribution")
        before, samples = self._window_samples(since)
        base = before if before is not None else (samples[0] if samples else None)
        series: dict[str, list[float | None]] = {"t": [], "local_cumulative": [], "cloud_equivalent_cumulative": [],
                                                 "unattributed_cumulative": []}  # fmt: skip
        for sample in samples:
            series["t"].append(sample.at)
            series["local_cumulative"].append(_delta(base.cost_local if base else None, sample.cost_local))
            series["cloud_equivalent_cumulative"].append(
                _delta(base.cost_cloud if base else None, sample.cost_cloud) if cost.cloud_priced else None
            )
            series["unattributed_cumulative"].append(
                _delta(base.cost_unattributed if base else None, sample.cost_unattributed)
            )
        unattributed = self._read("cost", cost.unattributed) if cost.unattributed is not None else None
        savings = self._read("cost", cost.savings) if cost.cloud_priced else None
        months = self._read("cost", cost.payback_months) if cost.cloud_priced and cost.hardware_price > 0 else None
        notes = []
        if not cost.cloud_priced:
            notes.append("no cloud prices configured (gpu.cost.cloud_prices): no cloud equivalent")
        if cost.hardware_price <= 0:
            notes.append("no hardware price (gpu.cost.hardware_price): no payback estimate")
        elif cost.cloud_priced and months is None:
            notes.append("no payback estimate yet: nothing saved against the cloud in the last 24 h")
        if not self._cost_seen:
            notes.append("no request has been priced yet")
        return {
            "available": True,
            "note": "; ".join(notes) or None,
            "currency": cost.currency,
            "idle_power": cost.idle_power,
            "latest": {
                "local_total": self._cost_local,
                "unattributed_total": _finite(unattributed),
                "cloud_equivalent_total": self._cost_cloud if cost.cloud_priced else None,
                "savings_24h": _finite(savings),
                "payback_months": _finite(months),
                "hardware_price": cost.hardware_price,
            },
            "series": series,
        }


# --- helpers -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """`value` with every NaN and infinity made None, which JSON can carry."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _percent(q: float) -> str:
    return f"{q * 100:g}"


def _window_name(window_s: float) -> str:
    return str(int(window_s)) if window_s == int(window_s) else repr(window_s)


def _index_key(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


def _rate(previous: float | None, current: float, previous_at: float | None, at: float) -> float | None:
    """Per second between two readings of a counter; a decrease is a restart from 0, as increase() treats it."""
    if previous is None or previous_at is None or at <= previous_at:
        return None
    increase = current if current < previous else current - previous
    return increase / (at - previous_at)


def _delta(base: float | None, current: float | None) -> float | None:
    if base is None or current is None:
        return None
    return current - base if current >= base else current


def _allowed_so_far(slo: SloReading) -> float:
    """The error budget as time over the part of the period counted so far."""
    return slo.error_budget * slo.covered_s


def _fill(audit: AuditReading) -> float | None:
    return audit.spool_used_bytes / audit.spool_max_bytes if audit.spool_max_bytes else None


# --- the page ------------------------------------------------------------------------------------

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

PAGE_HEADERS: Mapping[str, str] = MappingProxyType({
    # Everything the page loads is its own: no inline script, nothing fetched from elsewhere.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
})  # fmt: skip


class StatusAssets:
    """The page's static files (`sidecar/telemetry/static`), read once."""

    def __init__(self) -> None:
        folder = resources.files("sidecar.telemetry") / "static"
        self._files: dict[str, tuple[bytes, str]] = {}
        for entry in folder.iterdir():
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            if entry.is_file() and suffix in _CONTENT_TYPES:
                self._files[entry.name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
        if "status.html" not in self._files:
            raise RuntimeError(f"the status page is missing from {folder} (a broken install?)")

    @property
    def page(self) -> bytes:
        return self._files["status.html"][0]

    def get(self, name: str) -> tuple[bytes, str] | None:
        """A file's bytes and content type; None for anything that is not one of the page's files."""
        return self._files.get(name)


def wants_html(accept: str) -> bool:
    """Whether an Accept header prefers the HTML page to JSON: text/html named (as browsers do) with a
    quality at least that of application/json. `*/*` alone (curl, scripts) gets JSON."""
    html = json = 0.0
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.strip().lower()
        if media in ("text/html", "application/xhtml+xml"):
            html = max(html, quality)
        elif media == "application/json":
            json = max(json, quality)
    return html > 0 and html >= json
