"""The rule engine on `/metrics`: its alerts as Prometheus publishes them, SLO budgets and burn rates,
and the evaluator's own health.

`sidecar_alerts` and `sidecar_alerts_for_state` mirror Prometheus's ALERTS and ALERTS_FOR_STATE
(same labels, same values), renamed so that a Prometheus scraping the sidecar does not mistake
them for its own. Windows are labelled as Prometheus durations (5m, 1h, 3d, 30d), as Sloth and
the exported recording rules name them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sidecar.config import format_duration
from sidecar.rules.alert import AlertState
from sidecar.rules.engine import RuleEngine


class RulesCollector(Collector):
    def __init__(self, engine: RuleEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        # Alerts carry their own label sets (per rule, per GPU), so samples are added with their labels.
        alerts = GaugeMetricFamily(
            "sidecar_alerts", "1 for each pending or firing alert of the in-process rules (Prometheus's ALERTS)."
        )
        for_state = GaugeMetricFamily(
            "sidecar_alerts_for_state",
            "When each pending or firing alert became active, Unix seconds (Prometheus's ALERTS_FOR_STATE).",
        )
        for alert in engine.alerts():
            if alert.state is AlertState.RESOLVED:
                continue
            labels = dict(alert.labels)
            alerts.add_sample("sidecar_alerts", {**labels, "alertstate": alert.state.value}, 1.0)
            for_state.add_sample("sidecar_alerts_for_state", labels, alert.active_at)
        yield alerts
        yield for_state

        objective = GaugeMetricFamily("sidecar_slo_objective_ratio", "The SLO's objective as a ratio.", labels=["slo"])
        remaining = GaugeMetricFamily(
            "sidecar_slo_error_budget_remaining_ratio",
            "Error budget left over the SLO's period: 1 - error ratio / (1 - objective); negative when overspent.",
            labels=["slo"],
        )
        burn = GaugeMetricFamily(
            "sidecar_slo_burn_rate",
            "Error ratio over the window / error budget (1 spends the budget exactly over the period).",
            labels=["slo", "window"],
        )
        error_ratio = GaugeMetricFamily(
            "sidecar_slo_sli_error_ratio",
            "Bad / total requests over the window (the SLO's period included); absent while no requests.",
            labels=["slo", "window"],
        )
        for status in engine.slo_status():
            objective.add_metric([status.name], status.objective)
            remaining.add_metric([status.name], status.budget_remaining)
            for window, rate in status.burn_rates.items():
                if rate is not None:
                    burn.add_metric([status.name, format_duration(window)], rate)
            for window, ratio in status.error_ratios.items():
                if ratio is not None:
                    error_ratio.add_metric([status.name, format_duration(window)], ratio)
        yield objective
        yield remaining
        yield burn
        yield error_ratio

        yield GaugeMetricFamily(
            "sidecar_rule_evaluation_duration_seconds",
            "How long the last evaluation of every rule took.",
            value=engine.last_evaluation_duration_s,
        )
        yield CounterMetricFamily(
            "sidecar_rule_evaluations", "Evaluations of the rule set (ticks).", value=engine.evaluations
        )
        yield CounterMetricFamily(
            "sidecar_rule_evaluation_failures",
            "Rule evaluations that failed (one per rule per tick); the rule's error is on /-/alerts.",
            value=engine.evaluation_failures,
        )
