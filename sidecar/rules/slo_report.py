"""`sidecar slo report`: each SLO's availability, allowed and used downtime, budget left, burn rates.

Read from a running sidecar (`/-/slo` on the admin port) or, with the sidecar stopped, from its
rules state file and config. "Downtime" is the error budget expressed as time: a 99.99 % objective
allows 0.01 % of the period to be bad, 52.6 minutes a year (4.3 minutes in 30 days); used downtime
is the measured error ratio times the span measured so far.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.config import format_duration

YEAR_S = 365.25 * 86400


def format_slo_report(statuses: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table per SLO from `SloStatus.as_dict()` records."""
    if not statuses:
        return "no SLOs configured (rules.slos, or the shipped ones with rules.defaults: true)\n"
    blocks = []
    for status in statuses:
        objective = float(status["objective"])
        budget = 1.0 - objective
        period = float(status["period_s"])
        covered = float(status.get("covered_s") or 0.0)
        total = int(status.get("total") or 0)
        bad = int(status.get("bad") or 0)
        error_ratio = status.get("error_ratio")
        availability = None if error_ratio is None else 1.0 - float(error_ratio)
        remaining = status.get("budget_remaining")
        burn = status.get("burn_rates") or {}
        lines = [
            f"SLO {status['name']} ({status['sli']}): objective {objective * 100:g}% over {format_duration(period)}",
            f"  measured        {format_duration(round(covered))} of the period, {total:,} requests, {bad:,} bad",
            f"  availability    {'no requests yet' if availability is None else f'{availability * 100:.4f}%'}",
            f"  allowed down    {_minutes(budget * period)} per {format_duration(period)}, "
            f"{_minutes(budget * YEAR_S)} per year",
            f"  used down       {_minutes(float(status.get('used_downtime_s') or 0.0))} "
            f"(of {_minutes(budget * covered)} allowed so far)",
            f"  budget left     {'100%' if remaining is None else f'{float(remaining) * 100:.1f}%'}",
            "  burn rate       " + (", ".join(f"{_window(w)} {_rate(r)}" for w, r in sorted(burn.items(), key=lambda i: float(i[0]))) or "-"),
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _minutes(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _window(window: str | float) -> str:
    return format_duration(float(window))


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{float(rate):.2f}x"


def report_json(statuses: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(list(statuses), indent=1) + "\n"
