"""Prometheus metrics fed by Exchanges, HealthResults and live gauges.

Names follow OpenTelemetry's semantic conventions translated to Prometheus
(`http.server.request.duration` -> `http_server_request_duration_seconds`,
`gen_ai.server.time_to_first_token` -> `gen_ai_server_time_to_first_token_seconds`)
so dashboards written for OTel-instrumented servers work unchanged; the
sidecar's own series are prefixed `sidecar_`.

Every label has a bounded set of values: unknown HTTP methods become `_OTHER`,
`url_scheme` is `http` or `https`, unknown paths `other` (as route templates),
`error_type` is one of the sidecar's error codes, and only the first
`metrics.max_models` model names get a label value of their own. Latency
histograms carry the request's trace id as an exemplar (OpenMetrics), so a
slow bucket in Grafana opens the trace behind it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.buckets import (
    BODY_SIZE_BUCKETS,
    GEN_AI_DURATION_BUCKETS,
    HTTP_DURATION_BUCKETS,
    OVERHEAD_BUCKETS,
    TOKEN_BUCKETS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
)
from sidecar.exchange import Exchange, HealthResult, HealthState, Outcome
from sidecar.telemetry.semconv import gen_ai_provider, method_label, scheme_label

_PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_UPSTREAM_OUTCOMES = frozenset({Outcome.UPSTREAM_UNAVAILABLE, Outcome.UPSTREAM_TIMEOUT, Outcome.UPSTREAM_ERROR})


class BoundedLabel:
    """Maps values to themselves until `cap` distinct ones were seen, then new ones to `other`."""

    def __init__(self, cap: int, overflow: str = "other") -> None:
        self._cap = cap
        self._overflow = overflow
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._seen:
            return value
        if len(self._seen) < self._cap:
            self._seen.add(value)
            return value
        return self._overflow


class LabelledChildren:
    """The labelled children of a metric, cached: `labels()` validates and locks on every call,
    which on the request path costs more than the observation itself. Bounded by the bounded
    label values."""

    def __init__(self, metric: Histogram | Counter) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Histogram | Counter] = {}

    def __call__(self, *values: str):  # type: ignore[no-untyped-def]
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


def _exemplar(exchange: Exchange) -> dict[str, str] | None:
    # Only sampled traces: an exemplar pointing at a trace nobody kept is a dead link.
    return {"trace_id": exchange.trace_id} if exchange.trace_id and exchange.trace_sampled else None


# The attributes OpenTelemetry requires (method, scheme) or requires when present (status, route,
# error type) on each of the three HTTP server histograms.
_HTTP_LABELS = ("http_request_method", "url_scheme", "http_response_status_code", "http_route", "error_type")


class ExchangeMetrics:
    """HTTP server metrics and the sidecar's own, from each Exchange."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, from the first byte read to the last byte written.",
            _HTTP_LABELS,
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )
        self._request_size = Histogram(
            "http_server_request_body_size_bytes",
            "Size of HTTP server request bodies.",
            _HTTP_LABELS,
            buckets=BODY_SIZE_BUCKETS,
            registry=registry,
        )
        self._response_size = Histogram(
            "http_server_response_body_size_bytes",
            "Size of HTTP server response bodies.",
            _HTTP_LABELS,
            buckets=BODY_SIZE_BUCKETS,
            registry=registry,
        )
        self._outcomes = Counter(
            "sidecar_exchanges", "Requests handled by the proxy, by how they ended.", ["outcome"], registry=registry
        )
        self._upstream_errors = Counter(
            "sidecar_upstream_errors",
            "Requests the upstream failed: could not be reached, timed out, or broke off.",
            ["error_type"],
            registry=registry,
        )
        self._disconnects = Counter(
            "sidecar_client_disconnects",
            "Clients that went away before their response was complete.",
            ["phase"],
            registry=registry,
        )
        self._overhead = Histogram(
            "sidecar_proxy_overhead_seconds",
            "Time a request spent inside the sidecar itself (not waiting on the client or upstream).",
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        for outcome in Outcome:
            self._outcomes.labels(outcome.value)
        for phase in ("before_response", "mid_response"):
            self._disconnects.labels(phase)
        # The three histograms' children per label tuple: one lookup per request for all three.
        self._http_children: dict[tuple[str, ...], tuple[Histogram, Histogram, Histogram]] = {}
        self._outcome_counts = LabelledChildren(self._outcomes)

    def __call__(self, exchange: Exchange) -> None:
        labels = (
            method_label(exchange.method),
            scheme_label(exchange.scheme),
            str(exchange.status),
            exchange.route or "other",
            exchange.error_type or "",
        )
        children = self._http_children.get(labels)
        if children is None:
            children = self._http_children[labels] = (
                self._duration.labels(*labels),
                self._request_size.labels(*labels),
                self._response_size.labels(*labels),
            )
        duration, request_size, response_size = children
        duration.observe(exchange.duration_s, _exemplar(exchange))
        request_size.observe(exchange.request_body_bytes)
        response_size.observe(exchange.response_body_bytes)
        self._outcome_counts(exchange.outcome.value).inc()
        self._overhead.observe(exchange.proxy_overhead_s)
        if exchange.outcome in _UPSTREAM_OUTCOMES:
            self._upstream_errors.labels(exchange.error_type or "_OTHER").inc()
        elif exchange.outcome is Outcome.CLIENT_CLOSED:
            self._disconnects.labels("mid_response" if exchange.first_byte_s is not None else "before_response").inc()


class GenAiMetrics:
    """OpenTelemetry GenAI server metrics, from each Exchange that was a model call."""

    def __init__(self, registry: CollectorRegistry, *, max_models: int, provider_name: str = "") -> None:
        labels = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
        self._provider = gen_ai_provider(provider_name)
        self._model = BoundedLabel(max_models)
        self._duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Model call duration, to the last byte of the answer.",
            labels + ["error_type"],
            buckets=GEN_AI_DURATION_BUCKETS,
            registry=registry,
        )
        self._ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first content-bearing chunk of a streamed answer.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self._tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for streamed answers.",
            labels,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self._tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per model call, by type (input or output).",
            labels + ["gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self._unparsed = Counter(
            "sidecar_gen_ai_unparsed",
            "Model calls whose bodies could not be fully read (malformed, truncated, or over a parse limit).",
            ["gen_ai_operation_name"],
            registry=registry,
        )
        self._durations = LabelledChildren(self._duration)
        self._ttfts = LabelledChildren(self._ttft)
        self._tpots = LabelledChildren(self._tpot)
        self._token_counts = LabelledChildren(self._tokens)

    def __call__(self, exchange: Exchange) -> None:
        call = exchange.gen_ai
        if call is None:
            return
        labels = (
            call.operation,
            self._provider,
            self._model(call.request_model or call.response_model) or "unknown",
        )
        exemplar = _exemplar(exchange)
        error_type = exchange.error_type or (str(exchange.status) if exchange.status >= 400 else "")
        self._durations(*labels, error_type).observe(exchange.duration_s, exemplar)
        succeeded = not error_type
        if succeeded and call.time_to_first_token_s is not None:
            self._ttfts(*labels).observe(call.time_to_first_token_s, exemplar)
        if succeeded and call.time_per_output_token_s is not None:
            self._tpots(*labels).observe(call.time_per_output_token_s, exemplar)
        if call.input_tokens is not None:
            self._token_counts(*labels, "input").observe(call.input_tokens)
        if call.output_tokens is not None:
            self._token_counts(*labels, "output").observe(call.output_tokens)
        if call.parse_error is not None:
            self._unparsed.labels(call.operation).inc()


class HealthMetrics:
    """Upstream health state and probe results from each HealthResult."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._state = Enum(
            "sidecar_upstream_health",
            "Upstream health as decided by the active prober (unknown until the first probe).",
            states=[state.value for state in HealthState],
            registry=registry,
        )
        self._probes = Counter(
            "sidecar_upstream_health_checks", "Active health probes of the upstream, by result.", ["result"], registry=registry
        )
        self._latency = Histogram(
            "sidecar_upstream_health_check_duration_seconds",
            "Duration of active health probes of the upstream.",
            buckets=_PROBE_BUCKETS,
            registry=registry,
        )
        self._failures = Gauge(
            "sidecar_upstream_health_consecutive_failures",
            "Failed health probes of the upstream in a row (0 after a success).",
            registry=registry,
        )
        self._state.state(HealthState.UNKNOWN.value)
        for result in ("success", "failure"):
            self._probes.labels(result)

    def __call__(self, result: HealthResult) -> None:
        self._state.state(result.state.value)
        self._failures.set(result.consecutive_failures)
        self._probes.labels("success" if result.ok else "failure").inc()
        self._latency.observe(result.latency_s)


def register_build_info(registry: CollectorRegistry) -> None:
    Info("sidecar_build", "Version of the running sidecar.", registry=registry).info(
        {"version": __version__, "python_version": platform.python_version()}
    )


class LiveGauges(Collector):
    """Values read at scrape time from the parts that own them (no copies to keep in sync)."""

    def __init__(
        self,
        *,
        active_requests: Callable[[], Mapping[tuple[str, str], int]],
        draining: Callable[[], bool],
        observer_failures: Callable[[], dict[str, int]],
        spans_dropped: Callable[[], int],
        invalid_trace_headers: Callable[[], int],
        header_timeouts: Callable[[], int] = lambda: 0,
    ) -> None:
        """`active_requests` gives the requests in flight by (method, scheme) as received."""
        self._active_requests = active_requests
        # Label pairs seen so far (at most the known methods and _OTHER, times http and https):
        # each is reported, at 0 when idle, as OpenTelemetry's up-down counter would keep it.
        self._active_seen: dict[tuple[str, str], int] = {}
        self._header_timeouts = header_timeouts
        self._spans_dropped = spans_dropped
        self._invalid_trace_headers = invalid_trace_headers
        self._draining = draining
        self._observer_failures = observer_failures

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        active = dict.fromkeys(self._active_seen, 0)
        for (method, scheme), count in self._active_requests().items():
            labels = (method_label(method), scheme_label(scheme))
            active[labels] = active.get(labels, 0) + count
        self._active_seen = active
        family = GaugeMetricFamily(
            "http_server_active_requests",
            "Requests being handled by the proxy right now.",
            labels=["http_request_method", "url_scheme"],
        )
        for labels, count in active.items():
            family.add_metric(labels, count)
        yield family
        yield GaugeMetricFamily(
            "sidecar_draining",
            "1 while the sidecar is shutting down and draining in-flight requests.",
            value=1 if self._draining() else 0,
        )
        failures = CounterMetricFamily(
            "sidecar_observer_failures",
            "Records an observer raised on instead of taking (a bug; see the log).",
            labels=["observer"],
        )
        for name, count in sorted(self._observer_failures().items()):
            failures.add_metric([name], count)
        yield failures
        yield CounterMetricFamily(
            "sidecar_spans_dropped",
            "Spans dropped because the export queue was full (collector down, slow or unreachable).",
            value=self._spans_dropped(),
        )
        yield CounterMetricFamily(
            "sidecar_trace_context_invalid",
            "Requests with an invalid traceparent (malformed, oversized, or in more than one header line): "
            "with spans exported each started a new trace, without the caller's tracestate; without an "
            "exporter the trace headers were forwarded unchanged and no trace id was recorded.",
            value=self._invalid_trace_headers(),
        )
        yield CounterMetricFamily(
            "sidecar_request_header_timeouts",
            "Client connections closed because a request's headers did not arrive within "
            "proxy.request_header_timeout (slow or stalled clients, slowloris).",
            value=self._header_timeouts(),
        )


# The refusals access control makes; any other failure counts as `error`.
_ACCESS_RESULTS = frozenset({"unauthenticated", "forbidden", "rate_limited"})


class TenantMetrics:
    """Per-tenant requests by result and model tokens by type; an Exchange observer."""

    def __init__(self, registry: CollectorRegistry, label_tenant: Callable[[str | None], str]) -> None:
        self._label_tenant = label_tenant
        self._requests = Counter(
            "sidecar_tenant_requests",
            "Requests by tenant ('none': anonymous) and result: ok, error (the upstream's or the "
            "sidecar's), unauthenticated, forbidden, rate_limited.",
            ["tenant", "result"],
            registry=registry,
        )
        self._tokens = Counter(
            "sidecar_tenant_tokens",
            "Model tokens by tenant and type (input, output), as the model server reported or the sidecar counted.",
            ["tenant", "type"],
            registry=registry,
        )
        self._request_counts = LabelledChildren(self._requests)
        self._token_counts = LabelledChildren(self._tokens)

    def __call__(self, exchange: Exchange) -> None:
        tenant = self._label_tenant(exchange.principal.tenant) or "none"
        error_type = exchange.error_type
        if error_type is None and exchange.status < 500:
            result = "ok"
        else:
            result = error_type if error_type in _ACCESS_RESULTS else "error"
        self._request_counts(tenant, result).inc()
        gen_ai = exchange.gen_ai
        if gen_ai is not None:
            for kind, count in (("input", gen_ai.input_tokens), ("output", gen_ai.output_tokens)):
                if count:
                    self._token_counts(tenant, kind).inc(count)
