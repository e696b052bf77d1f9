"""Trace propagation and one SERVER span per request, with OpenTelemetry's SDK.

The incoming W3C `traceparent`/`tracestate` and `baggage` are extracted with
the SDK's propagators; a malformed or oversized header, or a `traceparent`
sent in more than one line, is ignored (a new trace starts) and counted, never
answered with an error. The upstream request carries a `traceparent` whose
parent is the sidecar's SERVER span, the caller's `tracestate` (as it came
where the SDK's TraceState cannot hold a valid one: see
sidecar.telemetry.tracestate), and the client's `baggage` header byte for
byte: re-serialising it with the SDK would turn `%20` into `+` (opentelemetry-python#5566, form encoding where W3C Baggage
requires percent encoding), changing values for any compliant reader. There is no separate CLIENT span for the upstream call: it would
double the spans exported per request while adding little, since the model
server's own spans nest under the sidecar's span and the Exchange already
records when the upstream answered (`upstream_response_start_s`).

Spans follow the HTTP server conventions of semantic conventions 1.44.0 (name
`{method} {route}`, stable `http.*`, `url.*`, `server.*`, `client.*`
attributes, credentials in `url.query` redacted) plus the GenAI ones of 1.41.0
for model calls, and ERROR status for 5xx and timeouts; the tracer and the
resource name that schema. Prompt and completion content are never recorded.

Without an exporter (the default) the sidecar opens no span of its own: it
forwards the caller's `traceparent`/`tracestate` unchanged and records the
caller's trace id on the Exchange, so the model server's spans keep their real
parent. Export runs on the SDK's batch processor thread with a bounded queue: a
collector that is down or hanging fills the queue, spans are dropped and
counted (`sidecar_spans_dropped_total`), and requests never wait.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar import __version__
from sidecar.config import TracingConfig
from sidecar.exchange import Exchange, Outcome, well_formed
from sidecar.telemetry.otel_private import queued_spans
from sidecar.telemetry.semconv import KNOWN_METHODS, SCHEMA_URL, gen_ai_provider, method_label, redacted_query
from sidecar.telemetry.tracestate import is_valid_tracestate

# Written by the sidecar on upstream requests; the client's copies are not forwarded.
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans it drops when its queue is full.

    The SDK logs a warning per dropped span (a flood exactly when the collector
    is down) and exposes no count; this keeps a count for `/metrics` instead.
    """

    def __init__(self, exporter: SpanExporter, **kwargs: float) -> None:
        super().__init__(exporter, **kwargs)  # type: ignore[arg-type]
        self.dropped = 0
        self._queue_limit = int(kwargs.get("max_queue_size") or 2048)

    def on_end(self, span: ReadableSpan) -> None:
        queued = queued_spans(self)
        if queued is not None and queued >= self._queue_limit:
            self.dropped += 1
        super().on_end(span)


def _exporter(config: TracingConfig) -> SpanExporter | None:
    if config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers), timeout=config.timeout)
    if config.exporter == "console":
        # Passed explicitly: the SDK's default is the sys.stdout of when it was imported.
        return ConsoleSpanExporter(out=sys.stdout)
    return None


class _HeaderLines(Getter[CIMultiDictProxy[str]]):
    """Every line of a header, as text that encodes.

    OpenTelemetry's default getter returns only the first line, but W3C Trace
    Context and Baggage say several `tracestate` or `baggage` lines form one
    list (RFC 9110 §5.3), and a `traceparent` sent in several lines is invalid
    (the trace restarts) where the default getter would continue the first.
    Bytes that are not UTF-8 reach Python as lone surrogates, which the
    baggage propagator cannot encode: they are replaced.
    """

    def get(self, carrier: CIMultiDictProxy[str], key: str) -> list[str] | None:
        values = carrier.getall(key, None)
        if values is None:
            return None
        if len(values) == 1:
            return [well_formed(values[0]) or ""]
        if key not in _LIST_HEADERS:
            return None  # absent to the propagator; Tracing.start counts it as invalid
        # The propagators read only the first element: lists are handed over joined.
        return [",".join(well_formed(value) or "" for value in values)]

    def keys(self, carrier: CIMultiDictProxy[str]) -> list[str]:
        return list(carrier.keys())


_LIST_HEADERS = frozenset({"tracestate", "baggage"})
_ALL_HEADER_LINES = _HeaderLines()


def _unheld_tracestate(headers: CIMultiDictProxy[str], parent: Context) -> str | None:
    """The caller's tracestate lines, joined, where they are valid but the continued context has none.

    A proxy must forward the caller's tracestate; OpenTelemetry's TraceState
    empties it for a repeated key or a key of the Level 2 grammar it does not
    know (see sidecar.telemetry.tracestate). Only a continued (valid) parent
    carries a tracestate: W3C discards it with an invalid or absent traceparent.
    """
    if "tracestate" not in headers:
        return None
    context = trace.get_current_span(parent).get_span_context()
    if not context.is_valid or context.trace_state:
        return None
    lines = _ALL_HEADER_LINES.get(headers, "tracestate")  # one: the lines joined
    return lines[0] if lines and is_valid_tracestate(lines[0]) else None


@dataclass(frozen=True, slots=True)
class ServerSpan:
    """A request's span, the context it continued (with its baggage), and when it began.

    Without an exporter there is no span of the sidecar's own (`own` is False):
    `span` is then the caller's, carried only so its ids can be recorded.
    """

    span: Span
    parent: Context
    start_ns: int
    own: bool = True
    # The caller's tracestate as it came, where OpenTelemetry's TraceState could not hold it.
    caller_tracestate: str | None = None

    def ids(self) -> tuple[str | None, str | None, bool]:
        """(trace id, the sidecar's span id, sampled), as lower-case hex."""
        context = self.span.get_span_context()
        if not context.is_valid:
            return None, None, False
        span_id = trace.format_span_id(context.span_id) if self.own else None
        return trace.format_trace_id(context.trace_id), span_id, context.trace_flags.sampled


class Tracing:
    """Extracts, starts, injects and ends the proxy's spans."""

    def __init__(
        self,
        config: TracingConfig,
        instance_id: str,
        provider_name: str = "",
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        """`instance_id` is service.instance.id; `scrub` masks personal data and credentials in the
        path and query before they leave in a span."""
        self.config = config
        self._gen_ai_provider = gen_ai_provider(provider_name)
        self._scrub = scrub
        self.invalid_trace_headers = 0
        # One warning per dropped span is noise; the count goes to /metrics.
        logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
        attributes: dict[str, str] = {
            "service.name": config.service_name,
            "service.version": __version__,
            "service.instance.id": instance_id,
            "host.name": socket.gethostname(),
        }
        attributes.update(config.resource_attributes)
        exporter = _exporter(config)
        self._exporter = exporter
        # Without an exporter the sidecar opens no spans: a span nobody exports,
        # made the parent of the model server's spans, would leave those orphaned.
        # The caller's trace context then passes through untouched.
        self.exporting = exporter is not None
        root = TraceIdRatioBased(config.sample_ratio)
        # Not the SDK's own shutdown at exit: that waits up to 30 s on a hanging collector. The
        # sidecar's stop calls `shutdown`, which gives up after two seconds.
        self._provider = TracerProvider(
            resource=Resource.create(attributes, schema_url=SCHEMA_URL),
            sampler=ParentBased(root),
            shutdown_on_exit=False,
        )
        self._processor: CountingBatchSpanProcessor | None = None
        if exporter is not None:
            self._processor = CountingBatchSpanProcessor(
                exporter,
                max_queue_size=config.max_queue_size,
                max_export_batch_size=min(config.max_export_batch_size, config.max_queue_size),
                schedule_delay_millis=config.schedule_delay * 1000,
                export_timeout_millis=config.timeout * 1000,
            )
            self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("inference-sidecar", __version__, schema_url=SCHEMA_URL)
        self._propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
        # The propagators warn for each malformed header a client sends, quoting it: the log
        # would carry whatever a hostile client likes. Such headers are dropped either way, and
        # sidecar_trace_context_invalid counts broken traceparents.
        for name in ("opentelemetry.baggage.propagation", "opentelemetry.trace.propagation.tracecontext",
                     "opentelemetry.trace.span"):  # fmt: skip
            logging.getLogger(name).setLevel(logging.ERROR)
        self._trace_context = TraceContextTextMapPropagator()

    @property
    def spans_dropped(self) -> int:
        return self._processor.dropped if self._processor is not None else 0

    def start(self, headers: CIMultiDictProxy[str], method: str, route: str | None, start_ns: int) -> ServerSpan:
        """Continue the caller's trace (or start one) with a SERVER span that began at `start_ns`."""
        try:
            parent = self._propagator.extract(headers, getter=_ALL_HEADER_LINES)
        except Exception:
            # A propagator that trips over hostile bytes must not cost the request: new trace.
            parent = Context()
            self.invalid_trace_headers += 1
        else:
            if "traceparent" in headers and not trace.get_current_span(parent).get_span_context().is_valid:
                self.invalid_trace_headers += 1
        if not self.exporting:
            return ServerSpan(trace.get_current_span(parent), parent, start_ns, own=False)  # type: ignore[arg-type]
        known = method in KNOWN_METHODS
        name = f"{method} {route}" if route and known else (method if known else "HTTP")
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, start_time=start_ns)
        tracestate = _unheld_tracestate(headers, parent)
        return ServerSpan(span, parent, start_ns, caller_tracestate=tracestate)  # type: ignore[arg-type]

    def caller_context(self, headers: CIMultiDictProxy[str], start_ns: int) -> ServerSpan:
        """The caller's trace context alone, for a request refused before its span would start.

        No span of the sidecar's own (`finish` ignores it), only the caller's ids for the records;
        an unreadable traceparent gives none.
        """
        try:
            parent = self._trace_context.extract(headers, getter=_ALL_HEADER_LINES)
        except Exception:
            parent = Context()
        return ServerSpan(trace.get_current_span(parent), parent, start_ns, own=False)  # type: ignore[arg-type]

    def inject(self, server_span: ServerSpan, headers: CIMultiDict[str]) -> None:
        """Write `traceparent` (parent: the server span) and `tracestate` into upstream headers."""
        if not server_span.own:
            return  # the caller's headers were forwarded as they came
        context = trace.set_span_in_context(server_span.span, server_span.parent)
        self._trace_context.inject(headers, context=context)
        if server_span.caller_tracestate is not None:
            headers["tracestate"] = server_span.caller_tracestate  # the SDK wrote none: its TraceState is empty

    def finish(self, server_span: ServerSpan, exchange: Exchange) -> None:
        """Describe the exchange on the span and end it when the exchange ended."""
        span, start_ns = server_span.span, server_span.start_ns
        if not server_span.own:
            return
        if not span.is_recording():
            span.end(end_time=start_ns + int(exchange.duration_s * 1e9))
            return
        method = method_label(exchange.method)
        scrub = self._scrub
        host, _, port = exchange.host.rpartition(":") if ":" in exchange.host else (exchange.host, "", "")
        attributes: dict[str, object] = {
            "http.request.method": method,
            "url.path": scrub(exchange.path) if scrub else exchange.path,
            "url.scheme": exchange.scheme,
            "http.response.status_code": exchange.status,
            "network.protocol.version": exchange.http_version,
            "server.address": host,
        }
        if method == "_OTHER":
            attributes["http.request.method_original"] = exchange.method
        if exchange.query:
            # Scrubbed first, so that the redactor does not mask the REDACTED that OpenTelemetry asks for.
            query = well_formed(exchange.query) or ""
            attributes["url.query"] = redacted_query(scrub(query) if scrub else query)
        if port.isdigit():
            attributes["server.port"] = int(port)
        if exchange.route:
            attributes["http.route"] = exchange.route
        if exchange.client_address:
            attributes["client.address"] = exchange.client_address
        if exchange.user_agent:
            attributes["user_agent.original"] = scrub(exchange.user_agent) if scrub else exchange.user_agent
        principal = exchange.principal
        if not principal.is_anonymous:
            # user.id is OpenTelemetry's (it replaced enduser.id); there is no convention for a tenant.
            if principal.user:
                attributes["user.id"] = principal.user
            if principal.tenant:
                attributes["sidecar.tenant"] = principal.tenant
            attributes["sidecar.auth.method"] = principal.auth_method
            if principal.tier:
                attributes["sidecar.auth.tier"] = principal.tier
        failed = exchange.status >= 500 or exchange.outcome is Outcome.UPSTREAM_TIMEOUT
        if exchange.error_type or failed:
            attributes["error.type"] = exchange.error_type or str(exchange.status)
        call = exchange.gen_ai
        if call is not None:
            attributes["gen_ai.operation.name"] = call.operation
            attributes["gen_ai.provider.name"] = self._gen_ai_provider
            for key, value in (
                ("gen_ai.request.model", call.request_model),
                ("gen_ai.response.model", call.response_model),
                ("gen_ai.usage.input_tokens", call.input_tokens),
                ("gen_ai.usage.output_tokens", call.output_tokens),
            ):
                if value is not None:
                    attributes[key] = value
            if call.finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = list(call.finish_reasons)
            if call.stream and call.time_to_first_token_s is not None:
                # Counted to the first chunk with content: a role-only opening chunk says nothing of the model.
                attributes["gen_ai.response.time_to_first_chunk"] = call.time_to_first_token_s
        span.set_attributes(attributes)  # type: ignore[arg-type]
        if failed:
            message = exchange.error_message
            span.set_status(Status(StatusCode.ERROR, (scrub(message) if scrub and message else message) or None))
        span.end(end_time=start_ns + int(exchange.duration_s * 1e9))

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Export what is queued and stop, giving up after `timeout_s`; blocks, so run it off the loop.

        The SDK's flush ignores its timeout and its shutdown waits up to 30 s,
        both blocking on every export a hanging collector holds; so they run on
        a daemon thread that is waited for at most `timeout_s` and cannot hold
        up the process's exit. Past that, the exporter is shut down too: what is
        still queued is dropped, and no export retries a collector that is down
        after the sidecar has stopped.
        """
        worker = threading.Thread(target=self._provider.shutdown, name="span-export-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive() and self._exporter is not None:
            # Ends the retry backoff at once; the batches left then fail without a request. An
            # export already on the wire still runs to its own timeout (tracing.timeout).
            self._exporter.shutdown()
