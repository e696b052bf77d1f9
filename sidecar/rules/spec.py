"""The effective rule set: shipped defaults merged with the config by name, SLOs expanded into
burn-rate alerts, annotation templates checked. Both evaluators (the in-process engine and the
Prometheus export) read this and nothing else.

SLO alerts follow the Google SRE Workbook's multiwindow, multi-burn-rate scheme (chapter
"Alerting on SLOs"): a burn rate is the error ratio over a window divided by the error budget
(1 - objective); an alert needs both a long window (the trend) and a short one (still happening,
so it resolves soon after the burn stops):

| severity | long window | short window | burn rate | budget spent when it fires |
|---|---|---|---|---|
| page | 1h | 5m | 14.4 | 2% of 30 days |
| page | 6h | 30m | 6 | 5% |
| ticket | 1d | 2h | 3 | 10% |
| ticket | 3d | 6h | 1 | 10% |

The windows are the workbook's for a 30-day period and are kept for other periods too (as Sloth
does), so a burn rate means the same thing whatever the period.

A burn rate over a handful of requests is noise: one failure among the first requests after a
start is a 1000x burn of a 99.9 % budget (the workbook's "low-traffic services"). So a pair also
needs its short window to hold `min_events` requests and `min_bad_events` bad ones, and an
error_ratio rule the same of its own window; docs/rules.md gives the defaults and the reasoning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from sidecar.config import AlertRuleConfig, RulesConfig, SloConfig, format_duration
from sidecar.rules.signals import QUANTILE_SIGNALS, SIGNALS, BadEvents, Shape, Source
from sidecar.rules.windows import TIER_REACH_S, TIER_SLOTS_S


class SpecError(ValueError):
    """Rules that cannot be evaluated; the message names the rule and the key."""


@dataclass(frozen=True, slots=True)
class BurnWindow:
    long_s: float
    short_s: float
    factor: float


PAGE_WINDOWS = (BurnWindow(3600.0, 300.0, 14.4), BurnWindow(21600.0, 1800.0, 6.0))
TICKET_WINDOWS = (BurnWindow(86400.0, 7200.0, 3.0), BurnWindow(259200.0, 21600.0, 1.0))
SLO_WINDOWS = (300.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 259200.0)
"""Every window a burn rate is computed over (the SLO's period comes on top)."""


@dataclass(frozen=True, slots=True)
class SloSpec:
    name: str
    sli: str
    """availability or latency."""
    objective: float
    """As a ratio: 0.999 for 99.9 %."""
    period_s: float
    latency_signal: str | None = None
    """request_duration or ttft, for latency SLOs."""
    latency_threshold_s: float | None = None
    page: bool = True
    ticket: bool = True
    bad_events: BadEvents | None = None
    """For availability SLOs: which requests are bad."""
    min_events: int = 0
    """Requests (latency: observations) a burn-rate pair's short window must hold before it can fire."""
    min_bad_events: int = 0
    """Bad requests a burn-rate pair's short window must hold before it can fire."""

    @property
    def error_budget(self) -> float:
        return 1.0 - self.objective

    def allowed_downtime_s(self, span_s: float) -> float:
        """Time the objective allows to be bad over `span_s` (99.99 % of a year: 52.6 minutes)."""
        return self.error_budget * span_s


@dataclass(frozen=True, slots=True)
class SignalCondition:
    """`<signal> over <window> <op> <threshold>`, one value per GPU for per-GPU signals."""

    signal: str
    window_s: float
    op: str
    threshold: float
    quantile: float | None = None
    error_class: str = "any"
    aggregate: str = "last"
    min_events: int = 0
    """For error_ratio: requests the window must hold before the condition can hold."""
    min_bad_events: int = 0
    """For error_ratio: failed requests (of error_class) the window must hold before it can hold."""


@dataclass(frozen=True, slots=True)
class BurnRateCondition:
    """Any of `windows` burning: error ratio over long and over short both above factor x budget."""

    slo: str
    windows: tuple[BurnWindow, ...]


@dataclass(frozen=True, slots=True)
class RuleSpec:
    name: str
    """alertname."""
    condition: SignalCondition | BurnRateCondition
    for_s: float
    keep_firing_for_s: float
    labels: Mapping[str, str]
    """Static labels, severity included (alertname and instance are added by the evaluator)."""
    annotations: Mapping[str, str]
    """Templates: render with `render_template`."""
    origin: str
    """default, config, or slo:<name>."""


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[RuleSpec, ...]
    slos: tuple[SloSpec, ...]
    windows_s: frozenset[float] = field(default=frozenset())
    """Every window any rule or SLO reads (the evaluator keeps exactly these)."""


# --- defaults ------------------------------------------------------------------------------------


def default_rules() -> list[AlertRuleConfig]:
    """The rules most SREs ask for first; each can be replaced or switched off by name."""

    def rule(**fields: object) -> AlertRuleConfig:
        return AlertRuleConfig.model_validate(fields)

    return [
        rule(name="SidecarHighLatencyP99", signal="request_duration_quantile", quantile=0.99, window="5m",
             op=">", threshold=0.5, **{"for": "2m"}, severity="warning",
             annotations={"summary": "P99 request latency is {{ $value | humanizeDuration }} (over 500ms for 2m)",
                          "description": "99% of requests over the last 5 minutes took up to "
                                         "{{ $value | humanizeDuration }}."}),
        rule(name="SidecarHighErrorRate", signal="error_ratio", window="5m", op=">", threshold=0.05,
             **{"for": "2m"}, severity="critical",
             annotations={"summary": "{{ $value | humanizePercentage }} of requests are failing (over 5% for 2m)",
                          "description": "5xx answers and upstream failures over the last 5 minutes (the sidecar's "
                                         "refusals of bad requests do not count)."}),
        rule(name="SidecarUpstreamDown", signal="upstream_consecutive_failures", op=">=", threshold=3,
             severity="critical",
             annotations={"summary": "The model server failed {{ $value }} health checks in a row"}),
        rule(name="GpuTemperatureHigh", signal="gpu_temperature", op=">", threshold=85, **{"for": "1m"},
             severity="warning",
             annotations={"summary": "GPU {{ $labels.gpu }} is at {{ $value }} C (over 85 C for 1m)"}),
        rule(name="GpuMemoryNearlyFull", signal="gpu_memory_used_percent", op=">", threshold=95,
             **{"for": "5m"}, severity="warning",
             annotations={"summary": "GPU {{ $labels.gpu }} memory is {{ $value | printf \"%.1f\" }}% used"}),
        rule(name="GpuXidError", signal="gpu_xid_errors", window="5m", op=">", threshold=0, severity="critical",
             annotations={"summary": "GPU {{ $labels.gpu }} reported {{ $value }} XID error(s) in 5m",
                          "description": "See DCGM_FI_DEV_XID_ERRORS for the code; XID 79 means the GPU fell "
                                         "off the bus."}),
        rule(name="GpuLost", signal="gpu_lost", op=">", threshold=0, severity="critical",
             annotations={"summary": "GPU {{ $labels.gpu }} ({{ $labels.UUID }}) is lost"}),
        rule(name="GpuThrottled", signal="gpu_throttled", op=">", threshold=0, **{"for": "5m"}, severity="warning",
             annotations={"summary": "GPU {{ $labels.gpu }} clocks held down (thermal, slowdown or power brake)"}),
        rule(name="AuditSinkDown", signal="audit_sink_up", op="<", threshold=1, **{"for": "5m"},
             severity="critical",
             annotations={"summary": "Audit records are not reaching the sink (5m); they wait in the spool",
                          "description": "None stored, whatever the sink answers; sidecar_audit_sink_retries_total "
                                         "says how it refuses (rejected: 429, server_error, connection)."}),
        rule(name="AuditDeliveryLagging", signal="audit_delivery_lag_seconds", op=">", threshold=300,
             **{"for": "2m"}, severity="warning",
             annotations={"summary": "The oldest undelivered audit record has waited "
                                     "{{ $value | humanizeDuration }} (over 5m)",
                          "description": "Audit records reach the sink slower than they are written, or not at "
                                         "all; they wait in the spool until it fills."}),
        rule(name="AuditSpoolFilling", signal="audit_spool_fill_ratio", op=">", threshold=0.8, **{"for": "5m"},
             severity="warning",
             annotations={"summary": "Audit spool {{ $value | humanizePercentage }} full"}),
        rule(name="AuditEventsDropped", signal="audit_events_dropped", window="5m", op=">", threshold=0,
             severity="critical",
             annotations={"summary": "{{ $value }} audit events dropped in 5m (spool full, fail_open)"}),
    ]  # fmt: skip


def default_slos() -> list[SloConfig]:
    return [SloConfig(name="availability", sli="availability", objective=99.9)]


# --- the effective set ---------------------------------------------------------------------------


def effective_rules(config: RulesConfig) -> RuleSet:
    """The rule set `config` asks for; raises SpecError naming the rule and key."""
    alerts = _merged(default_rules() if config.defaults else [], config.alerts)
    slo_configs = _merged(default_slos() if config.defaults else [], config.slos)
    defaults = {rule.name for rule in default_rules()} if config.defaults else set()
    configured = {rule.name for rule in config.alerts}
    rules: list[RuleSpec] = []
    for alert in alerts:
        origin = "config" if alert.name in configured or alert.name not in defaults else "default"
        rules.append(_rule_from_config(alert, origin))
    slos = tuple(_slo_spec(slo) for slo in slo_configs)
    for slo in slos:
        rules.extend(burn_rate_rules(slo))
    names = [rule.name for rule in rules if not rule.origin.startswith("slo:")]
    for slo in slos:
        clash = slo_alert_name(slo.name)
        if clash in names:
            raise SpecError(f"rules.alerts: {clash!r} is the name of slo {slo.name!r}'s burn-rate alert")
    windows = {rule.condition.window_s for rule in rules if isinstance(rule.condition, SignalCondition)}
    for slo in slos:
        windows.update(SLO_WINDOWS)
        windows.add(slo.period_s)
    return RuleSet(rules=tuple(rules), slos=slos, windows_s=frozenset(windows))


def _merged(defaults: Sequence[AlertRuleConfig | SloConfig], configured: Sequence[AlertRuleConfig | SloConfig]):
    by_name = {item.name: item for item in defaults}
    for item in configured:
        by_name[item.name] = item
    return [item for item in by_name.values() if item.enabled]


def _rule_from_config(alert: AlertRuleConfig, origin: str) -> RuleSpec:
    signal = SIGNALS[alert.signal]
    if alert.aggregate != "last" and signal.shape is not Shape.GAUGE:
        raise SpecError(f"rules.alerts {alert.name!r}: aggregate applies to gauge signals, not {alert.signal}")
    if signal.shape is Shape.GAUGE and alert.aggregate != "last" and alert.window > 3600:
        raise SpecError(f"rules.alerts {alert.name!r}: window: gauges are aggregated over at most 1h, "
                        f"got {format_duration(alert.window)}")  # fmt: skip
    if signal.source is Source.EXCHANGES:
        # Request windows are built of slots; a window that is not a whole number of the serving
        # tier's slots would be evaluated over a different span than its exported PromQL twin.
        tier = next(i for i, reach in enumerate(TIER_REACH_S) if alert.window <= reach)
        slot = TIER_SLOTS_S[tier]
        if alert.window < TIER_SLOTS_S[0] or abs(alert.window / slot - round(alert.window / slot)) > 1e-9:
            raise SpecError(f"rules.alerts {alert.name!r}: window: expected a multiple of {format_duration(slot)} "
                            f"(windows up to {format_duration(TIER_REACH_S[tier])} are kept in "
                            f"{format_duration(slot)} slots), got {format_duration(alert.window)}")  # fmt: skip
    for key, text in alert.annotations.items():
        problem = template_problem(text)
        if problem:
            raise SpecError(f"rules.alerts {alert.name!r}: annotations.{key}: {problem}")
    ratio = signal.shape is Shape.RATIO
    condition = SignalCondition(
        signal=alert.signal, window_s=alert.window, op=alert.op, threshold=alert.threshold,
        quantile=alert.quantile, error_class=alert.error_class, aggregate=alert.aggregate,
        min_events=alert.min_events if ratio else 0, min_bad_events=alert.min_bad_events if ratio else 0,
    )  # fmt: skip
    labels = {**alert.labels, "severity": alert.severity}
    return RuleSpec(alert.name, condition, alert.for_, alert.keep_firing_for, MappingProxyType(labels),
                    MappingProxyType(dict(alert.annotations)), origin)  # fmt: skip


def _slo_spec(slo: SloConfig) -> SloSpec:
    latency = slo.sli == "latency"
    bad_events = None if latency else BadEvents.build(
        statuses=slo.bad_statuses, outcomes=slo.bad_outcomes, good_refusals=slo.good_refusals,
        good_outcomes=slo.good_outcomes,
    )  # fmt: skip
    return SloSpec(
        # Rounded: 99.9 / 100 is 0.9990000000000001, and PromQL writes 0.999.
        name=slo.name, sli=slo.sli, objective=round(slo.objective / 100.0, 12), period_s=slo.period,
        latency_signal=slo.latency_signal if latency else None,
        latency_threshold_s=slo.latency_threshold if latency else None, page=slo.page, ticket=slo.ticket,
        bad_events=bad_events, min_events=slo.min_events, min_bad_events=slo.min_bad_events,
    )  # fmt: skip


def slo_alert_name(slo: str) -> str:
    """`availability` -> `SloAvailabilityErrorBudgetBurn`."""
    return "Slo" + "".join(part.capitalize() for part in re.split(r"[-_]", slo)) + "ErrorBudgetBurn"


def burn_rate_rules(slo: SloSpec) -> list[RuleSpec]:
    """The page and ticket alerts of one SLO."""
    what = (
        "availability" if slo.sli == "availability"
        else f"{slo.latency_signal} within {format_duration(slo.latency_threshold_s or 0)}"
    )  # fmt: skip
    objective = f"{slo.objective * 100:g}%"
    rules = []
    for severity, windows, wanted in (("page", PAGE_WINDOWS, slo.page), ("ticket", TICKET_WINDOWS, slo.ticket)):
        if not wanted:
            continue
        labels = {"severity": severity, "slo": slo.name, "sloth_slo": slo.name}
        annotations = {
            "summary": f"SLO {slo.name} ({what}, {objective}) is burning its error budget "
                       f"{{{{ $value | printf \"%.1f\" }}}}x too fast",
            "description": f"Error budget burn rate over the long window is {{{{ $value | printf \"%.2f\" }}}} "
                           f"(1 spends the whole {format_duration(slo.period_s)} budget in "
                           f"{format_duration(slo.period_s)}).",
        }  # fmt: skip
        rules.append(RuleSpec(slo_alert_name(slo.name), BurnRateCondition(slo.name, windows), 0.0, 0.0,
                              MappingProxyType(labels), MappingProxyType(annotations), f"slo:{slo.name}"))  # fmt: skip
    return rules


# --- annotation templates ------------------------------------------------------------------------
# Annotations are Prometheus (Go) templates, so the exported rules carry them unchanged. The engine
# renders the subset below; anything else is refused at load time rather than sent half-rendered.

_TEMPLATE = re.compile(r"{{-?\s*(.*?)\s*-?}}")
_VALUE = re.compile(r"^\$value(?:\s*\|\s*(humanize|humanizePercentage|humanizeDuration)|\s*\|\s*printf\s+\"([^\"]*)\")?$")
_PRINTF = re.compile(r"^printf\s+\"([^\"]*)\"\s+\$value$")
_LABEL = re.compile(r"^\$labels\.([A-Za-z_][A-Za-z0-9_]*)$")


def template_problem(text: str) -> str | None:
    """Why `text` cannot be rendered, or None."""
    for match in _TEMPLATE.finditer(text):
        action = match.group(1)
        if not (_VALUE.match(action) or _PRINTF.match(action) or _LABEL.match(action)):
            return (f"unsupported template action {{{{ {action} }}}}; expected {{{{ $value }}}}, "
                    f"{{{{ $value | humanize }}}}, {{{{ $value | humanizePercentage }}}}, "
                    f"{{{{ $value | humanizeDuration }}}}, {{{{ $value | printf \"%.2f\" }}}} "
                    f"or {{{{ $labels.NAME }}}}")  # fmt: skip
    return None


def render_template(text: str, value: float, labels: Mapping[str, str]) -> str:
    """Render an annotation as Prometheus would for the subset `template_problem` accepts."""

    def action(match: re.Match[str]) -> str:
        expression = match.group(1)
        label = _LABEL.match(expression)
        if label:
            return labels.get(label.group(1), "")
        printf = _PRINTF.match(expression)
        if printf:
            return go_printf(printf.group(1), value)
        plain = _VALUE.match(expression)
        if plain is None:
            return match.group(0)
        function, fmt = plain.group(1), plain.group(2)
        if fmt is not None:
            return go_printf(fmt, value)
        return _FORMATTERS.get(function or "", format_value)(value)

    return _TEMPLATE.sub(action, text)


def format_value(value: float) -> str:
    """As Go prints a float64 with %v, which Prometheus uses for {{ $value }}: the shortest digits
    that read back exactly, in exponent form when the exponent is below -4 or at least 6."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    sign, digits, exponent = Decimal(repr(float(value))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + int(exponent)  # digits before the decimal point
    exp = point - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{minus}{text}{'0' * (point - len(text))}"
    return f"{minus}{text[:point]}.{text[point:]}"


def go_printf(fmt: str, value: float) -> str:
    try:
        return fmt % value
    except (TypeError, ValueError):
        return fmt


def humanize(value: float) -> str:
    """Prometheus's humanize: SI prefixes, 4 significant digits."""
    if value == 0 or value != value or abs(value) == float("inf"):
        return format_value(value)
    prefixes = ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
    if abs(value) >= 1:
        for scale, prefix in prefixes:
            if abs(value) >= scale:
                return f"{value / scale:.4g}{prefix}"
        return f"{value:.4g}"
    for scale, prefix in ((1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f"), (1e-18, "a")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{prefix}"
    return f"{value:.4g}"


def humanize_percentage(value: float) -> str:
    return f"{value * 100:.4g}%"


def humanize_duration(seconds: float) -> str:
    """Prometheus's humanizeDuration: `1d 2h 3m 4s` (every unit below the largest), `12.34s`, `123.4ms`."""
    if seconds != seconds or abs(seconds) == float("inf"):
        return f"{format_value(seconds)}s" if seconds == seconds else format_value(seconds)
    if abs(seconds) >= 1:
        sign = "-" if seconds < 0 else ""
        whole = int(abs(seconds))
        secs, minutes, hours, days = whole % 60, whole // 60 % 60, whole // 3600 % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {secs}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {secs}s"
        if minutes:
            return f"{sign}{minutes}m {secs}s"
        return f"{sign}{_go_g4(abs(seconds))}s"
    prefix = ""
    for unit in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(seconds) >= 1:
            break  # (0 runs through every prefix, to "0ys", as in Prometheus)
        prefix = unit
        seconds *= 1000
    return f"{_go_g4(seconds)}{prefix}s"


def _go_g4(value: float) -> str:
    """Go's %.4g: four significant digits, trailing zeros dropped, exponent from 1e4 on."""
    text = f"{value:.4g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{exponent[0]}{int(exponent[1:]):02d}"
    return text


_FORMATTERS: Mapping[str, Callable[[float], str]] = MappingProxyType({
    "": format_value,
    "humanize": humanize,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
})  # fmt: skip
