"""The generated rules reference and the SLO report's arithmetic."""

from __future__ import annotations

from pathlib import Path

from sidecar.rules.reference import rules_reference
from sidecar.rules.signals import SIGNALS
from sidecar.rules.slo_report import format_slo_report
from sidecar.rules.spec import default_rules

DOCS = Path(__file__).parents[2] / "docs"


def test_committed_reference_matches_the_code() -> None:
    committed = (DOCS / "rules-reference.md").read_text()
    assert committed == rules_reference(), "run: sidecar rules reference > docs/rules-reference.md"


def test_reference_lists_every_signal_and_shipped_rule() -> None:
    text = rules_reference()
    assert all(f"| `{name}` |" in text for name in SIGNALS)
    assert all(f"| `{rule.name}` |" in text for rule in default_rules())


def test_report_gives_allowed_downtime_per_period_and_year() -> None:
    # 99.99 %: 0.01 % of 30 days is 4.32 minutes; of 365.25 days, 52.6 minutes.
    status = {
        "name": "availability", "sli": "availability", "objective": 0.9999, "period_s": 30 * 86400.0,
        "covered_s": 10 * 86400.0, "total": 1_000_000, "bad": 50, "error_ratio": 50 / 1_000_000,
        "budget_remaining": 1 - (50 / 1_000_000) / 0.0001, "used_downtime_s": 50 / 1_000_000 * 10 * 86400.0,
        "burn_rates": {"300": 0.0, "3600": 0.5},
    }  # fmt: skip
    report = format_slo_report([status])
    assert "objective 99.99% over 30d" in report
    assert "allowed down    4.3 min per 30d, 52.6 min per year" in report
    # 0.005 % bad over 10 days is 43.2 s, against 86.4 s allowed so far.
    assert "used down       43.2 s (of 1.4 min allowed so far)" in report
    assert "budget left     50.0%" in report and "availability    99.9950%" in report
    assert "burn rate       5m 0.00x, 1h 0.50x" in report


def test_report_without_slos_says_how_to_get_one() -> None:
    assert "rules.slos" in format_slo_report([])
