"""The effective rule set as a Prometheus rule file, for fleets that evaluate rules centrally.

The exported rules read the series the sidecar serves on /metrics as Prometheus scrapes them
(the scrape adds `job` and `instance`), and give one result per scraped sidecar: every signal is
aggregated `by (job, instance)`, plus `gpu, UUID, GPU_I_ID` for per-GPU signals (a MIG instance
is its own GPU, as in the engine; GPU_I_ID is absent for a whole GPU). `job` is kept so that two
scrape jobs reaching the same address stay apart; it costs nothing when there is one.

Each signal's PromQL means what `sidecar.rules.signals` says it means, so an alert fires in
Prometheus when it would fire in the sidecar. Where PromQL needs care to say the same thing:

- ratios are 0, not absent, while no request failed (`errors or 0 * total`), and absent, not NaN,
  while the window holds no requests (`total > 0`); quantiles are absent without observations;
- bad requests (`signals.BadEvents`) are told apart by status and error type, each outcome by its
  error types (`signals.OUTCOME_ERROR_TYPES`), in label-matcher sets that no series matches twice,
  so their rates add up;
- the minimum of evidence an error_ratio rule or a burn-rate pair needs is `increase()` over the
  window (`and on (job, instance) ... >= N`), as the engine counts the window's requests;
- a count of events (`increase`) also sees a counter series born inside the window: the first XID
  of a GPU creates its series with value 1, which `increase` alone reads as no increase at all.
  Such a series counts in full, but only if the sidecar was already being scraped at the window's
  start (`sidecar_build_info offset W`), so that a newly scraped sidecar's old totals do not alert;
- throttle reasons are a bitmask and PromQL has no bitwise AND: `floor(x / bit) % 2` per bit.

SLOs are recorded as Sloth (https://sloth.dev) records them (`slo:sli_error:ratio_rate<W>`,
`slo:objective:ratio`, ... labelled `sloth_id`, `sloth_service`, `sloth_slo`), so Sloth's Grafana
dashboards work; the burn-rate alerts read those records.

Where the two still differ, by design or because PromQL cannot do better:

- `instance` is the scrape target's address here, the sidecar's `instance_id` in the engine;
- Prometheus samples what the engine counts exactly: `rate` and `increase` extrapolate to the
  window's edges, gauges are read at scrape and evaluation times, and a series unseen for 5m is
  gone (the engine has its own staleness);
- the SLO period's error ratio is, as Sloth computes it, the mean of the 5m ratios over the
  period, weighting every 5 minutes alike; the engine divides the period's bad requests by all of
  them. They agree while traffic is steady;
- a ratio's error series born inside its window (a first 502 since the start) is under-counted by
  its first value, as every `rate` and `increase` is, so the minimum of bad requests is reached a
  few failures later than in the engine; counts (XIDs, drops) do not have that blind spot;
- the objective is written with 12 significant digits (0.999, not 0.9990000000000001).

The output is deterministic (rule-set order, sorted labels, no timestamps or versions) so that the
committed `alerts/sidecar-rules.yml` can be compared with a fresh export.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import yaml
from prometheus_client.utils import floatToGoString

from sidecar.exchange import Outcome
from sidecar.rules.signals import (
    ERROR_CLASSES,
    OUTCOME_ERROR_TYPES,
    QUANTILE_SIGNALS,
    RATE_LIMITED,
    SIGNALS,
    THROTTLE_REASON_BITS,
    BadEvents,
    Shape,
    status_regex,
)
from sidecar.rules.spec import (
    PAGE_WINDOWS,
    SLO_WINDOWS,
    TICKET_WINDOWS,
    BurnRateCondition,
    RuleSet,
    RuleSpec,
    SignalCondition,
    SloSpec,
    format_value,
)

SERVICE = "inference-sidecar"
"""The `sloth_service` label of the SLO records."""

REGENERATE = "sidecar rules export --format prometheus > alerts/sidecar-rules.yml"

RECORDING_GROUP = "sidecar-slo-recording"
ALERTS_GROUP = "sidecar-alerts"
SLO_ALERTS_GROUP = "sidecar-slo-alerts"

INSTANCE_LABELS = ("job", "instance")
GPU_LABELS = ("gpu", "UUID", "GPU_I_ID")
"""dcgm-exporter's GPU identity; GPU_I_ID (a MIG instance) is empty, so absent, for a whole GPU."""
_SUBJECT_LABELS = frozenset(INSTANCE_LABELS + GPU_LABELS)

HISTOGRAMS: Mapping[str, str] = MappingProxyType({
    "request_duration": "http_server_request_duration_seconds",
    "ttft": "gen_ai_server_time_to_first_token_seconds",
    "tpot": "gen_ai_server_time_per_output_token_seconds",
})  # fmt: skip
"""Latency histogram (as `signals.LATENCY_BUCKETS` names it) -> its metric on /metrics."""

REQUESTS = HISTOGRAMS["request_duration"]
BUILD_INFO = "sidecar_build_info"
"""Served by every sidecar from its start: tells "scraped, nothing happened" from "not scraped"."""

_STATUS = "http_response_status_code"
_UPSTREAM = (Outcome.UPSTREAM_UNAVAILABLE, Outcome.UPSTREAM_TIMEOUT, Outcome.UPSTREAM_ERROR)
_LISTED = tuple(outcome for outcome in Outcome if outcome in OUTCOME_ERROR_TYPES)
"""The outcomes named by their error types (rejected: every other error type)."""


def bad_event_matchers(events: BadEvents) -> tuple[tuple[str, ...], ...]:
    """The label matchers of the request series `events` counts as bad: sets that no series matches
    twice (so their rates add up), one per way of being bad. For the shipped classification:

    - `error_type=~"upstream_.*"`: the upstream failed, whatever the status;
    - a 5xx answer the upstream gave (`error_type=""`), or one cut short by the sidecar (aborted);
    - a 5xx the sidecar answered itself, unless it refused the request for the request's sake
      (`http_response_status_code!~"501|505"`, and no error type of another outcome).
    """
    bad_outcomes = [o for o in Outcome if o in events.outcomes and o not in events.good_outcomes]
    sets = list(_outcome_matchers(bad_outcomes))
    by_status = [o for o in Outcome if o not in events.outcomes and o not in events.good_outcomes]
    if events.statuses:
        status = f"{_STATUS}=~{_quote(status_regex(events.statuses))}"
        answered = [o for o in by_status if o is not Outcome.REJECTED]
        sets += [(status, *matchers) for matchers in _outcome_matchers(answered)]
        if Outcome.REJECTED in by_status:
            excused = events.statuses & events.good_refusals
            if excused != events.statuses:
                refused = (status, f"{_STATUS}!~{_quote(status_regex(excused))}") if excused else (status,)
                sets.append((*refused, *_rejected_matchers()))
    return tuple(sets)


def _outcome_matchers(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    """Disjoint matcher sets on `error_type` selecting exactly the requests that ended with `outcomes`."""
    wanted = list(outcomes)
    sets: list[tuple[str, ...]] = []
    if Outcome.COMPLETED in wanted:
        sets.append(('error_type=""',))
    patterns = []
    if all(outcome in wanted for outcome in _UPSTREAM):
        patterns.append("upstream_.*")
        wanted = [o for o in wanted if o not in _UPSTREAM]
    elif Outcome.UPSTREAM_ERROR in wanted:
        # Every upstream_* type the other two upstream outcomes do not claim.
        others = "|".join(OUTCOME_ERROR_TYPES[o] for o in _UPSTREAM if o is not Outcome.UPSTREAM_ERROR)
        sets.append((f"error_type=~{_quote(OUTCOME_ERROR_TYPES[Outcome.UPSTREAM_ERROR])}",
                     f"error_type!~{_quote(others)}"))  # fmt: skip
    patterns += [OUTCOME_ERROR_TYPES[o] for o in _LISTED
                 if o in wanted and o not in (Outcome.COMPLETED, Outcome.UPSTREAM_ERROR)]  # fmt: skip
    if patterns:
        regex = "|".join(patterns)
        plain = re.fullmatch(r"[A-Za-z0-9_]+", regex) is not None
        sets.append((f"error_type={_quote(regex)}" if plain else f"error_type=~{_quote(regex)}",))
    if Outcome.REJECTED in wanted:
        sets.append(_rejected_matchers())
    return sets


def _rejected_matchers() -> tuple[str, ...]:
    """The sidecar's own refusals: an error type that no other outcome has."""
    listed = [o for o in _LISTED if o not in (Outcome.COMPLETED, *_UPSTREAM)]
    others = "|".join([OUTCOME_ERROR_TYPES[o] for o in listed] + ["upstream_.*"])
    return ('error_type!=""', f"error_type!~{_quote(others)}")

_MATCHER = re.compile(r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*')
_YAML_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")


def export_prometheus(
    ruleset: RuleSet, *, external_labels: Mapping[str, str] | None = None, selector: str = ""
) -> str:
    """A Prometheus rule file (YAML) equivalent to `ruleset`.

    `external_labels` go on every alert, as the in-process engine adds them (a rule's own labels
    win, as Prometheus lets alert labels win over its external labels; job, instance, gpu and
    UUID come from the series and are left out). `selector` (label matchers
    such as `job="sidecar"`) is added to every series the rules read: the DCGM and
    OpenTelemetry names are not the sidecar's alone, and a Prometheus that also scrapes
    dcgm-exporter or other servers should give each alert once.
    """
    problem = selector_problem(selector)
    if problem:
        raise ValueError(f"selector: {problem}")
    series = _Series(selector.strip())
    # The labels the expressions give (which sidecar, which GPU) say what an alert is about; a
    # static external label of the same name would merge every sidecar's alerts into one.
    extra = {name: value for name, value in (external_labels or {}).items() if name not in _SUBJECT_LABELS}
    groups: list[_Group] = []
    for slo in ruleset.slos:
        groups.append(_Group(f"{RECORDING_GROUP}-{slo.name}", _slo_records(slo, series)))
    signal_rules = [rule for rule in ruleset.rules if isinstance(rule.condition, SignalCondition)]
    burn_rules = [rule for rule in ruleset.rules if isinstance(rule.condition, BurnRateCondition)]
    slos = {slo.name: slo for slo in ruleset.slos}
    groups.append(_Group(ALERTS_GROUP, [_signal_alert(rule, series, extra) for rule in signal_rules]))
    groups.append(_Group(SLO_ALERTS_GROUP, [_burn_rate_alert(rule, slos, extra) for rule in burn_rules]))
    return _render([group for group in groups if group.rules])


def signal_expr(condition: SignalCondition, *, selector: str = "") -> str:
    """The PromQL for a condition's signal (without the comparison), one result per sidecar
    (and per GPU for per-GPU signals)."""
    return _signal(condition, _Series(selector.strip()))


def slo_error_ratio_expr(slo: SloSpec, window_s: float, *, selector: str = "") -> str:
    """The SLO's bad/total ratio over `window_s`, per sidecar (Sloth's `slo:sli_error:ratio_rate<W>`)."""
    series = _Series(selector.strip())
    window = prom_duration(window_s)
    if slo.sli == "availability":
        return _error_ratio(slo.bad_events or ERROR_CLASSES["any"], window, series)
    histogram = HISTOGRAMS[slo.latency_signal or "request_duration"]
    le = floatToGoString(slo.latency_threshold_s)
    by = _labels(INSTANCE_LABELS)
    total = f"sum by ({by}) (rate({series(histogram + '_count')}[{window}]))"
    good = f"sum by ({by}) (rate({series(histogram + '_bucket', f'le={_quote(le)}')}[{window}]))"
    return f"(\n  {total}\n  -\n  {good}\n)\n/\n({total} > 0)"


def prom_duration(seconds: float) -> str:
    """A Prometheus duration (`1d2h`, `1s500ms`): whole milliseconds, no decimals, as PromQL wants."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    text = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if millis >= size:
            text += f"{millis // size}{unit}"
            millis %= size
    return text


def selector_problem(selector: str) -> str | None:
    """Why `selector` is not a list of label matchers (`job="sidecar", env=~"prod.*"`), or None."""
    text = selector.strip()
    if not text:
        return None
    position = 0
    while True:
        match = _MATCHER.match(text, position)
        if match is None:
            return f'expected label matchers such as job="sidecar" (comma-separated), got {selector!r}'
        position = match.end()
        if position == len(text):
            return None
        if text[position] != ",":
            return f'expected label matchers such as job="sidecar" (comma-separated), got {selector!r}'
        position += 1


# --- signals ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Series:
    """Writes series selectors, each with the export's extra label matchers."""

    selector: str = ""

    def __call__(self, name: str, *matchers: str) -> str:
        parts = [*matchers, self.selector] if self.selector else list(matchers)
        return f"{name}{{{', '.join(parts)}}}" if parts else name


def _labels(names: Iterable[str]) -> str:
    return ", ".join(names)


def _signal(condition: SignalCondition, series: _Series) -> str:
    signal = SIGNALS[condition.signal]
    window = prom_duration(condition.window_s)
    name = signal.name
    if name == "request_rate":
        rate = f"sum by ({_labels(INSTANCE_LABELS)}) (rate({series(REQUESTS + '_count')}[{window}]))"
        return _or_zero_per_sidecar(rate, series)
    if name == "error_ratio":
        return _error_ratio(ERROR_CLASSES[condition.error_class], window, series)
    if signal.shape is Shape.QUANTILE:
        return _quantile(HISTOGRAMS[QUANTILE_SIGNALS[name]], condition.quantile or 0.5, window, series)
    if name == "rate_limit_rejections":
        rejected = series(REQUESTS + "_count", f"error_type={_quote(RATE_LIMITED)}")
        return _or_zero_per_sidecar(_count(rejected, INSTANCE_LABELS, window, series), series)
    if name == "gpu_xid_errors":
        return _count(series("DCGM_EXP_XID_ERRORS_TOTAL"), INSTANCE_LABELS + GPU_LABELS, window, series)
    if name == "audit_events_dropped":
        return _count(series("sidecar_audit_events_dropped_total"), INSTANCE_LABELS, window, series)
    if name == "audit_dead_letters":
        selected = series("sidecar_audit_events_delivered_total", 'result="dead_letter"')
        return _count(selected, INSTANCE_LABELS, window, series)
    return _gauge(name, condition.aggregate, window, series)


def _error_ratio(events: BadEvents, window: str, series: _Series) -> str:
    total = _requests("rate", window, series)
    return f"(\n  {_bad_requests('rate', events, window, series)}\n  or\n  0 * {total}\n)\n/\n({total} > 0)"


def _requests(function: str, window: str, series: _Series) -> str:
    """Every request over the window: `rate` or `increase`, per sidecar."""
    return f"sum by ({_labels(INSTANCE_LABELS)}) ({function}({series(REQUESTS + '_count')}[{window}]))"


def _bad_requests(function: str, events: BadEvents, window: str, series: _Series) -> str:
    """The requests `events` counts as bad over the window: `rate` or `increase`, per sidecar; absent
    while there are none."""
    by = _labels(INSTANCE_LABELS)
    parts = [f"{function}({series(REQUESTS + '_count', *matchers)}[{window}])"
             for matchers in bad_event_matchers(events)]  # fmt: skip
    if not parts:
        raise ValueError(f"counts no request as bad: {events.key}")
    return f"sum by ({by}) (\n    " + "\n    or\n    ".join(parts) + "\n  )"


def _error_ratio_evidence(condition: SignalCondition, series: _Series) -> str:
    """`and` clauses holding an error_ratio rule to its minimum of requests and of failed ones."""
    window = prom_duration(condition.window_s)
    by = _labels(INSTANCE_LABELS)
    clauses = []
    if condition.min_events:
        clauses.append(f"and on ({by})\n{_requests('increase', window, series)} >= {condition.min_events}")
    if condition.min_bad_events:
        bad = _bad_requests("increase", ERROR_CLASSES[condition.error_class], window, series).replace("\n  ", "\n")
        clauses.append(f"and on ({by})\n{bad} >= {condition.min_bad_events}")
    return "\n".join(clauses)


def _quantile(histogram: str, quantile: float, window: str, series: _Series) -> str:
    by = _labels(INSTANCE_LABELS)
    buckets = f"sum by ({by}, le) (rate({series(histogram + '_bucket')}[{window}]))"
    observed = f"sum by ({by}) (rate({series(histogram + '_count')}[{window}])) > 0"
    return f"histogram_quantile({_number(quantile)}, {buckets})\nand on ({by})\n({observed})"


def _count(selected: str, by: Sequence[str], window: str, series: _Series) -> str:
    """Events within the window: the increase of long-lived series, the whole value of series born
    inside it (see the module docstring)."""
    born = f"({selected} unless {selected} offset {window})"
    scraped = f"{series(BUILD_INFO)} offset {window}"
    return (
        f"sum by ({_labels(by)}) (\n"
        f"  (\n    {born}\n    and on ({_labels(INSTANCE_LABELS)})\n    {scraped}\n  )\n"
        f"  or\n"
        f"  increase({selected}[{window}])\n"
        f")"
    )


def _or_zero_per_sidecar(expr: str, series: _Series) -> str:
    """0 for a sidecar that has served nothing yet (its request series do not exist until then)."""
    by = _labels(INSTANCE_LABELS)
    return f"(\n{_indent(expr)}\n)\nor on ({by})\n0 * group by ({by}) ({series(BUILD_INFO)})"


@dataclass(frozen=True, slots=True)
class _Gauge:
    """A gauge signal: the labels it is kept by, and the series or expression it reads."""

    by: tuple[str, ...]
    metric: str | None = None
    """A gauge read as served; None for a derived one (`expr` set)."""
    expr: str = ""


def _gauges(series: _Series) -> dict[str, _Gauge]:
    gpu = INSTANCE_LABELS + GPU_LABELS
    used = series("DCGM_FI_DEV_FB_USED")
    free = series("DCGM_FI_DEV_FB_FREE")
    reasons = f"({series('DCGM_FI_DEV_CLOCKS_EVENT_REASONS')} or {series('DCGM_FI_DEV_CLOCK_THROTTLE_REASONS')})"
    bits = "\n  + ".join(f"floor({reasons} / {bit}) % 2" for bit in THROTTLE_REASON_BITS)
    up = series("sidecar_upstream_health", 'sidecar_upstream_health="up"')
    unknown = series("sidecar_upstream_health", 'sidecar_upstream_health="unknown"')
    return {
        "upstream_up": _Gauge(
            INSTANCE_LABELS, expr=f"{up}\nunless on ({_labels(INSTANCE_LABELS)})\n{unknown} == 1"
        ),
        "upstream_consecutive_failures": _Gauge(
            INSTANCE_LABELS, series("sidecar_upstream_health_consecutive_failures")
        ),
        "gpu_temperature": _Gauge(gpu, series("DCGM_FI_DEV_GPU_TEMP")),
        "gpu_memory_used_percent": _Gauge(gpu, expr=f"{used}\n/\n(({used} + {free}) > 0)\n* 100"),
        "gpu_power_watts": _Gauge(gpu, series("DCGM_FI_DEV_POWER_USAGE")),
        "gpu_throttled": _Gauge(gpu, expr=f"clamp_max(\n  {bits},\n  1\n)"),
        "gpu_lost": _Gauge(gpu, series("sidecar_gpu_state", 'state="lost"')),
        "audit_spool_fill_ratio": _Gauge(
            INSTANCE_LABELS, expr=f"{series('sidecar_audit_spool_bytes')} / {series('sidecar_audit_spool_limit_bytes')}"
        ),
        "audit_sink_up": _Gauge(INSTANCE_LABELS, series("sidecar_audit_sink_up")),
        # The sidecar serves the current time when nothing waits; a clock ahead of Prometheus's
        # would make the difference negative.
        "audit_delivery_lag_seconds": _Gauge(
            INSTANCE_LABELS, expr=f"clamp_min(time() - {series('sidecar_audit_oldest_undelivered_timestamp_seconds')}, 0)"
        ),
    }


def _gauge(name: str, aggregate: str, window: str, series: _Series) -> str:
    """The newest reading (`last`), or its max/min/avg over the window: over the raw samples for a
    gauge read as served, over the derived value evaluated at each rule evaluation otherwise."""
    gauge = _gauges(series)[name]
    by = _labels(gauge.by)
    if gauge.metric is not None:
        if aggregate == "last":
            return f"max by ({by}) ({gauge.metric})"
        return f"{aggregate} by ({by}) ({aggregate}_over_time({gauge.metric}[{window}]))"
    last = f"max by ({by}) (\n{_indent(gauge.expr)}\n)"
    if aggregate == "last":
        return last
    return f"{aggregate}_over_time(\n{_indent(last)}\n[{window}:])"


# --- SLOs ------------------------------------------------------------------------------------------


def sloth_id(slo: SloSpec) -> str:
    return f"{SERVICE}-{slo.name}"


def _sloth_labels(slo: SloSpec) -> dict[str, str]:
    return {"sloth_id": sloth_id(slo), "sloth_service": SERVICE, "sloth_slo": slo.name}


def _sloth_selector(slo: SloSpec) -> str:
    return ", ".join(f"{name}={_quote(value)}" for name, value in _sloth_labels(slo).items())


def sli_record_name(window_s: float) -> str:
    return f"slo:sli_error:ratio_rate{prom_duration(window_s)}"


def events_record_name(window_s: float) -> str:
    """Requests (latency SLOs: observations) over the window, for the minimum of evidence."""
    return f"slo:sli_total:increase{prom_duration(window_s)}"


def bad_events_record_name(window_s: float) -> str:
    """Bad requests over the window, for the minimum of evidence."""
    return f"slo:sli_error:increase{prom_duration(window_s)}"


SHORT_WINDOWS = tuple(sorted({pair.short_s for pair in PAGE_WINDOWS + TICKET_WINDOWS}))
"""The burn-rate pairs' short windows, where the minimum of evidence is counted."""


def slo_event_counts_expr(slo: SloSpec, window_s: float, *, selector: str = "") -> tuple[str, str]:
    """(requests, bad requests) of the SLO over `window_s`, per sidecar; bad is 0, not absent, while
    there are requests and none is bad."""
    series = _Series(selector.strip())
    window = prom_duration(window_s)
    by = _labels(INSTANCE_LABELS)
    if slo.sli == "availability":
        total = _requests("increase", window, series)
        bad = _bad_requests("increase", slo.bad_events or ERROR_CLASSES["any"], window, series)
        return total, f"(\n  {bad}\n  or\n  0 * {total}\n)"
    histogram = HISTOGRAMS[slo.latency_signal or "request_duration"]
    le = floatToGoString(slo.latency_threshold_s)
    total = f"sum by ({by}) (increase({series(histogram + '_count')}[{window}]))"
    good = f"sum by ({by}) (increase({series(histogram + '_bucket', f'le={_quote(le)}')}[{window}]))"
    return total, f"{total}\n-\n{good}"


def _slo_records(slo: SloSpec, series: _Series) -> list[_Rule]:
    """Sloth's SLI and metadata records for one SLO, every one kept per sidecar."""
    labels = _sloth_labels(slo)
    selector = _sloth_selector(slo)
    if slo.sli == "latency":
        bad = f"{slo.latency_signal} over {format_value(slo.latency_threshold_s or 0)}s"
    else:
        bad = "failures of the service"
    rules: list[_Rule] = []
    for window_s in SLO_WINDOWS:
        window = prom_duration(window_s)
        expr = slo_error_ratio_expr(slo, window_s, selector=series.selector)
        comment = f"SLO {slo.name}: share of bad requests ({bad}) over {window}"
        rules.append(_Rule("record", sli_record_name(window_s), expr, labels={**labels, "sloth_window": window},
                           comment=comment))  # fmt: skip
    for window_s in SHORT_WINDOWS if slo.min_events or slo.min_bad_events else ():
        window = prom_duration(window_s)
        total, bad = slo_event_counts_expr(slo, window_s, selector=series.selector)
        for name, expr, what in ((events_record_name(window_s), total, "requests"),
                                 (bad_events_record_name(window_s), bad, "bad requests")):  # fmt: skip
            rules.append(_Rule("record", name, expr, labels={**labels, "sloth_window": window},
                               comment=f"SLO {slo.name}: {what} over {window} (the minimum of evidence)"))  # fmt: skip
    period = prom_duration(slo.period_s)
    if slo.period_s not in SLO_WINDOWS:  # a 1d or 3d period already has its ratio, read directly
        five_minutes = f"{sli_record_name(300.0)}{{{selector}}}[{period}]"
        rules.append(_Rule(
            "record", sli_record_name(slo.period_s),
            f"sum_over_time({five_minutes})\n/ ignoring (sloth_window)\ncount_over_time({five_minutes})",
            labels={**labels, "sloth_window": period},
            comment=f"SLO {slo.name}: over the {period} period, the mean of the 5m ratio (as Sloth computes it)",
        ))  # fmt: skip

    def burn_rate(window_s: float) -> str:
        return (
            f"{sli_record_name(window_s)}{{{selector}}}\n"
            f"/ on (sloth_id, sloth_slo, sloth_service) group_left\n"
            f"slo:error_budget:ratio{{{selector}}}"
        )

    objective = _number(slo.objective)
    remaining = f"1 - slo:period_burn_rate:ratio{{{selector}}}"
    info_labels = {**labels, "sloth_objective": _number(slo.objective * 100)}
    rules += [
        _Rule("record", "slo:objective:ratio", f"vector({objective})", labels=labels),
        _Rule("record", "slo:error_budget:ratio", f"vector(1 - {objective})", labels=labels),
        _Rule("record", "slo:time_period:days", f"vector({_number(slo.period_s / 86400)})", labels=labels),
        _Rule("record", "slo:current_burn_rate:ratio", burn_rate(300.0), labels=labels),
        _Rule("record", "slo:period_burn_rate:ratio", burn_rate(slo.period_s), labels=labels),
        _Rule("record", "slo:period_error_budget_remaining:ratio", remaining, labels=labels),
        _Rule("record", "sloth_slo_info", "vector(1)", labels=info_labels),
    ]
    return rules


def burn_rate_expr(slo: SloSpec, condition: BurnRateCondition) -> str:
    """Any window pair burning: error ratio over long and over short both above factor x budget
    (compared as the engine compares), with the short window holding the SLO's minimum of requests
    and of bad ones. The value is the long window's burn rate, which the annotations print, and
    `sloth_window` is dropped so that the alert keeps one label set whichever pair holds."""
    selector = _sloth_selector(slo)
    budget = f"(1 - {_number(slo.objective)})"
    pairs = []
    for window in condition.windows:
        limit = f"({_number(window.factor)} * {budget})"
        clauses = [
            f"({sli_record_name(window.long_s)}{{{selector}}} > {limit}) / {budget}",
            f"{sli_record_name(window.short_s)}{{{selector}}} > {limit}",
        ]
        if slo.min_events:
            clauses.append(f"{events_record_name(window.short_s)}{{{selector}}} >= {slo.min_events}")
        if slo.min_bad_events:
            clauses.append(f"{bad_events_record_name(window.short_s)}{{{selector}}} >= {slo.min_bad_events}")
        pairs.append("  (\n    " + "\n    and ignoring (sloth_window)\n    ".join(clauses) + "\n  )")
    return "max without (sloth_window) (\n" + "\n  or ignoring (sloth_window)\n".join(pairs) + "\n)"


# --- alerts ----------------------------------------------------------------------------------------


def _signal_alert(rule: RuleSpec, series: _Series, external_labels: Mapping[str, str]) -> _Rule:
    condition = rule.condition
    assert isinstance(condition, SignalCondition)
    signal = SIGNALS[condition.signal]
    value = _signal(condition, series)
    comparison = f"{condition.op} {format_value(condition.threshold)}"
    expr = f"{value} {comparison}" if "\n" not in value else f"(\n{_indent(value)}\n)\n{comparison}"
    if condition.signal == "error_ratio" and (condition.min_events or condition.min_bad_events):
        expr += "\n" + _error_ratio_evidence(condition, series)
    return _Rule(
        "alert", rule.name, expr, for_s=rule.for_s, keep_firing_for_s=rule.keep_firing_for_s,
        labels={**external_labels, **rule.labels}, annotations=dict(rule.annotations),
        comment=f"{_describe_signal(condition)}: {signal.description}",
    )  # fmt: skip


def _burn_rate_alert(rule: RuleSpec, slos: Mapping[str, SloSpec], external_labels: Mapping[str, str]) -> _Rule:
    condition = rule.condition
    assert isinstance(condition, BurnRateCondition)
    slo = slos[condition.slo]
    windows = ", or ".join(
        f"{_number(w.factor)}x over {prom_duration(w.long_s)} and {prom_duration(w.short_s)}" for w in condition.windows
    )
    return _Rule(
        "alert", rule.name, burn_rate_expr(slo, condition), for_s=rule.for_s,
        keep_firing_for_s=rule.keep_firing_for_s, labels={**external_labels, **rule.labels},
        annotations=dict(rule.annotations),
        comment=f"SLO {slo.name} ({rule.labels.get('severity', '')}): error budget burning {windows}",
    )  # fmt: skip


def _describe_signal(condition: SignalCondition) -> str:
    signal = SIGNALS[condition.signal]
    window = prom_duration(condition.window_s)
    if signal.shape is Shape.QUANTILE:
        text = f"p{_number((condition.quantile or 0) * 100)} of {QUANTILE_SIGNALS[signal.name]} over {window}"
    elif signal.shape is Shape.RATIO:
        text = f"{signal.name} ({condition.error_class}) over {window}"
    elif signal.shape is Shape.GAUGE:
        text = signal.name if condition.aggregate == "last" else f"{condition.aggregate} of {signal.name} over {window}"
    elif signal.shape is Shape.COUNT:
        text = f"{signal.name} in {window}"
    else:
        text = f"{signal.name} over {window}"
    return text + " per GPU" if signal.per_gpu else text


# --- YAML ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    """record or alert."""
    name: str
    expr: str
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    comment: str = ""


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    rules: list[_Rule]


def _render(groups: Sequence[_Group]) -> str:
    lines = [
        "# Prometheus rules for inference-sidecar, generated from its rule spec (the shipped defaults",
        "# merged with the `rules` section of the config) by `sidecar rules export --format prometheus`.",
        "# DO NOT EDIT. Regenerate the shipped file with:",
        f"#   {REGENERATE}",
        "# The rules read the sidecar's /metrics series as Prometheus scrapes them and give one result per",
        "# sidecar (job, instance), and per GPU (gpu, UUID, GPU_I_ID) for GPU signals. SLO records follow",
        "# Sloth's conventions (https://sloth.dev).",
        "groups:",
    ]
    for group in groups:
        lines.append(f"  - name: {_scalar(group.name)}")
        lines.append("    rules:")
        for rule in group.rules:
            if rule.comment:
                lines.append(f"      # {rule.comment}")
            lines.append(f"      - {rule.kind}: {rule.name}")
            lines.append("        expr: |-")
            lines.extend(f"          {line}".rstrip() for line in rule.expr.splitlines())
            if rule.for_s:
                lines.append(f"        for: {prom_duration(rule.for_s)}")
            if rule.keep_firing_for_s:
                lines.append(f"        keep_firing_for: {prom_duration(rule.keep_firing_for_s)}")
            for key, mapping in (("labels", dict(sorted(rule.labels.items()))), ("annotations", rule.annotations)):
                if mapping:
                    lines.append(f"        {key}:")
                    lines.extend(f"          {name}: {_scalar(value)}" for name, value in mapping.items())
    return "\n".join(lines) + "\n"


def _scalar(text: str) -> str:
    """A YAML scalar that reads back as the string `text`: plain where that is safe, else
    double-quoted (JSON's escapes are YAML's)."""
    if _YAML_PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    # Line and paragraph separators are line breaks to YAML, not to JSON.
    return quoted.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


def _quote(value: str) -> str:
    """A PromQL string literal."""
    return json.dumps(value)


def _number(value: float) -> str:
    """A readable PromQL number: 12 significant digits, so 99.9 / 100 prints as 0.999."""
    return format_value(float(f"{value:.12g}"))


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
