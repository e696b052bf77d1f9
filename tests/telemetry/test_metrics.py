"""Metric observers in isolation: exemplars, bounded labels, GenAI series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from sidecar.telemetry.metrics import BoundedLabel, ExchangeMetrics, GenAiMetrics, LiveGauges
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


HTTP_LABELS = {"http_request_method", "url_scheme", "http_response_status_code", "http_route", "error_type"}


def test_http_duration_and_body_sizes_carry_the_required_attributes():
    registry = CollectorRegistry()
    observe = ExchangeMetrics(registry)
    observe(exchange(scheme="https"))
    observe(exchange(status=502, error_type="upstream_connect_error", method="QUERY", route=None))
    found = families(registry)
    for name in ("http_server_request_duration_seconds", "http_server_request_body_size_bytes",
                 "http_server_response_body_size_bytes"):  # fmt: skip
        counts = [s.labels for s in found[name].samples if s.name.endswith("_count")]
        assert counts == [
            {"http_request_method": "POST", "url_scheme": "https", "http_response_status_code": "200",
             "http_route": "/v1/chat/completions", "error_type": ""},
            {"http_request_method": "QUERY", "url_scheme": "http", "http_response_status_code": "502",
             "http_route": "other", "error_type": "upstream_connect_error"},
        ], name  # fmt: skip


def live_gauges(active) -> LiveGauges:  # type: ignore[no-untyped-def]
    return LiveGauges(active_requests=active, draining=lambda: False, observer_failures=dict,
                      spans_dropped=lambda: 0, invalid_trace_headers=lambda: 0)  # fmt: skip


def test_active_requests_by_method_and_scheme_stay_bounded_and_fall_to_zero():
    in_flight = {("GET", "http"): 2, ("PURGE", "http"): 1, ("MKCOL", "http"): 1, ("QUERY", "https"): 1}
    gauges = live_gauges(lambda: dict(in_flight))
    registry = CollectorRegistry()
    registry.register(gauges)

    def active() -> dict[tuple[str, str], float]:
        samples = families(registry)["http_server_active_requests"].samples
        return {(s.labels["http_request_method"], s.labels["url_scheme"]): s.value for s in samples}

    assert active() == {("GET", "http"): 2, ("_OTHER", "http"): 2, ("QUERY", "https"): 1}
    in_flight.clear()
    # A series once seen stays, at zero: sum() over it reads 0, not "no data".
    assert active() == {("GET", "http"): 0, ("_OTHER", "http"): 0, ("QUERY", "https"): 0}
    for index in range(1000):
        in_flight[(f"M{index}", "http")] = 1
    assert active()[("_OTHER", "http")] == 1000 and len(active()) == 3
