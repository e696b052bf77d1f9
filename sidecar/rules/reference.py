"""The rules reference in Markdown (signals, shipped rules and SLOs), generated so it cannot drift.

`docs/rules-reference.md` holds this text; a test regenerates it and compares.
"""

from __future__ import annotations

from sidecar.config import format_duration
from sidecar.rules.signals import SIGNALS, Shape
from sidecar.rules.describe import describe_signal_condition
from sidecar.rules.spec import PAGE_WINDOWS, TICKET_WINDOWS, SignalCondition, default_rules, default_slos

_SHAPES = {
    Shape.RATE: "rate over `window`",
    Shape.RATIO: "ratio over `window`",
    Shape.QUANTILE: "`quantile` over `window`",
    Shape.COUNT: "count over `window`",
    Shape.GAUGE: "gauge (`aggregate` over `window`)",
}


def rules_reference() -> str:
    lines = [
        "# Rules reference",
        "",
        "Generated from `sidecar/rules/signals.py` and `sidecar/rules/spec.py` by `sidecar rules reference`; "
        "do not edit by hand. How rules are evaluated, notified and exported: [rules.md](rules.md).",
        "",
        "## Signals",
        "",
        "| signal | shape | unit | per GPU | source | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for signal in SIGNALS.values():
        lines.append(
            f"| `{signal.name}` | {_SHAPES[signal.shape]} | {signal.unit} | {'yes' if signal.per_gpu else ''} "
            f"| {signal.source.value} | {signal.description} |"
        )
    lines += [
        "",
        "## Shipped rules",
        "",
        "On unless `rules.defaults: false`. A rule in `rules.alerts` with the same name replaces one; "
        "`enabled: false` switches it off.",
        "",
        "| name | condition | for | severity | summary |",
        "|---|---|---|---|---|",
    ]
    for rule in default_rules():
        ratio = SIGNALS[rule.signal].shape is Shape.RATIO
        condition = SignalCondition(rule.signal, rule.window, rule.op, rule.threshold, rule.quantile,
                                    rule.error_class, rule.aggregate, rule.min_events if ratio else 0,
                                    rule.min_bad_events if ratio else 0)  # fmt: skip
        lines.append(
            f"| `{rule.name}` | {describe_signal_condition(condition)} | {format_duration(rule.for_)} | {rule.severity} "
            f"| {rule.annotations.get('summary', '').replace('|', '&#124;')} |"
        )
    lines += ["", "## Shipped SLOs", "",
              "| name | SLI | objective | period | a burn-rate alert's short window must hold |",
              "|---|---|---|---|---|"]  # fmt: skip
    for slo in default_slos():
        lines.append(f"| `{slo.name}` | {slo.sli} | {slo.objective:g}% | {format_duration(slo.period)} "
                     f"| {slo.min_events} requests, {slo.min_bad_events} of them bad |")  # fmt: skip
    lines += [
        "",
        "## Burn-rate alerts generated for each SLO",
        "",
        "| severity | long window | short window | burn rate |",
        "|---|---|---|---|",
    ]
    for severity, windows in (("page", PAGE_WINDOWS), ("ticket", TICKET_WINDOWS)):
        for window in windows:
            lines.append(
                f"| {severity} | {format_duration(window.long_s)} | {format_duration(window.short_s)} | {window.factor:g} |"
            )
    lines.append("")
    return "\n".join(lines)
