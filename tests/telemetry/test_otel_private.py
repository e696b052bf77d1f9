"""The OpenTelemetry SDK internals the sidecar reads, checked against the installed SDK.

A failure here means the SDK changed what `sidecar/telemetry/otel_private.py` relies on: update
that module (and the SDK range in pyproject.toml), nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from sidecar.telemetry.otel_private import queued_spans


class _HeldExporter(SpanExporter):
    """Holds the first export until released, so spans pile up in the queue behind it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(30)
        return SpanExportResult.SUCCESS


def test_queued_spans_counts_what_waits_for_export() -> None:
    exporter = _HeldExporter()
    processor = BatchSpanProcessor(exporter, max_queue_size=16, max_export_batch_size=1, schedule_delay_millis=1)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    try:
        assert queued_spans(processor) == 0, "the SDK no longer keeps its queue where the sidecar reads it"
        tracer.start_span("first").end()
        assert exporter.entered.wait(10), "the first span was never exported"
        for number in range(5):
            tracer.start_span(f"queued {number}").end()
        assert queued_spans(processor) == 5
    finally:
        exporter.release.set()
        provider.shutdown()
