"""Prometheus metrics fed by Exchanges, HealthResults and live gauges.

Names follow OpenTelemetry's HTTP semantic conventions translated to
Prometheus (`http.server.request.duration` -> `http_server_request_duration_seconds`)
so dashboards written for OTel-instrumented servers work unchanged; the
sidecar's own series are prefixed `sidecar_`. Every label has a bounded set of
values: unknown HTTP methods become `_OTHER` as the conventions require.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Enum, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.exchange import Exchange, HealthResult, HealthState, Outcome

# OpenTelemetry's advice for http.server.request.duration (stable HTTP conventions).
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "_OTHER"


class ExchangeMetrics:
    """Request counts, outcomes and latency from each Exchange."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, from the first byte read to the last byte written.",
            ["http_request_method", "http_response_status_code"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )
        self._outcomes = Counter(
            "sidecar_exchanges",
            "Requests handled by the proxy, by how they ended.",
            ["outcome"],
            registry=registry,
        )
        self._request_bytes = Counter(
            "sidecar_request_body_bytes",
            "Request body bytes received from clients.",
            registry=registry,
        )
        self._response_bytes = Counter(
            "sidecar_response_body_bytes",
            "Response body bytes relayed to clients.",
            registry=registry,
        )
        for outcome in Outcome:
            self._outcomes.labels(outcome.value)

    def __call__(self, exchange: Exchange) -> None:
        self._duration.labels(method_label(exchange.method), str(exchange.status)).observe(exchange.duration_s)
        self._outcomes.labels(exchange.outcome.value).inc()
        if exchange.request_body_bytes:
            self._request_bytes.inc(exchange.request_body_bytes)
        if exchange.response_body_bytes:
            self._response_bytes.inc(exchange.response_body_bytes)


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
            "sidecar_upstream_health_checks",
            "Active health probes of the upstream, by result.",
            ["result"],
            registry=registry,
        )
        self._latency = Histogram(
            "sidecar_upstream_health_check_duration_seconds",
            "Duration of active health probes of the upstream.",
            buckets=_PROBE_BUCKETS,
            registry=registry,
        )
        self._state.state(HealthState.UNKNOWN.value)
        for result in ("success", "failure"):
            self._probes.labels(result)

    def __call__(self, result: HealthResult) -> None:
        self._state.state(result.state.value)
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
        active_requests: Callable[[], int],
        draining: Callable[[], bool],
        observer_failures: Callable[[], dict[str, int]],
    ) -> None:
        self._active_requests = active_requests
        self._draining = draining
        self._observer_failures = observer_failures

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "http_server_active_requests",
            "Requests being handled by the proxy right now.",
            value=self._active_requests(),
        )
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
