"""ECS documents from Exchanges and lifecycle facts, checked against the written schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit.events import AuditIdentity, exchange_document, get_path, lifecycle_document
from sidecar.audit.schema import (
    CUSTOM_NAMESPACE,
    ECS_VERSION,
    FIELDS,
    GENERATED_BEGIN,
    GENERATED_END,
    es_mappings,
    field_names,
    schema_tables,
)
from sidecar.exchange import BodyContent, Outcome, Principal
from tests.support.records import TRACE_ID, make_exchange

IDENTITY = AuditIdentity(
    service_name="inference-sidecar",
    node_name="node-a",
    service_version="0.1.0",
    host_name="host-a",
    dataset="sidecar.audit",
    namespace="default",
)
REPO = Path(__file__).resolve().parents[2]


def _leaves(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in doc.items():
        name = key if not prefix else f"{prefix}.{key}"
        if isinstance(value, dict):
            found.update(_leaves(value, name))
        else:
            found[name] = value
    return found


def test_a_model_call_becomes_an_ecs_document() -> None:
    exchange = make_exchange(
        principal=Principal(tenant="acme", user="alice", tier="paid", auth_method="api_key"),
        user_agent="openai-python/1.40",
        span_id="00f067aa0ba902b7",
        query="stream=true",
    )
    doc = exchange_document(exchange, IDENTITY, created=exchange.started_at + 2)
    assert doc["@timestamp"] == "2025-11-23T12:13:20.250000Z"
    assert doc["ecs"]["version"]
    assert doc["event"]["kind"] == "event"
    assert doc["event"]["category"] == ["web"]
    assert doc["event"]["action"] == "model-call"
    assert doc["event"]["outcome"] == "success"
    assert doc["event"]["duration"] == 1_500_000_000
    assert doc["event"]["end"] == "2025-11-23T12:13:21.750000Z"
    assert get_path(doc, "trace.id") == TRACE_ID
    assert get_path(doc, "span.id") == "00f067aa0ba902b7"
    assert get_path(doc, "user.name") == "alice"
    assert get_path(doc, "organization.id") == "acme"
    assert get_path(doc, "sidecar.auth.tier") == "paid"
    assert get_path(doc, "client.ip") == "127.0.0.1" == get_path(doc, "source.ip")
    assert get_path(doc, "url.query") == "stream=true"
    assert get_path(doc, "gen_ai.usage.input_tokens") == 30
    assert get_path(doc, "gen_ai.usage.output_tokens") == 50
    assert get_path(doc, "sidecar.gen_ai.finish_reasons") == ["stop"]
    assert get_path(doc, "gen_ai.request.model") == "llama"
    assert get_path(doc, "sidecar.timing.time_to_first_token_ms") == 250.0
    assert get_path(doc, "service.node.name") == "node-a"


def test_absent_values_are_left_out_not_null() -> None:
    doc = exchange_document(make_exchange(gen_ai=None, trace_id=None, user_agent=None), IDENTITY, created=0.0)
    leaves = _leaves(doc)
    assert None not in leaves.values()
    assert "trace.id" not in leaves and "gen_ai.request.model" not in leaves and "user.name" not in leaves
    assert doc["event"]["action"] == "http-request"


def test_outcomes_map_to_ecs_outcome_and_types() -> None:
    def outcome(**changes: Any) -> tuple[str, list[str]]:
        doc = exchange_document(make_exchange(**changes), IDENTITY, created=0.0)
        return doc["event"]["outcome"], doc["event"]["type"]

    assert outcome() == ("success", ["access"])
    assert outcome(status=404) == ("failure", ["access"])
    assert outcome(status=502, outcome=Outcome.UPSTREAM_UNAVAILABLE, error_type="upstream_connect_error") == (
        "failure",
        ["access", "error"],
    )
    # `denied` is no type ECS expects with `web`: a refusal is an access that failed.
    assert outcome(status=429, outcome=Outcome.REJECTED, error_type="rate_limited") == ("failure", ["access"])
    assert outcome(status=413, outcome=Outcome.REJECTED, error_type="request_body_too_large") == ("failure", ["access"])
    assert outcome(status=503, outcome=Outcome.REJECTED, error_type="service_unavailable") == (
        "failure",
        ["access", "error"],
    )
    assert outcome(status=499, outcome=Outcome.CLIENT_CLOSED, error_type="client_closed") == ("unknown", ["access"])


def test_every_field_written_is_in_the_schema() -> None:
    documents = [
        exchange_document(
            make_exchange(
                principal=Principal(tenant="t", user="u", tier="x", auth_method="jwt"),
                user_agent="ua",
                span_id="00f067aa0ba902b7",
                query="a=b",
                error_type="upstream_timeout",
                error_message="slow",
                content=BodyContent(request_sha256="0" * 64, response_sha256="1" * 64),
            ),
            IDENTITY,
            created=0.0,
        ),
        exchange_document(
            make_exchange(content=BodyContent(request_head=b"{}", response_head=b"data: x", truncated=True)),
            IDENTITY,
            created=0.0,
        ),
        lifecycle_document(
            IDENTITY, 0.0, action="config-reload", category=["configuration"], types=["change"],
            message="m", reason="SIGHUP", sidecar={"config": {"changed": ["a"], "restart_required": ["b"], "sha256": "c"}},
        ),  # fmt: skip
    ]
    known = field_names()
    for doc in documents:
        unknown = set(_leaves(doc)) - known
        assert not unknown, f"fields missing from audit/schema.py: {sorted(unknown)}"


def test_mappings_cover_every_field_with_its_type() -> None:
    mappings = es_mappings()
    assert mappings["dynamic"] is False
    for field in FIELDS:
        node: Any = mappings
        parts = [field.name] if field.name == "@timestamp" else field.name.split(".")
        for part in parts[:-1]:
            node = node["properties"][part]
        leaf = node["properties"][parts[-1]]
        assert leaf["type"] == field.es_type, field.name
        assert {name: sub["type"] for name, sub in leaf.get("fields", {}).items()} == dict(field.multi_fields), field.name
    assert mappings["properties"]["client"]["properties"]["ip"]["type"] == "ip"
    assert mappings["properties"]["@timestamp"]["type"] == "date"


def test_the_written_schema_is_current() -> None:
    written = (REPO / "docs" / "audit-schema.md").read_text()
    assert f"ECS {ECS_VERSION}" in written
    begin, end = written.index(GENERATED_BEGIN) + len(GENERATED_BEGIN), written.index(GENERATED_END)
    assert written[begin:end] == schema_tables(), (
        "regenerate the tables between the markers of docs/audit-schema.md from sidecar.audit.schema.schema_tables()"
    )
    custom = [field.name for field in FIELDS if field.name.startswith(f"{CUSTOM_NAMESPACE}.")]
    custom_table = written[written.index(f"## Custom fields (`{CUSTOM_NAMESPACE}.*`)") :]
    for name in custom:
        assert f"| `{name}` |" in custom_table, name


# --- ECS, field by field -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, domain, port",
    [
        ("127.0.0.1:38171", "127.0.0.1", 38171),
        ("api.example.com", "api.example.com", None),
        ("api.example.com:443", "api.example.com", 443),
        # ECS keeps the brackets of an IPv6 literal in url.domain.
        ("[::1]:8080", "[::1]", 8080),
        ("[2001:db8::1]", "[2001:db8::1]", None),
        ("api.example.com:", "api.example.com", None),
        # Not a host and port: nothing is recorded rather than something made up.
        ("api.example.com:http", None, None),
        ("api.example.com:99999", None, None),
        ("::1", None, None),
        ("[::1", None, None),
        ("", None, None),
    ],
)
def test_url_domain_holds_the_host_and_url_port_the_port(host: str, domain: str | None, port: int | None) -> None:
    doc = exchange_document(make_exchange(host=host), IDENTITY, created=0.0)
    assert get_path(doc, "url.domain") == domain
    assert get_path(doc, "url.port") == port


def test_mime_types_are_never_taken_from_the_content_type_headers() -> None:
    exchange = make_exchange(
        request_content_type="application/json; charset=utf-8", response_content_type="text/event-stream"
    )
    doc = exchange_document(exchange, IDENTITY, created=0.0)
    # ECS: http.*.mime_type describe the bodies' content, not what a header claims.
    assert get_path(doc, "http.request.mime_type") is None
    assert get_path(doc, "http.response.mime_type") is None
    assert get_path(doc, "sidecar.http.request.content_type") == "application/json; charset=utf-8"
    assert get_path(doc, "sidecar.http.response.content_type") == "text/event-stream"


def test_a_request_refused_before_its_request_line_was_read_records_no_request_line() -> None:
    exchange = make_exchange(
        method="", path="", http_version="", host="", route=None, gen_ai=None, status=431,
        outcome=Outcome.REJECTED, error_type="request_header_fields_too_large", error_message="a header line is too long",
    )  # fmt: skip
    doc = exchange_document(exchange, IDENTITY, created=0.0)
    leaves = _leaves(doc)
    for absent in ("http.request.method", "url.path", "http.version", "url.domain"):
        assert absent not in leaves, absent
    assert doc["message"] == "431 request_header_fields_too_large"
    assert get_path(doc, "http.response.status_code") == 431


def test_a_client_port_is_written_for_client_and_source() -> None:
    doc = exchange_document(make_exchange(client_address="::1", client_port=50123), IDENTITY, created=0.0)
    assert get_path(doc, "client.ip") == "::1" == get_path(doc, "source.ip")
    assert get_path(doc, "client.port") == 50123 == get_path(doc, "source.port")


def test_gen_ai_fields_are_those_of_ecs_9() -> None:
    identity = dataclasses.replace(IDENTITY, gen_ai_system="vllm")
    doc = exchange_document(make_exchange(), identity, created=0.0)
    assert doc["ecs"]["version"] == ECS_VERSION and ECS_VERSION.startswith("9.")
    assert doc["gen_ai"] == {
        "operation": {"name": "chat"},
        "request": {"model": "llama"},
        "response": {"model": "llama-3"},
        "system": "vllm",
        "usage": {"input_tokens": 30, "output_tokens": 50},
    }
    # The protocol says how the server speaks, not which product it is: no system is guessed.
    assert get_path(exchange_document(make_exchange(), IDENTITY, created=0.0), "gen_ai.system") is None


@pytest.mark.parametrize("reported", [-1, 2**31, 10**15])
def test_a_token_count_an_integer_field_cannot_hold_is_left_out(reported: int) -> None:
    exchange = make_exchange()
    assert exchange.gen_ai is not None
    call = dataclasses.replace(exchange.gen_ai, input_tokens=reported)
    doc = exchange_document(dataclasses.replace(exchange, gen_ai=call), IDENTITY, created=0.0)
    assert get_path(doc, "gen_ai.usage.input_tokens") is None
    assert get_path(doc, "gen_ai.usage.output_tokens") == 50


def test_refused_credentials_are_a_failed_authentication() -> None:
    for status, error_type in ((401, "unauthenticated"), (403, "forbidden")):
        exchange = make_exchange(status=status, outcome=Outcome.REJECTED, error_type=error_type, gen_ai=None)
        event = exchange_document(exchange, IDENTITY, created=0.0)["event"]
        assert (event["category"], event["type"], event["outcome"]) == (["authentication"], ["start"], "failure")


def test_records_of_no_attempt_carry_no_outcome() -> None:
    checkpoint = lifecycle_document(IDENTITY, 0.0, action="audit-checkpoint", category=["process"], types=["info"],
                                    message="m", kind="state")  # fmt: skip
    alert = lifecycle_document(IDENTITY, 0.0, action="alert-firing", category=["web"], types=["info"], message="m",
                               kind="alert", rule={"name": "HighErrorRate"})  # fmt: skip
    assert "outcome" not in checkpoint["event"] and "outcome" not in alert["event"]


def test_the_template_types_fields_as_ecs_maps_them() -> None:
    properties = es_mappings()["properties"]
    assert properties["url"]["properties"]["path"] == {"type": "wildcard"}
    assert properties["rule"]["properties"]["description"]["type"] == "keyword"
    user_name = properties["user"]["properties"]["name"]
    assert user_name["type"] == "keyword" and user_name["fields"] == {"text": {"type": "match_only_text"}}
    user_agent = properties["user_agent"]["properties"]["original"]
    assert user_agent["type"] == "keyword" and user_agent["fields"] == {"text": {"type": "match_only_text"}}
    usage = properties["gen_ai"]["properties"]["usage"]["properties"]
    assert usage["input_tokens"] == {"type": "integer"} == usage["output_tokens"]
    assert "finish_reasons" not in properties["gen_ai"]["properties"]["response"]["properties"]
    # ECS's text fields have no `.keyword` sub-field: none is added.
    assert "fields" not in properties["message"] and "fields" not in properties["error"]["properties"]["message"]
