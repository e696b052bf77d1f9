"""Metrics of access control: authentication failures, rate-limit refusals, and per-tenant traffic.

Counts kept by the authenticator and the limiter are read at scrape time
(nothing to keep in sync); per-tenant traffic is counted from Exchanges,
under a tenant label bounded by `metrics.max_tenants`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.exchange import Exchange
from sidecar.proxy.access import AccessControl

# The refusals access control makes; any other failure counts as `error`.
_ACCESS_RESULTS = frozenset({"unauthenticated", "forbidden", "rate_limited"})


class AccessCollector(Collector):
    """`sidecar_auth_failures_total{reason}`, `sidecar_rate_limit_rejections_total{limit}`,
    `sidecar_rate_limit_subjects`."""

    def __init__(self, access: AccessControl) -> None:
        self._access = access

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        access = self._access
        failures = CounterMetricFamily(
            "sidecar_auth_failures",
            "Requests refused by authentication, by reason: missing, malformed, unknown_key, expired, "
            "bad_signature, wrong_audience, unknown_kid, algorithm_not_allowed, model_not_allowed, ...",
            labels=["reason"],
        )
        for reason, count in sorted(access.auth_failures.items()):
            failures.add_metric([reason], count)
        yield failures
        limiter = access.limiter
        rejections = CounterMetricFamily(
            "sidecar_rate_limit_rejections",
            "Requests refused with 429 by rate limits, by the limit that refused: requests, tokens, "
            "concurrent_streams.",
            labels=["limit"],
        )
        if limiter is not None:
            for limit, count in sorted(limiter.rejections.items()):
                rejections.add_metric([limit], count)
        yield rejections
        yield GaugeMetricFamily(
            "sidecar_rate_limit_subjects",
            "Tenants, credentials and client IPs whose rate-limit buckets are held (bounded by limits.max_tracked).",
            value=limiter.tracked if limiter is not None else 0,
        )


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
        self._children: dict[tuple[str, str], Counter] = {}
        self._token_children: dict[tuple[str, str], Counter] = {}

    def __call__(self, exchange: Exchange) -> None:
        tenant = self._label_tenant(exchange.principal.tenant) or "none"
        error_type = exchange.error_type
        if error_type is None and exchange.status < 500:
            result = "ok"
        else:
            result = error_type if error_type in _ACCESS_RESULTS else "error"
        key = (tenant, result)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(tenant, result)
        child.inc()
        gen_ai = exchange.gen_ai
        if gen_ai is not None:
            for kind, count in (("input", gen_ai.input_tokens), ("output", gen_ai.output_tokens)):
                if count:
                    token_key = (tenant, kind)
                    token_child = self._token_children.get(token_key)
                    if token_child is None:
                        token_child = self._token_children[token_key] = self._tokens.labels(tenant, kind)
                    token_child.inc(count)
