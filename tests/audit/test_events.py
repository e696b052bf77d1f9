"""ECS documents from Exchanges and lifecycle facts, checked against the written schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.audit.events import AuditIdentity, exchange_document, get_path, lifecycle_document
from sidecar.audit.schema import FIELDS, es_mappings, field_names, schema_reference
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
    assert get_path(doc, "gen_ai.response.finish_reasons") == ["stop"]
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
    assert outcome(status=429, outcome=Outcome.REJECTED, error_type="rate_limited") == ("failure", ["access", "denied"])
    assert outcome(status=499, outcome=Outcome.CLIENT_CLOSED)[0] == "unknown"


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
        assert leaf["type"].startswith(field.es_type.split("_")[0]) or leaf["type"] == "date_nanos", field.name
    assert mappings["properties"]["client"]["properties"]["ip"]["type"] == "ip"
    assert mappings["properties"]["@timestamp"]["type"] == "date_nanos"


def test_the_written_schema_is_current() -> None:
    written = (REPO / "docs" / "audit-schema.md").read_text()
    assert written == schema_reference(), "regenerate with: python -c 'from sidecar.audit.schema import schema_reference; print(schema_reference(), end=\"\")' > docs/audit-schema.md"
