"""The in-process rule engine: records in, rolling windows, alert states out, as Prometheus keeps them.

Observers (`observe_exchange`, `observe_health`, `observe_gpu_sample`, `observe_gpu_event`) feed
the rolling windows (`sidecar.rules.windows`); `evaluate()` is one tick: every rule's condition is
computed from the windows and each alert moves through Prometheus's states (rules/alerting.go):

- a label set whose condition starts to hold is a new alert, pending, `active_at` = now;
- pending and held for the rule's `for` (now - active_at >= for), it fires (`fired_at` = now) at
  that evaluation, so with a 1 s interval within 1 s of `for` elapsing; `for: 0` fires at once;
- a pending alert whose condition stops holding is dropped (it never fired: nobody is told);
- a firing one whose condition stops holding records that evaluation as `keep_firing_since` and
  keeps firing while now - keep_firing_since < keep_firing_for (Prometheus's KeepFiringSince: held
  to 10m, keep_firing_for 5m, evaluated each minute: firing at 15m, resolved at 16m), then is
  resolved (`resolved_at` = now) and kept `resolved_retention_s` so receivers hear of the
  resolution; holding again clears keep_firing_since;
- a resolved alert whose condition holds again is replaced by a new pending one.

The changes are returned as `AlertTransition`s: new pending (previous None), pending -> firing,
None -> firing (for: 0) and firing -> resolved.

Alert labels are the signal's own (gpu and UUID for per-GPU signals), then `instance`, then the
rule's labels (severity, slo, ...) and `alertname`, each overriding the ones before, as in
Prometheus; external labels are added only where absent, as Prometheus adds them on the way to
Alertmanager. A label whose value is empty is no label (Prometheus never emits one, a rule label
set to "" removes it, and Alertmanager drops empty ones before fingerprinting): an XID error without
a UUID has no UUID label.

Restarts (`dump_state`/`load_state`): windows, series and alerts resume. As Prometheus's
RestoreForState does, a pending alert's `active_at` moves forward by the downtime (now - the dump's
`saved_at`), so its condition must be seen to hold for `for` while the sidecar runs; firing and
resolved alerts keep their times, so they are not announced again. keep_firing_since is kept too: a
firing alert that still held when saved starts its keep_firing_for at the first evaluation after the
restart that sees the condition no longer hold (nothing was evaluated while the sidecar was down).

Cost: a tick computes each window's totals once (O(row width)) and each rule from them, so it is
independent of traffic and of window length; memory is fixed by the rule set (the windows' rings
and the gauges' bounded deques). Not thread-safe: call everything from the event loop (the
metrics collector runs there too, in the admin server's handler).
"""

from __future__ import annotations

import logging
import math
import operator
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sidecar.config import format_duration
from sidecar.exchange import Exchange, GpuEvent, GpuSample, HealthResult, HealthState
from sidecar.observe import ProblemLog
from sidecar.rules.alert import Alert, AlertState, AlertTransition
from sidecar.rules.signals import QUANTILE_SIGNALS, SIGNALS, Shape, Source, gpu_readings
from sidecar.rules.spec import (
    SLO_WINDOWS,
    BurnRateCondition,
    RuleSet,
    RuleSpec,
    SignalCondition,
    SloSpec,
    render_template,
)
from sidecar.rules.windows import (
    ExchangeWindows,
    Layout,
    SeriesKey,
    SeriesStore,
    encode_series,
    encode_windows,
    prepared_counts,
    quantile_of_prepared,
)

logger = logging.getLogger(__name__)

STATE_VERSION = 1
"""Version of `dump_state`'s layout; another version is refused by `load_state`."""

_OPS: Mapping[str, Callable[[float, float], bool]] = MappingProxyType({
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
})  # fmt: skip
_PRUNE_EVERY_S = 10.0
HISTORY_SLOTS = 90
"""Closed 10-second slots kept for `recent_slots` whatever the rule set: the status page's 15 minutes."""
HISTORY_QUANTILES = (0.5, 0.95, 0.99)
"""The latency quantiles `recent_slots` gives per slot."""
_NO_LABELS: Mapping[str, str] = MappingProxyType({})

LabelKey = tuple[tuple[str, str], ...]
RuleKey = tuple[str, LabelKey]
"""A rule's identity across restarts and reloads: its name and static labels (as Prometheus matches rules)."""


@dataclass(frozen=True, slots=True)
class SloStatus:
    """One SLO over its period, for the status page, `/-/slo` and `sidecar slo report`."""

    name: str
    sli: str
    objective: float
    period_s: float
    covered_s: float
    """How much of the period the windows hold (time since counting began, at most the period)."""
    total: float
    bad: float
    error_ratio: float | None
    """bad / total over the period; None before the first request."""
    availability: float | None
    """1 - error_ratio."""
    error_budget: float
    """1 - objective."""
    budget_remaining: float
    """1 - error_ratio / error_budget: negative when overspent, 1 before the first request."""
    burn_rates: Mapping[float, float | None]
    """window -> error ratio over the window / error budget, for spec.SLO_WINDOWS (None: no requests)."""
    error_ratios: Mapping[float, float | None]
    """window -> error ratio, for spec.SLO_WINDOWS and the period."""
    allowed_downtime_s: float
    """error_budget x period_s."""
    used_downtime_s: float
    """error_ratio x covered_s."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: NaN and infinities (a budget too small to divide by) as None."""
        return {
            "name": self.name, "sli": self.sli, "objective": self.objective, "period_s": self.period_s,
            "covered_s": self.covered_s, "total": self.total, "bad": self.bad,
            "error_ratio": _finite(self.error_ratio), "availability": _finite(self.availability),
            "error_budget": self.error_budget, "budget_remaining": _finite(self.budget_remaining),
            "burn_rates": {_window_key(w): _finite(rate) for w, rate in self.burn_rates.items()},
            "error_ratios": {_window_key(w): _finite(ratio) for w, ratio in self.error_ratios.items()},
            "allowed_downtime_s": self.allowed_downtime_s, "used_downtime_s": _finite(self.used_downtime_s),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class SlotSummary:
    """One closed slot of the finest window tier (10 s), for the status page's charts."""

    start: float
    """Unix time the slot began, or counting began if later; the slot covers [start, start + duration_s)."""
    duration_s: float
    """The slot's length (10 s), less what passed before counting began: rates divide by it."""
    requests: float
    errors: float
    """Failures of the service (`error_class` any: 5xx answers and upstream failures, not the sidecar's
    refusals of bad requests nor clients that went away)."""
    rate_limited: float
    input_tokens: float
    output_tokens: float
    request_duration_s: Mapping[float, float | None]
    """Quantile (HISTORY_QUANTILES) -> request duration, from the slot's histogram; None: no requests."""
    ttft_s: Mapping[float, float | None]
    """Quantile -> time to first token; None: no streamed model call succeeded in the slot."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start, "duration_s": self.duration_s, "requests": self.requests, "errors": self.errors,
            "rate_limited": self.rate_limited, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "request_duration_s": {f"{q:g}": v for q, v in self.request_duration_s.items()},
            "ttft_s": {f"{q:g}": v for q, v in self.ttft_s.items()},
        }  # fmt: skip


_NO_QUANTILES: Mapping[float, float | None] = MappingProxyType({q: None for q in HISTORY_QUANTILES})


@dataclass(frozen=True, slots=True)
class RuleState:
    """One rule as the last evaluation left it, for `/-/alerts` (like Prometheus's /api/v1/rules)."""

    name: str
    labels: Mapping[str, str]
    origin: str
    expression: str
    """The condition in words: `error_ratio[5m] > 0.05`."""
    for_s: float
    keep_firing_for_s: float
    health: str
    """ok, err, or unknown before the first evaluation."""
    error: str | None
    last_evaluation: float | None
    evaluation_duration_s: float
    values: tuple[tuple[Mapping[str, str], float], ...]
    """(signal labels, value) per label set the last evaluation produced (an absent signal: none)."""
    active_alerts: int
    """Pending and firing alerts of this rule."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "labels": dict(self.labels), "origin": self.origin, "expression": self.expression,
            "for_s": self.for_s, "keep_firing_for_s": self.keep_firing_for_s, "health": self.health,
            "error": self.error, "last_evaluation": self.last_evaluation,
            "evaluation_duration_s": self.evaluation_duration_s,
            "values": [{"labels": dict(labels), "value": value if math.isfinite(value) else None}
                       for labels, value in self.values],
            "active_alerts": self.active_alerts,
        }  # fmt: skip


def _window_key(window_s: float) -> str:
    return str(int(window_s)) if window_s == int(window_s) else repr(window_s)


def describe(condition: SignalCondition | BurnRateCondition, slo: SloSpec | None = None) -> str:
    """A rule's condition in words, PromQL-like; `slo`: a burn rate's SLO, for its minimum of evidence."""
    if isinstance(condition, BurnRateCondition):
        parts = [f"> {pair.factor:g} over {format_duration(pair.long_s)} and {format_duration(pair.short_s)}"
                 for pair in condition.windows]  # fmt: skip
        text = f"burn_rate({condition.slo}) " + ", or ".join(parts)
        if slo is not None and (slo.min_events or slo.min_bad_events):
            text += f", with events >= {slo.min_events} and bad >= {slo.min_bad_events} over the short window"
        return text
    window = format_duration(condition.window_s)
    selector = condition.signal
    if condition.error_class != "any":
        selector += f'{{error_class="{condition.error_class}"}}'
    if condition.quantile is not None:
        text = f"{selector}({condition.quantile:g})[{window}]"
    elif condition.aggregate != "last":
        text = f"{condition.aggregate}({selector}[{window}])"
    else:
        signal = SIGNALS.get(condition.signal)
        text = selector if signal is not None and signal.shape is Shape.GAUGE else f"{selector}[{window}]"
    text = f"{text} {condition.op} {condition.threshold:g}"
    if condition.min_events or condition.min_bad_events:
        text += f" and requests[{window}] >= {condition.min_events} and errors[{window}] >= {condition.min_bad_events}"
    return text


@dataclass(slots=True)
class _Rule:
    """A rule's runtime: its alerts by label set and what its last evaluation saw."""

    spec: RuleSpec
    key: RuleKey
    alerts: dict[LabelKey, Alert] = field(default_factory=dict)
    labels_for: dict[LabelKey, dict[str, str]] = field(default_factory=dict)
    """Signal labels -> full alert labels (a cache; one entry per GPU at most)."""
    values: tuple[tuple[Mapping[str, str], float], ...] = ()
    last_evaluation: float | None = None
    duration_s: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class _Counter:
    read: Callable[[], float]
    previous: float | None = None


@dataclass(slots=True)
class _Tick:
    """What one evaluation computes once and every rule reuses."""

    now: float
    totals: dict[float, array] = field(default_factory=dict)
    histograms: dict[tuple[float, str], tuple[tuple[float, ...], list[float]]] = field(default_factory=dict)
    ratios: dict[tuple[str, float], tuple[float | None, float, float]] = field(default_factory=dict)


class RuleEngine:
    def __init__(
        self,
        ruleset: RuleSet,
        *,
        instance: str,
        external_labels: Mapping[str, str] = MappingProxyType({}),
        clock: Callable[[], float] = time.time,
        resolved_retention_s: float = 900.0,
    ) -> None:
        self.ruleset = ruleset
        self._instance = instance
        self._external = dict(external_labels)
        self._clock = clock
        self._retention = resolved_retention_s
        self._slos: dict[str, SloSpec] = {slo.name: slo for slo in ruleset.slos}
        self._rules = [_Rule(spec, (spec.name, tuple(sorted(spec.labels.items())))) for spec in ruleset.rules]
        self._windows_s = self._exchange_windows(ruleset)
        self._horizons = self._series_horizons(ruleset)
        self._layout = Layout.build(slo.bad_events for slo in ruleset.slos if slo.bad_events is not None)
        now = clock()
        self._windows = ExchangeWindows(self._windows_s, now, self._layout, history_slots=HISTORY_SLOTS)
        self._series = SeriesStore(self._horizons)
        self._readings: dict[str, Callable[[], float | None]] = {}
        self._counters: dict[str, _Counter] = {}
        self._problems = ProblemLog(logger)
        self._last_prune = now
        self._evaluations = 0
        self._evaluation_failures = 0
        self._last_duration = 0.0

    @staticmethod
    def _exchange_windows(ruleset: RuleSet) -> frozenset[float]:
        """Every window the exchange counters must answer for: exchange-signal rules and SLOs."""
        windows = set()
        for spec in ruleset.rules:
            condition = spec.condition
            if isinstance(condition, SignalCondition):
                signal = SIGNALS.get(condition.signal)
                if signal is not None and signal.source is Source.EXCHANGES:
                    windows.add(float(condition.window_s))
        for slo in ruleset.slos:
            windows.update(SLO_WINDOWS)
            windows.add(float(slo.period_s))
        return frozenset(windows)

    @staticmethod
    def _series_horizons(ruleset: RuleSet) -> dict[str, float]:
        """Signal -> how far back its points are kept: the longest window an aggregate or count reads."""
        horizons: dict[str, float] = {}
        for spec in ruleset.rules:
            condition = spec.condition
            if not isinstance(condition, SignalCondition):
                continue
            signal = SIGNALS.get(condition.signal)
            if signal is None or signal.source is Source.EXCHANGES:
                continue
            needs = condition.window_s if signal.shape is Shape.COUNT or condition.aggregate != "last" else 0.0
            horizons[signal.name] = max(horizons.get(signal.name, 0.0), float(needs))
        return horizons

    # --- observers -----------------------------------------------------------------------------

    def observe_exchange(self, exchange: Exchange) -> None:
        """Hot path: a few microseconds, no I/O."""
        self._windows.observe(exchange, self._clock())

    def observe_health(self, result: HealthResult) -> None:
        now = self._clock()
        up = 1.0 if result.state is HealthState.UP else 0.0 if result.state is HealthState.DOWN else math.nan
        self._series.set("upstream_up", (), _NO_LABELS, now, up)
        self._series.set("upstream_consecutive_failures", (), _NO_LABELS, now, float(result.consecutive_failures))

    def observe_gpu_sample(self, sample: GpuSample) -> None:
        now = self._clock()
        try:
            readings = gpu_readings(sample)
        except (TypeError, ValueError, OverflowError) as exc:
            # A field the driver garbled (a NaN bit mask) must not take the collector's callback down.
            self._problems.failed(f"gpu:{sample.uuid}", exc, "rules: unreadable GPU sample", gpu=sample.gpu)
            return
        key, labels = _gpu_identity(sample.gpu, sample.uuid, sample.gpu_instance_id)
        for signal, value in readings.items():
            self._series.set(signal, key, labels, now, value)

    def observe_gpu_event(self, event: GpuEvent) -> None:
        if event.kind != "xid":
            return
        key, labels = _gpu_identity(event.gpu or "", event.uuid or "", None)
        self._series.increase("gpu_xid_errors", key, labels, self._clock(), 1.0, stales=False)

    def add_reading(self, signal: str, read: Callable[[], float | None]) -> None:
        """A gauge read at each evaluation (None: unknown, no value)."""
        spec = SIGNALS.get(signal)
        if spec is None or spec.shape is not Shape.GAUGE or spec.per_gpu:
            expected = ", ".join(s.name for s in SIGNALS.values() if s.shape is Shape.GAUGE and not s.per_gpu)
            raise ValueError(f"add_reading: {signal!r} is not a gauge signal with one series; expected one of "
                             f"{expected}")  # fmt: skip
        self._readings[signal] = read

    def add_counter(self, signal: str, read: Callable[[], float]) -> None:
        """A cumulative counter read at each evaluation; the signal counts its increase (a decrease is a
        reset to 0, as Prometheus's increase() treats one). The first reading is the baseline."""
        spec = SIGNALS.get(signal)
        if spec is None or spec.shape is not Shape.COUNT or spec.source is not Source.AUDIT:
            expected = ", ".join(s.name for s in SIGNALS.values()
                                 if s.source is Source.AUDIT and s.shape is Shape.COUNT)  # fmt: skip
            raise ValueError(f"add_counter: {signal!r} is not a count signal read from a counter; expected one of "
                             f"{expected}")  # fmt: skip
        self._counters[signal] = _Counter(read)

    def _sample_sources(self, now: float) -> None:
        for signal, read in self._readings.items():
            if not self._series.wants(signal):
                continue
            value = self._read(signal, read)
            self._series.set(signal, (), _NO_LABELS, now, math.nan if value is None else value)
        for signal, counter in self._counters.items():
            if not self._series.wants(signal):
                continue
            value = self._read(signal, counter.read)
            if value is None or value != value:
                continue  # unread: the series goes stale rather than count a guess
            previous, counter.previous = counter.previous, value
            if previous is None:
                increase = 0.0
            elif value < previous:
                increase = value
            else:
                increase = value - previous
            self._series.increase(signal, (), _NO_LABELS, now, increase)

    def _read(self, signal: str, read: Callable[[], float | None]) -> float | None:
        """The source's value as a float, or None when it has none or fails (logged once per problem)."""
        return self._problems.read(signal, lambda: _as_float(read()), "rules: reading a signal failed", signal=signal)

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate(self, at: float | None = None) -> list[AlertTransition]:
        """One tick at `at` (default: clock()). A rule that fails is logged, counted and left as it was;
        the others run.

        The runner passes each tick's scheduled time, as Prometheus evaluates a group at its
        scheduled timestamps: ticks are then exactly one interval apart, and an alert fires at the
        first tick at or after active_at + for, not one tick later because of scheduling jitter."""
        started = time.perf_counter()
        now = self._clock() if at is None else at
        self._windows.advance(now)
        self._sample_sources(now)
        if not 0 <= now - self._last_prune < _PRUNE_EVERY_S:  # due, or the clock went back
            self._series.prune(now)
            self._last_prune = now
        tick = _Tick(now)
        transitions: list[AlertTransition] = []
        for rule in self._rules:
            rule_started = time.perf_counter()
            try:
                samples = self._samples(rule.spec.condition, tick)
                self._advance_alerts(rule, samples, now, transitions)
            except Exception as exc:
                self._evaluation_failures += 1
                problem = f"{exc.__class__.__name__}: {exc}"
                if rule.error != problem:
                    logger.error("rules: evaluating a rule failed", extra={"rule": rule.spec.name, "error": problem})
                rule.error = problem
            else:
                rule.error = None
            rule.last_evaluation = now
            rule.duration_s = time.perf_counter() - rule_started
        self._evaluations += 1
        self._last_duration = time.perf_counter() - started
        return transitions

    def _totals(self, window_s: float, tick: _Tick) -> array:
        totals = tick.totals.get(window_s)
        if totals is None:
            totals = tick.totals[window_s] = self._windows.totals(window_s, tick.now)
        return totals

    def _samples(self, condition: SignalCondition | BurnRateCondition,
                 tick: _Tick) -> list[tuple[Mapping[str, str], float, bool]]:  # fmt: skip
        """(signal labels, value, holds) per label set with a value."""
        if isinstance(condition, BurnRateCondition):
            return self._burn_samples(condition, tick)
        signal = SIGNALS.get(condition.signal)
        if signal is None:
            raise ValueError(f"unknown signal {condition.signal!r}")
        compare = _OPS.get(condition.op)
        if compare is None:
            raise ValueError(f"unknown op {condition.op!r}; expected one of {', '.join(_OPS)}")
        if signal.source is Source.EXCHANGES:
            value = self._exchange_value(condition, tick)
            values: list[tuple[Mapping[str, str], float]] = [] if value is None else [(_NO_LABELS, value)]
        else:
            values = self._series.values(condition.signal, condition.window_s, tick.now, condition.aggregate)
        threshold = condition.threshold
        if values and not self._enough_evidence(condition, tick):
            return [(labels, value, False) for labels, value in values]
        return [(labels, value, compare(value, threshold)) for labels, value in values]

    def _enough_evidence(self, condition: SignalCondition, tick: _Tick) -> bool:
        """Whether an error_ratio's window holds min_events requests and min_bad_events failed ones
        (other signals need none)."""
        if condition.signal != "error_ratio" or not (condition.min_events or condition.min_bad_events):
            return True
        totals = self._totals(condition.window_s, tick)
        layout = self._windows.layout
        return (totals[layout.requests] >= condition.min_events
                and totals[layout.errors[condition.error_class]] >= condition.min_bad_events)  # fmt: skip

    def _exchange_value(self, condition: SignalCondition, tick: _Tick) -> float | None:
        totals = self._totals(condition.window_s, tick)
        layout = self._windows.layout
        name = condition.signal
        if name == "error_ratio":
            requests = totals[layout.requests]
            return totals[layout.errors[condition.error_class]] / requests if requests else None
        if name in QUANTILE_SIGNALS:
            if condition.quantile is None:
                raise ValueError(f"{name} needs a quantile")
            if not 0 <= condition.quantile <= 1:
                raise ValueError(f"quantile {condition.quantile!r} is outside [0, 1]")
            histogram = QUANTILE_SIGNALS[name]
            prepared = tick.histograms.get((condition.window_s, histogram))
            if prepared is None:
                bounds, cumulative = layout.cumulative(totals, histogram)
                prepared = tick.histograms[(condition.window_s, histogram)] = (bounds, prepared_counts(cumulative))
            value = quantile_of_prepared(condition.quantile, *prepared)
            return None if value != value else value
        if name == "request_rate":
            return totals[layout.requests] / self._windows.span_s(condition.window_s, tick.now)
        if name == "rate_limit_rejections":
            return totals[layout.rate_limited]
        raise ValueError(f"signal {name!r} is not computed from exchanges")

    def _error_ratio(self, slo: SloSpec, window_s: float, tick: _Tick) -> tuple[float | None, float, float]:
        """(bad / total or None, bad, total) of an SLO over a window."""
        known = tick.ratios.get((slo.name, window_s))
        if known is None:
            bad, total = self._windows.layout.slo_counts(
                self._totals(window_s, tick), slo.sli, slo.latency_signal, slo.latency_threshold_s, slo.bad_events
            )
            known = tick.ratios[(slo.name, window_s)] = ((bad / total if total else None), bad, total)
        return known

    def _burn_samples(self, condition: BurnRateCondition, tick: _Tick) -> list[tuple[Mapping[str, str], float, bool]]:
        slo = self._slos.get(condition.slo)
        if slo is None:
            raise ValueError(f"unknown slo {condition.slo!r}")
        budget = slo.error_budget
        shown: float | None = None
        for pair in condition.windows:
            long_ratio = self._error_ratio(slo, pair.long_s, tick)[0]
            short_ratio, short_bad, short_total = self._error_ratio(slo, pair.short_s, tick)
            if shown is None and long_ratio is not None:
                shown = long_ratio / budget
            # Compared as the exported rule compares: ratio > factor x budget, and the short window
            # holds the minimum of evidence.
            if (long_ratio is not None and short_ratio is not None
                    and long_ratio > pair.factor * budget and short_ratio > pair.factor * budget
                    and short_total >= slo.min_events and short_bad >= slo.min_bad_events):  # fmt: skip
                return [(_NO_LABELS, long_ratio / budget, True)]
        return [] if shown is None else [(_NO_LABELS, shown, False)]

    def _alert_labels(self, rule: _Rule, signal_labels: Mapping[str, str]) -> tuple[LabelKey, dict[str, str]]:
        key = tuple(signal_labels.items())
        labels = rule.labels_for.get(key)
        if labels is None:
            merged = {**signal_labels, "instance": self._instance, **rule.spec.labels, "alertname": rule.spec.name}
            for name, value in self._external.items():
                if not merged.get(name):
                    merged[name] = value
            labels = rule.labels_for[key] = {name: value for name, value in sorted(merged.items()) if value}
        return tuple(labels.items()), labels

    def _advance_alerts(self, rule: _Rule, samples: list[tuple[Mapping[str, str], float, bool]], now: float,
                        transitions: list[AlertTransition]) -> None:  # fmt: skip
        """Prometheus's AlertingRule.Eval state machine for one rule at `now`."""
        spec = rule.spec
        rule.values = tuple((labels, value) for labels, value, _ in samples)
        if not rule.alerts and not any(holds for _, _, holds in samples):
            return  # the common case: nothing held, nothing to age
        held: set[LabelKey] = set()
        new: set[LabelKey] = set()
        for signal_labels, value, holds in samples:
            if not holds:
                continue
            key, labels = self._alert_labels(rule, signal_labels)
            annotations = {name: render_template(text, value, labels) for name, text in spec.annotations.items()}
            held.add(key)
            alert = rule.alerts.get(key)
            if alert is not None and alert.state is not AlertState.RESOLVED:
                alert.value = value
                alert.annotations = annotations
                alert.last_held_at = now
                alert.keep_firing_since = None
                continue
            rule.alerts[key] = Alert(name=spec.name, labels=labels, annotations=annotations, state=AlertState.PENDING,
                                     value=value, active_at=now, last_held_at=now)  # fmt: skip
            new.add(key)
        for key, alert in list(rule.alerts.items()):
            if key not in held:
                if alert.state is AlertState.PENDING:
                    del rule.alerts[key]
                elif alert.state is AlertState.FIRING:
                    if spec.keep_firing_for_s > 0:
                        if alert.keep_firing_since is None:
                            alert.keep_firing_since = now
                        if now - alert.keep_firing_since < spec.keep_firing_for_s:
                            continue
                    alert.state = AlertState.RESOLVED
                    alert.resolved_at = now
                    transitions.append(AlertTransition(alert.snapshot(), AlertState.FIRING, now))
                elif alert.resolved_at is None or now - alert.resolved_at > self._retention:
                    del rule.alerts[key]
                continue
            if alert.state is AlertState.PENDING and now - alert.active_at >= spec.for_s:
                alert.state = AlertState.FIRING
                alert.fired_at = now
                transitions.append(AlertTransition(alert.snapshot(), None if key in new else AlertState.PENDING, now))
            elif key in new:
                transitions.append(AlertTransition(alert.snapshot(), None, now))

    # --- reading the state ---------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        """Pending, firing and recently resolved alerts, as snapshots, in rule order then by labels."""
        return [rule.alerts[key].snapshot() for rule in self._rules for key in sorted(rule.alerts)]

    def rule_states(self) -> list[RuleState]:
        states = []
        for rule in self._rules:
            spec = rule.spec
            health = "unknown" if rule.last_evaluation is None else "err" if rule.error else "ok"
            active = sum(1 for alert in rule.alerts.values() if alert.state is not AlertState.RESOLVED)
            states.append(RuleState(
                name=spec.name, labels=MappingProxyType(dict(spec.labels)), origin=spec.origin,
                expression=describe(spec.condition, self._slo_of(spec.condition)), for_s=spec.for_s,
                keep_firing_for_s=spec.keep_firing_for_s,
                health=health, error=rule.error, last_evaluation=rule.last_evaluation,
                evaluation_duration_s=rule.duration_s, values=rule.values, active_alerts=active,
            ))  # fmt: skip
        return states

    def _slo_of(self, condition: SignalCondition | BurnRateCondition) -> SloSpec | None:
        return self._slos.get(condition.slo) if isinstance(condition, BurnRateCondition) else None

    def slo_status(self) -> list[SloStatus]:
        tick = _Tick(self._clock())
        statuses = []
        for slo in self.ruleset.slos:
            budget = slo.error_budget
            error_ratio, bad, total = self._error_ratio(slo, slo.period_s, tick)
            ratios = {window: self._error_ratio(slo, window, tick)[0] for window in SLO_WINDOWS}
            burn_rates = {window: None if ratio is None else ratio / budget for window, ratio in ratios.items()}
            ratios[slo.period_s] = error_ratio
            covered = min(slo.period_s, max(0.0, tick.now - self._windows.started_at))
            statuses.append(SloStatus(
                name=slo.name, sli=slo.sli, objective=slo.objective, period_s=slo.period_s, covered_s=covered,
                total=total, bad=bad, error_ratio=error_ratio,
                availability=None if error_ratio is None else 1.0 - error_ratio, error_budget=budget,
                budget_remaining=1.0 if error_ratio is None else 1.0 - error_ratio / budget,
                burn_rates=MappingProxyType(burn_rates), error_ratios=MappingProxyType(ratios),
                allowed_downtime_s=slo.allowed_downtime_s(slo.period_s),
                used_downtime_s=0.0 if error_ratio is None else error_ratio * covered,
            ))  # fmt: skip
        return statuses

    def recent_slots(self, count: int = HISTORY_SLOTS) -> list[SlotSummary]:
        """The last `count` closed 10-second slots (at most HISTORY_SLOTS), oldest first, leaving out
        those that ended before counting began. Read-only: O(count x row width), on demand."""
        windows = self._windows
        layout = windows.layout
        slot_s = float(windows.slot_s)
        started_at = windows.started_at
        summaries = []
        for slot_start, row in windows.recent_slots(min(count, HISTORY_SLOTS), self._clock()):
            end = slot_start + slot_s
            if end <= started_at:
                continue
            start = max(slot_start, started_at)
            if row is None:
                summaries.append(SlotSummary(start, end - start, 0.0, 0.0, 0.0, 0.0, 0.0, _NO_QUANTILES, _NO_QUANTILES))
                continue
            summaries.append(SlotSummary(
                start=start, duration_s=end - start, requests=row[layout.requests], errors=row[layout.errors["any"]],
                rate_limited=row[layout.rate_limited], input_tokens=row[layout.input_tokens],
                output_tokens=row[layout.output_tokens],
                request_duration_s=_slot_quantiles(layout.cumulative(row, "request_duration")),
                ttft_s=_slot_quantiles(layout.cumulative(row, "ttft")),
            ))  # fmt: skip
        return summaries

    @property
    def last_evaluation_duration_s(self) -> float:
        return self._last_duration

    @property
    def evaluations(self) -> int:
        return self._evaluations

    @property
    def evaluation_failures(self) -> int:
        """Rule evaluations that raised (one per rule per tick, as prometheus_rule_evaluation_failures_total)."""
        return self._evaluation_failures

    def memory_bytes(self) -> int:
        """The windows' rings and running sums (gauge deques are small and not counted)."""
        return self._windows.memory_bytes()

    # --- state across restarts -----------------------------------------------------------------

    def dump_state(self) -> dict[str, Any]:
        """JSON-able: the windows, gauge and count series, and every rule's alerts."""
        return encode_state(self.snapshot_state())

    def snapshot_state(self) -> dict[str, Any]:
        """`dump_state()`'s content with the windows' rings and the series' points copied raw, for
        the event loop: memory copies only (well under a millisecond for a 90-day SLO). `encode_state`
        compresses and encodes the copy, on a worker thread."""
        rules = []
        for rule in self._rules:
            if rule.alerts:
                rules.append({
                    "name": rule.key[0], "labels": dict(rule.key[1]),
                    "alerts": [_alert_record(rule.alerts[key]) for key in sorted(rule.alerts)],
                })  # fmt: skip
        return {
            "version": STATE_VERSION,
            "saved_at": self._clock(),
            "windows": self._windows.snapshot(),
            "series": self._series.snapshot(),
            "rules": rules,
        }

    def load_state(self, data: Mapping[str, Any]) -> None:
        """Resume from `dump_state()` output: windows continue (the error budget is not reset), alerts
        keep their state and times and are not announced again. What the current rule set no longer
        reads is dropped (logged at info). A pending alert's active_at moves forward by the downtime
        (see the module's docstring). Call before the first observation (it replaces the windows); on
        malformed data this raises ValueError and changes nothing."""
        if not data:
            return
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"rules state: version {version!r}, expected {STATE_VERSION}")
        now = self._clock()
        notes: list[str] = []
        windows = self._windows
        if data.get("windows") is not None:
            windows, window_notes = ExchangeWindows.restored(
                self._windows_s, data["windows"], now, self._layout, history_slots=HISTORY_SLOTS
            )
            notes.extend(window_notes)
        series = SeriesStore(self._horizons)
        notes.extend(series.restore(data.get("series") or []))
        by_key = {rule.key: rule for rule in self._rules}
        restored: dict[RuleKey, dict[LabelKey, Alert]] = {}
        try:
            saved_at = float(data.get("saved_at") or now)
        except (TypeError, ValueError):
            raise ValueError(f"rules state: saved_at: expected a time, got {data.get('saved_at')!r}") from None
        downtime = max(0.0, now - saved_at)
        for position, item in enumerate(data.get("rules") or []):
            try:
                static = tuple(sorted((str(k), str(v)) for k, v in dict(item["labels"]).items()))
                key: RuleKey = (str(item["name"]), static)
                alerts = [_alert_from_record(record) for record in item["alerts"]]
            except (KeyError, TypeError, ValueError) as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
                raise ValueError(f"rules state: rules[{position}]: unreadable ({problem})") from None
            if key not in by_key:
                notes.append(f"dropped {len(alerts)} alert(s) of rule {key[0]} {dict(key[1])}, "
                             f"no longer in the rule set")  # fmt: skip
                continue
            for_s = by_key[key].spec.for_s
            for alert in alerts:
                # Prometheus's RestoreForState: the downtime does not count toward `for`, unless
                # `for` had already elapsed when the state was saved (it would have fired next).
                if alert.state is AlertState.PENDING and saved_at - alert.active_at < for_s:
                    alert.active_at += downtime
            restored[key] = {tuple(alert.labels.items()): alert for alert in alerts}
        self._windows = windows
        self._series = series
        for rule in self._rules:
            rule.alerts = restored.get(rule.key, {})
        for note in notes:
            logger.info("rules state: %s", note)


def _gpu_identity(gpu: str, uuid: str, instance: str | None) -> tuple[SeriesKey, Mapping[str, str]]:
    """A GPU series' key and labels, as dcgm-exporter labels them (GPU_I_ID for MIG instances)."""
    if instance is None:
        return (gpu, uuid), {"gpu": gpu, "UUID": uuid}
    return (gpu, uuid, instance), {"gpu": gpu, "UUID": uuid, "GPU_I_ID": instance}


def _slot_quantiles(histogram: tuple[tuple[float, ...], list[float]]) -> Mapping[float, float | None]:
    bounds, cumulative = histogram
    if not cumulative[-1]:
        return _NO_QUANTILES
    counts = prepared_counts(cumulative)
    return {q: _finite(quantile_of_prepared(q, bounds, counts)) for q in HISTORY_QUANTILES}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def encode_state(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """`RuleEngine.snapshot_state()` as `dump_state()` returns it (JSON-able). Reads only the
    snapshot's own copies: run it on a worker thread while the engine goes on."""
    return {**snapshot, "windows": encode_windows(snapshot["windows"]), "series": encode_series(snapshot["series"])}


def _alert_record(alert: Alert) -> dict[str, Any]:
    return {
        "labels": dict(alert.labels), "annotations": dict(alert.annotations), "state": alert.state.value,
        "value": _finite(alert.value), "active_at": alert.active_at, "fired_at": alert.fired_at,
        "resolved_at": alert.resolved_at, "last_held_at": alert.last_held_at,
        "keep_firing_since": alert.keep_firing_since,
    }  # fmt: skip


def _alert_from_record(record: Mapping[str, Any]) -> Alert:
    def optional(name: str) -> float | None:
        value = record.get(name)
        return None if value is None else float(value)

    # Empty values are no labels (a state file written before they were dropped).
    labels = {str(k): str(v) for k, v in sorted(dict(record["labels"]).items()) if v is not None and str(v)}
    return Alert(
        name=labels.get("alertname", ""),
        labels=labels,
        annotations={str(k): str(v) for k, v in dict(record.get("annotations") or {}).items()},
        state=AlertState(record["state"]),
        value=math.nan if record.get("value") is None else float(record["value"]),
        active_at=float(record["active_at"]),
        fired_at=optional("fired_at"),
        resolved_at=optional("resolved_at"),
        last_held_at=float(record.get("last_held_at") or record["active_at"]),
        keep_firing_since=optional("keep_firing_since"),
    )


def _as_float(value: float | None) -> float | None:
    return None if value is None else float(value)
