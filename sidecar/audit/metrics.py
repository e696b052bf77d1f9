"""The audit pipeline's health on `/metrics`, read from its counters at scrape time.

Names follow Vector's and the OpenTelemetry Collector's habits: events in,
events out by result, what is buffered and how much room is left, retries,
drops by reason, and whether the sink is delivering (not merely answering).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.audit.pipeline import AuditPipeline


class AuditCollector(Collector):
    def __init__(self, pipeline: AuditPipeline) -> None:
        self._pipeline = pipeline

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pipeline = self._pipeline
        stats, spool, sink = pipeline.stats, pipeline.spool, pipeline.sink
        yield CounterMetricFamily(
            "sidecar_audit_events_accepted",
            "Audit events written to the spool (they count as recorded from here on).",
            value=stats.accepted,
        )
        dropped = CounterMetricFamily(
            "sidecar_audit_events_dropped",
            "Audit events lost, by reason: spool_full and queue_full (when_full: fail_open), encode_error.",
            labels=["reason"],
        )
        for reason, count in stats.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        delivered = CounterMetricFamily(
            "sidecar_audit_events_delivered",
            "Audit events that left the spool, by result: stored (duplicate: the sink already held it), "
            "dead_letter (refused for good, kept in the dead-letter file).",
            labels=["sink", "result"],
        )
        delivered.add_metric([sink.name, "stored"], sink.stored - sink.duplicates)
        delivered.add_metric([sink.name, "duplicate"], sink.duplicates)
        delivered.add_metric([sink.name, "dead_letter"], sink.dead_lettered)
        yield delivered
        retries = CounterMetricFamily(
            "sidecar_audit_sink_retries",
            "Failed delivery attempts that will be retried, by reason: rejected (429), server_error, connection.",
            labels=["sink", "reason"],
        )
        for reason, count in sink.retries.items():
            retries.add_metric([sink.name, reason], count)
        yield retries
        yield GaugeMetricFamily(
            "sidecar_audit_sink_up",
            "0 once audit records have waited audit.sink_down_after with none stored or dead-lettered "
            "in that time, whatever the sink answers; 1 otherwise.",
            value=1 if pipeline.sink_up else 0,
        )
        oldest = pipeline.oldest_undelivered
        yield GaugeMetricFamily(
            "sidecar_audit_oldest_undelivered_timestamp_seconds",
            "When the oldest audit record not yet delivered was written (Unix time); the current time "
            "when none waits, so that time() - this is the delivery lag.",
            value=oldest if oldest is not None else pipeline.clock(),
        )
        levels = spool.levels  # every spool gauge from the same moment
        yield GaugeMetricFamily(
            "sidecar_audit_spool_bytes", "Bytes of undelivered audit events on disk.", value=levels.used_bytes
        )
        yield GaugeMetricFamily(
            "sidecar_audit_spool_limit_bytes", "audit.spool.max_size.", value=spool.max_bytes
        )
        yield GaugeMetricFamily(
            "sidecar_audit_spool_events",
            "Audit events in the spool not yet delivered (the sink's lag in events).",
            value=max(0, levels.next_offset - levels.committed_offset),
        )
        yield GaugeMetricFamily(
            "sidecar_audit_queue_events", "Audit events waiting for the spool writer.", value=pipeline.queue_length
        )
        policy = GaugeMetricFamily(
            "sidecar_audit_spool_full",
            "1 while the spool is full; `policy` says what happens then (fail_open drops, fail_closed answers 503).",
            labels=["policy"],
        )
        policy.add_metric([pipeline.settings.when_full], 1 if pipeline.spool_full else 0)
        yield policy
        yield GaugeMetricFamily(
            "sidecar_audit_last_delivery_timestamp_seconds",
            "When the sink last stored or dead-lettered an audit record (Unix time; 0: not since start).",
            value=sink.last_delivery,
        )
        yield CounterMetricFamily(
            "sidecar_audit_checkpoints", "Signed chain checkpoints written.", value=stats.checkpoints
        )
        yield GaugeMetricFamily(
            "sidecar_audit_quarantined_bytes",
            "Corrupt spool bytes set aside at the last start (in <data_dir>/audit/spool/quarantine).",
            value=stats.quarantined_bytes,
        )
