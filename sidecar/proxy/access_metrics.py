"""Metrics of access control: authentication failures and rate-limit refusals.

Counts kept by access control are read at scrape time (nothing to keep in
sync). Per-tenant traffic is counted from Exchanges by
`sidecar.telemetry.metrics.TenantMetrics`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.proxy.access import AccessControl


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
