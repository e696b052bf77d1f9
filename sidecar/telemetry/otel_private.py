"""The one read of OpenTelemetry SDK internals, in one module.

    queued_spans(processor)   # spans waiting in a BatchSpanProcessor's queue, or None

The SDK counts no spans it drops when its export queue is full (it logs a
warning per span instead); the sidecar counts them by looking at the queue's
length before handing a span over. `pyproject.toml` allows only SDK releases
with this layout, and `tests/telemetry/test_otel_private.py` checks it against
the installed SDK, so a change fails there by name.
"""

from __future__ import annotations

from opentelemetry.sdk.trace.export import BatchSpanProcessor


def queued_spans(processor: BatchSpanProcessor) -> int | None:
    """How many spans wait in `processor`'s export queue; None where the SDK keeps it elsewhere."""
    queue = getattr(getattr(processor, "_batch_processor", None), "_queue", None)
    return len(queue) if queue is not None else None
