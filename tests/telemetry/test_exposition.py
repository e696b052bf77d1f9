"""The /metrics encoders: counters that keep their exact names, as dcgm-exporter writes them, in the
Prometheus text format; valid OpenMetrics; everything else exactly as prometheus-client writes it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from sidecar.telemetry.exposition import choose_encoder

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class ExactNameCounters(Collector):
    """Counters under names without `_total`, as dcgm-exporter serves DCGM fields."""

    def __init__(self, help_text: str = "Total energy consumption since boot (in mJ).") -> None:
        self.help_text = help_text
        self.yielded: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        family = Metric("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", self.help_text, "counter")
        family.add_sample("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", {"gpu": "0"}, 1523456789.0)
        family.add_sample("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", {"gpu": "1"}, 1498765432.0)
        self.yielded.append(family)
        yield family


def encode(registry: Collector, accept: str = "") -> tuple[str, str]:
    encoder, content_type = choose_encoder(accept)
    return encoder(registry).decode(), content_type


def ordinary_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("requests", "Requests.", ["code"], registry=registry).labels("200").inc(3)
    Gauge("in_flight", "In flight.", registry=registry).set(2)
    histogram = Histogram("latency_seconds", "Latency.", registry=registry, buckets=(0.1, 1.0))
    histogram.observe(0.05, exemplar={"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    return registry


def test_prometheus_text_writes_an_exact_name_counter_as_dcgm_exporter_does() -> None:
    registry = CollectorRegistry()
    collector = ExactNameCounters()
    registry.register(collector)
    text, content_type = encode(registry)

    assert content_type.startswith("text/plain")
    assert text.startswith(
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).\n"
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 1.523456789e+09\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1"} 1.498765432e+09\n'
    )
    assert "_total" not in text
    [family] = text_string_to_metric_families(text)
    assert (family.name, family.type) == ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter")
    assert collector.yielded[0].type == "counter", "the collector's own family is left as it was"


def test_openmetrics_serves_it_untyped_under_the_same_name() -> None:
    registry = CollectorRegistry()
    registry.register(ExactNameCounters())
    text, content_type = encode(registry, OPENMETRICS)

    assert content_type.startswith("application/openmetrics-text")
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown\n" in text
    [family] = parse_openmetrics(text)  # the parser refuses a counter sample without _total
    assert family.type == "unknown"
    assert [s.name for s in family.samples] == ["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] * 2


def test_a_help_text_cannot_forge_a_type_line() -> None:
    registry = CollectorRegistry()
    registry.register(ExactNameCounters("Energy.\n# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION untyped"))
    text, _ = encode(registry)

    assert text.count("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n") == 1
    assert "\\n# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION untyped\n" in text, "the help text, escaped, as written"


def test_other_families_are_written_exactly_as_prometheus_client_writes_them() -> None:
    registry = ordinary_registry()
    assert encode(registry)[0] == generate_latest(registry).decode()
    openmetrics, _ = encode(registry, OPENMETRICS)
    assert openmetrics == generate_openmetrics(registry).decode()
    assert "trace_id" in openmetrics, "exemplars still reach OpenMetrics scrapers"


def test_both_kinds_together() -> None:
    registry = ordinary_registry()
    registry.register(ExactNameCounters())
    text, _ = encode(registry)

    assert "# TYPE requests_total counter\nrequests_total{code=\"200\"} 3.0\n" in text
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text
    assert "# TYPE in_flight gauge\n" in text
    families = {family.name for family in parse_openmetrics(encode(registry, OPENMETRICS)[0])}
    assert families == {"requests", "in_flight", "latency_seconds", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"}
