"""Metric observers in isolation: exemplars, bounded labels, GenAI series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from sidecar.telemetry.metrics import BoundedLabel, ExchangeMetrics, GenAiMetrics
from tests.support.records import TRACE_ID, make_exchange

exchange = make_exchange


def families(registry: CollectorRegistry) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_latency_histograms_carry_the_trace_id_as_exemplar():
    registry = CollectorRegistry()
    ExchangeMetrics(registry)(exchange())
    GenAiMetrics(registry, max_models=10)(exchange())
    found = families(registry)
    for name in ("http_server_request_duration_seconds", "gen_ai_server_request_duration_seconds",
                 "gen_ai_server_time_to_first_token_seconds", "gen_ai_server_time_per_output_token_seconds"):  # fmt: skip
        exemplars = [s.exemplar for s in found[name].samples if s.exemplar is not None]
        assert exemplars and exemplars[0].labels == {"trace_id": TRACE_ID}, name
    # No trace id, no exemplar (never an empty or made-up one).
    registry = CollectorRegistry()
    ExchangeMetrics(registry)(exchange(trace_id=None))
    assert all(s.exemplar is None for s in families(registry)["http_server_request_duration_seconds"].samples)


def test_gen_ai_series_and_labels():
    registry = CollectorRegistry()
    GenAiMetrics(registry, max_models=10, provider_name="vllm")(exchange())
    found = families(registry)
    count = [s for s in found["gen_ai_server_request_duration_seconds"].samples if s.name.endswith("_count")][0]
    assert count.labels == {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "vllm",
                            "gen_ai_request_model": "llama", "error_type": ""}  # fmt: skip
    tokens = {s.labels["gen_ai_token_type"]: s.value for s in found["gen_ai_client_token_usage"].samples if s.name.endswith("_sum")}
    assert tokens == {"input": 30, "output": 50}


def test_failed_calls_count_in_duration_but_not_in_ttft():
    registry = CollectorRegistry()
    GenAiMetrics(registry, max_models=10)(exchange(status=500, error_type=None))
    found = families(registry)
    (count,) = [s for s in found["gen_ai_server_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert count.labels["error_type"] == "500"
    assert not [s for s in found["gen_ai_server_time_to_first_token_seconds"].samples if s.name.endswith("_count")]


def test_bounded_label():
    label = BoundedLabel(2)
    assert [label(v) for v in ("a", "b", "c", "a", "d", None)] == ["a", "b", "other", "a", "other", ""]
