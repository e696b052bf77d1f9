"""The notifier's health on `/metrics`, read from its counters at scrape time.

The receiver label is `alertmanager:<url>` or `webhook:<name>`. The names follow Prometheus's own
notifier metrics (prometheus_notifications_*), split by receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar.rules.notify.stats import ReceiverStats


class _HasStats(Protocol):
    @property
    def stats(self) -> tuple[ReceiverStats, ...]: ...


class NotifierCollector(Collector):
    def __init__(self, notifier: _HasStats) -> None:
        self._notifier = notifier

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        stats = self._notifier.stats
        notifications = CounterMetricFamily(
            "sidecar_notifications",
            "Notifications by receiver and result: sent (POST answered 2xx), failed (a POST that was not, "
            "retries included), dropped (never POSTed: queue full or shutdown; for Alertmanagers, in alerts).",
            labels=["receiver", "result"],
        )
        latency = HistogramMetricFamily(
            "sidecar_notification_latency_seconds",
            "Time per notification POST, answered or not.",
            labels=["receiver"],
        )
        queue = GaugeMetricFamily(
            "sidecar_notification_queue_length",
            "Notifications waiting: alerts for an Alertmanager, group notifications for a webhook.",
            labels=["receiver"],
        )
        alerts_sent = CounterMetricFamily(
            "sidecar_notification_alerts_sent",
            "Alerts carried by notifications the receiver accepted.",
            labels=["receiver"],
        )
        for receiver in stats:
            name = receiver.receiver
            notifications.add_metric([name, "sent"], receiver.sent)
            notifications.add_metric([name, "failed"], receiver.failed)
            notifications.add_metric([name, "dropped"], receiver.dropped)
            latency.add_metric(
                [name],
                buckets=[(floatToGoString(le), count) for le, count in receiver.latency.cumulative()],
                sum_value=receiver.latency.total,
            )
            queue.add_metric([name], receiver.queue_length)
            alerts_sent.add_metric([name], receiver.alerts_sent)
        yield notifications
        yield latency
        yield queue
        yield alerts_sent
