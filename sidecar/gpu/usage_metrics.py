"""Prometheus metrics of the GPU time, energy and cost attributed to requests.

An Exchange observer: each Exchange that carries `usage` adds to per-model
energy and GPU-time counters, a per-model histogram of energy per output
token, and per-model, per-tenant cost counters (local and cloud equivalent);
it also feeds the payback estimate, which is read at scrape time. Label values
go through the caller's bounding callables, so cardinality stays bounded.
`UnattributedCollector` serves, beside them, what no request was charged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.exchange import Exchange
from sidecar.gpu.attribution import Unattributed
from sidecar.gpu.cost import CostModel, Payback

# From a small model's decode step on a shared GPU (hundredths of a joule per
# token) to a large model's long prefill charged to a few tokens (tens of joules).
ENERGY_PER_TOKEN_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)

LOCAL = "local"
CLOUD_EQUIVALENT = "cloud_equivalent"


class PaybackGauge(Collector):
    """`sidecar_cost_payback_months`, present only while there is an estimate (never NaN or +Inf)."""

    NAME = "sidecar_cost_payback_months"
    HELP = ("Months for the savings against the configured cloud prices (less electricity), at the rate of "
            "the last 24 hours, to pay back gpu.cost.hardware_price.")  # fmt: skip

    def __init__(self, payback: Payback) -> None:
        self._payback = payback

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        months = self._payback.months()
        if months is not None:
            yield GaugeMetricFamily(self.NAME, self.HELP, value=months)


class UnattributedCollector(Collector):
    """What the GPUs drew or spent that no request was charged (idle power under
    `gpu.idle_power: unattributed`, and anything while no request was at the model server), read at scrape time:
    `sidecar_gpu_unattributed_energy_joules_total`, `sidecar_gpu_unattributed_seconds_total` and its price,
    `sidecar_cost_unattributed_total`."""

    def __init__(self, unattributed: Callable[[], Unattributed], cost: CostModel) -> None:
        self._unattributed = unattributed
        self._cost = cost

    def describe(self) -> Iterator[CounterMetricFamily]:
        return self._families(Unattributed(0.0, 0.0))

    def collect(self) -> Iterator[CounterMetricFamily]:
        return self._families(self._unattributed())

    def _families(self, loose: Unattributed) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "sidecar_gpu_unattributed_energy_joules",
            "GPU energy charged to no request (joules): idle power under gpu.idle_power: unattributed, and "
            "energy drawn while no request was at the model server.",
            value=loose.energy_joules,
        )
        yield CounterMetricFamily(
            "sidecar_gpu_unattributed_seconds",
            "GPU time not charged to a request as busy time: idle, or busy while no request was at the model server.",
            value=loose.gpu_seconds,
        )
        yield CounterMetricFamily(
            "sidecar_cost_unattributed",
            f"Cost of what no request was charged, in {self._cost.currency}: electricity for the unattributed "
            "energy and the hardware's write-off for the unattributed GPU time.",
            value=self._cost.local(loose.energy_joules, loose.gpu_seconds),
        )


class UsageMetrics:
    """Counts attributed GPU time, energy and cost per Exchange; Exchanges without `usage` are ignored."""

    def __init__(
        self,
        registry: CollectorRegistry,
        label_model: Callable[[str | None], str],
        label_tenant: Callable[[str | None], str],
        payback: Payback,
        currency: str,
    ) -> None:
        self._label_model = label_model
        self._label_tenant = label_tenant
        self._payback = payback
        self._energy = Counter(
            "sidecar_gpu_energy_joules",
            "GPU energy attributed to requests (joules), by requested model.",
            ["model"],
            registry=registry,
        )
        self._gpu_seconds = Counter(
            "sidecar_gpu_seconds",
            "GPU busy time (utilisation x wall time) attributed to requests, by requested model.",
            ["model"],
            registry=registry,
        )
        self._energy_per_token = Histogram(
            "sidecar_gpu_energy_per_output_token_joules",
            "GPU energy attributed to a request divided by its output tokens (joules).",
            ["model"],
            buckets=ENERGY_PER_TOKEN_BUCKETS,
            registry=registry,
        )
        self._cost = Counter(
            "sidecar_cost",
            f"Cost of requests in {currency}: local (electricity and amortised hardware) or "
            "cloud_equivalent (the same tokens at the configured cloud prices).",
            ["model", "tenant", "kind"],
            registry=registry,
        )
        Info("sidecar_cost_currency", "Currency of sidecar_cost_total.", registry=registry).info({"currency": currency})
        registry.register(PaybackGauge(payback))
        # labels() validates and locks on every call, which costs more than the
        # increment itself; the children are bounded by the bounded label values.
        self._by_model: dict[str, tuple[Counter, Counter, Histogram]] = {}
        self._by_cost: dict[tuple[str, str, str], Counter] = {}

    def __call__(self, exchange: Exchange) -> None:
        usage = exchange.usage
        if usage is None:
            return
        call = exchange.gen_ai
        requested = (call.request_model or call.response_model) if call is not None else None
        model = self._label_model(requested) or "unknown"
        children = self._by_model.get(model)
        if children is None:
            children = self._by_model[model] = (
                self._energy.labels(model),
                self._gpu_seconds.labels(model),
                self._energy_per_token.labels(model),
            )
        energy, gpu_seconds, per_token = children
        energy.inc(usage.energy_joules)
        gpu_seconds.inc(usage.gpu_seconds)
        if call is not None and call.output_tokens:
            per_token.observe(usage.energy_joules / call.output_tokens)
        if usage.cost_local is not None or usage.cost_cloud_equivalent is not None:
            tenant = self._label_tenant(exchange.principal.tenant) or "none"
            if usage.cost_local is not None:
                self._cost_child(model, tenant, LOCAL).inc(usage.cost_local)
            if usage.cost_cloud_equivalent is not None:
                self._cost_child(model, tenant, CLOUD_EQUIVALENT).inc(usage.cost_cloud_equivalent)
                self._payback.record(usage)

    def _cost_child(self, model: str, tenant: str, kind: str) -> Counter:
        key = (model, tenant, kind)
        child = self._by_cost.get(key)
        if child is None:
            child = self._by_cost[key] = self._cost.labels(model, tenant, kind)
        return child
