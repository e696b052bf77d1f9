"""Rules and conditions in words, for `sidecar rules check` and the generated rules reference."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sidecar.config import format_duration
from sidecar.rules.signals import QUANTILE_SIGNALS, SIGNALS, Shape
from sidecar.rules.spec import BurnRateCondition, RuleSpec, SignalCondition, SloSpec


def describe_rule(rule: RuleSpec, slos: Mapping[str, SloSpec]) -> str:
    """A rule's condition in words: `error_ratio (any server-side failure) over 5m > 0.05, for 2m`."""
    condition = rule.condition
    if isinstance(condition, BurnRateCondition):
        slo = slos.get(condition.slo)
        target = f" ({slo.objective * 100:g}% over {format_duration(slo.period_s)})" if slo else ""
        windows = ", or ".join(
            f"{window.factor:g}x over {format_duration(window.long_s)} and {format_duration(window.short_s)}"
            for window in condition.windows
        )
        text = f"SLO {condition.slo}{target} burns its error budget faster than {windows}"
        if slo is not None and (slo.min_events or slo.min_bad_events):
            text += (f", once the short window holds {slo.min_events} requests and {slo.min_bad_events} bad "
                     f"ones")  # fmt: skip
    else:
        text = describe_signal_condition(condition)
    if rule.for_s:
        text += f", for {format_duration(rule.for_s)}"
    if rule.keep_firing_for_s:
        text += f", keep firing {format_duration(rule.keep_firing_for_s)}"
    return text


_ERROR_CLASSES: Mapping[str, str] = MappingProxyType({
    "any": "any failure of the service",
    "5xx": "5xx answers",
    "timeout": "upstream timeouts",
    "upstream_down": "upstream unreachable",
})  # fmt: skip


def describe_signal_condition(condition: SignalCondition) -> str:
    signal = SIGNALS[condition.signal]
    window = format_duration(condition.window_s)
    if signal.shape is Shape.QUANTILE:
        subject = f"p{(condition.quantile or 0) * 100:g} of {QUANTILE_SIGNALS[signal.name]} over {window}"
    elif signal.shape is Shape.RATIO:
        subject = f"{signal.name} ({_ERROR_CLASSES.get(condition.error_class, condition.error_class)}) over {window}"
    elif signal.shape is Shape.COUNT:
        subject = f"{signal.name} in {window}"
    elif signal.shape is Shape.GAUGE and condition.aggregate != "last":
        subject = f"{condition.aggregate} of {signal.name} over {window}"
    elif signal.shape is Shape.GAUGE:
        subject = signal.name
    else:
        subject = f"{signal.name} over {window}"
    if signal.per_gpu:
        subject += " per GPU"
    unit = "" if signal.unit == "bool" else f" {signal.unit}"
    text = f"{subject} {condition.op} {condition.threshold:g}{unit}"
    if condition.min_events or condition.min_bad_events:
        text += f", once the window holds {condition.min_events} requests and {condition.min_bad_events} failed ones"
    return text
