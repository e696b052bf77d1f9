"""The audit document schema: every field, its Elasticsearch type, and what it means.

One table serves three readers: the Elasticsearch index template that
`sidecar es setup` installs (mappings), the written reference for auditors
(`docs/audit-schema.md`, generated from this table and checked by a test), and
the tests that require every field the sidecar writes to be listed here.

Field names follow the Elastic Common Schema where ECS has one; the
sidecar's own fields live under `sidecar.*`. Types are chosen for the
queries auditors run: identifiers, names and paths are `keyword` (exact
match, aggregations), free text is `match_only_text` with a keyword
sub-field, times are `date`, addresses are `ip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = "1"
"""Bumped when a field changes meaning or type; new optional fields do not bump it."""
ECS_VERSION = "8.17.0"


@dataclass(frozen=True, slots=True)
class AuditField:
    name: str
    es_type: str
    description: str
    redacted: bool = False
    """Free text that passes through redaction before it is stored."""


_KEYWORD = "keyword"
_TEXT = "match_only_text"

FIELDS: tuple[AuditField, ...] = (
    AuditField("@timestamp", "date", "When the request reached the sidecar (UTC, nanosecond precision)."),
    AuditField("message", _TEXT, "One-line summary, e.g. `POST /v1/chat/completions 200`.", redacted=True),
    AuditField("ecs.version", _KEYWORD, "ECS version the document follows."),
    AuditField("data_stream.type", "constant_keyword", "Always `logs`."),
    AuditField("data_stream.dataset", "constant_keyword", "`audit.elasticsearch.dataset`, default `sidecar.audit`."),
    AuditField("data_stream.namespace", "constant_keyword", "`audit.elasticsearch.namespace`, default `default`."),
    AuditField("event.kind", _KEYWORD, "`event` for requests and lifecycle events, `state` for checkpoints, "
               "`alert` for alerts firing and resolving."),
    AuditField("event.category", _KEYWORD, "ECS categories: `web` for requests (plus `authentication` for refused credentials), `configuration`, `process`."),
    AuditField("event.type", _KEYWORD, "ECS types: `access`, `error`, `denied`, `change`, `start`, `end`, `info`."),
    AuditField(
        "event.action",
        _KEYWORD,
        "`http-request`, `model-call`, `sidecar-start` (with the config's digest), `sidecar-stop`, `config-reload`, "
        "`audit-checkpoint`, `audit-events-dropped`, `audit-spool-recovered`, `audit-sink-recovered`, `gpu-xid`, "
        "`gpu-lost`, `gpu-nvml-unavailable`, `gpu-driver-reloaded`, `gpu-recovered`, `gpu-read-timeout`, `gpu-stale`, "
        "`alert-firing`, `alert-resolved`.",
    ),
    AuditField("event.outcome", _KEYWORD, "`success`, `failure` (4xx/5xx, timeouts, upstream errors) or `unknown`."),
    AuditField("event.reason", _KEYWORD, "Why a non-request event happened, e.g. the reload's cause."),
    AuditField("event.duration", "long", "Request duration in nanoseconds."),
    AuditField("event.id", _KEYWORD, "Unique id of this document (random, 128 bits)."),
    AuditField("event.sequence", "long", "Position in this instance's chain: 0, 1, 2, ... without gaps."),
    AuditField("event.hash", _KEYWORD, "SHA-256 (hex) of the canonical document without this field; the document `_id`."),
    AuditField("event.created", "date", "When the sidecar wrote the document."),
    AuditField("event.start", "date", "Request start (same as @timestamp)."),
    AuditField("event.end", "date", "Request end."),
    AuditField("trace.id", _KEYWORD, "W3C trace id (32 hex) of the request's trace."),
    AuditField("span.id", _KEYWORD, "The sidecar's span id (16 hex)."),
    AuditField("service.name", _KEYWORD, "`tracing.service_name`, default `inference-sidecar`."),
    AuditField("service.node.name", _KEYWORD, "Sidecar instance (`instance_id`, else host name); one chain per value."),
    AuditField("service.version", _KEYWORD, "Sidecar version."),
    AuditField("host.name", _KEYWORD, "Host (pod) name."),
    AuditField("user.id", _KEYWORD, "Authenticated user id; absent for anonymous requests."),
    AuditField("user.name", _KEYWORD, "Authenticated user name; absent for anonymous requests."),
    AuditField("organization.id", _KEYWORD, "Tenant of the caller; absent for anonymous requests."),
    AuditField("client.ip", "ip", "Address of the peer that connected to the sidecar."),
    AuditField("client.port", "long", "Port of that peer."),
    AuditField("source.ip", "ip", "Same as client.ip (ECS asks for both)."),
    AuditField("user_agent.original", _KEYWORD, "User-Agent header.", redacted=True),
    AuditField("http.version", _KEYWORD, "HTTP version of the client's request."),
    AuditField("http.request.id", _KEYWORD, "Request id (the `proxy.request_id_header` value)."),
    AuditField("http.request.method", _KEYWORD, "HTTP method."),
    AuditField("http.request.mime_type", _KEYWORD, "Request Content-Type."),
    AuditField("http.request.body.bytes", "long", "Request body size as received."),
    AuditField("http.response.status_code", "long", "Status the client received (499: client left first)."),
    AuditField("http.response.mime_type", _KEYWORD, "Response Content-Type."),
    AuditField("http.response.body.bytes", "long", "Response body bytes relayed to the client."),
    AuditField("url.path", _KEYWORD, "Request path.", redacted=True),
    AuditField("url.query", _KEYWORD, "Query string (credentials and personal data masked).", redacted=True),
    AuditField("url.scheme", _KEYWORD, "`http` or `https`."),
    AuditField("url.domain", _KEYWORD, "Host the client asked for.", redacted=True),
    AuditField("error.type", _KEYWORD, "Sidecar error code, e.g. `upstream_timeout`, `request_body_too_large`."),
    AuditField("error.message", _TEXT, "What went wrong, in words.", redacted=True),
    AuditField("gen_ai.operation.name", _KEYWORD, "`chat`, `text_completion`, `embeddings` or `predict`."),
    AuditField("gen_ai.provider.name", _KEYWORD, "`llm.provider_name` when set."),
    AuditField("gen_ai.request.model", _KEYWORD, "Model the client asked for."),
    AuditField("gen_ai.response.model", _KEYWORD, "Model that answered."),
    AuditField("gen_ai.usage.input_tokens", "long", "Prompt tokens."),
    AuditField("gen_ai.usage.output_tokens", "long", "Completion tokens."),
    AuditField("gen_ai.response.finish_reasons", _KEYWORD, "Why generation stopped, per choice."),
    AuditField("sidecar.schema_version", _KEYWORD, "Version of this schema."),
    AuditField("sidecar.outcome", _KEYWORD, "How the exchange ended: completed, client_closed, rejected, "
               "upstream_unavailable, upstream_timeout, upstream_error, aborted."),  # fmt: skip
    AuditField("sidecar.route", _KEYWORD, "Route template, e.g. `/v1/chat/completions`."),
    AuditField("sidecar.upstream.url", _KEYWORD, "Model server the request went to."),
    AuditField("sidecar.upstream.status_code", "long", "Status the model server answered."),
    AuditField("sidecar.auth.method", _KEYWORD, "`none`, `api_key` or `jwt`."),
    AuditField("sidecar.auth.tier", _KEYWORD, "Caller's tier (rate-limit class)."),
    AuditField(
        "sidecar.auth.credential_id", _KEYWORD, "The API key's id or the JWT's `jti`: names the credential, never holds it."
    ),
    AuditField("sidecar.timing.upstream_response_start_ms", "float", "Request start to model server's headers."),
    AuditField("sidecar.timing.first_byte_ms", "float", "Request start to response headers sent to the client."),
    AuditField("sidecar.timing.time_to_first_token_ms", "float", "Request start to first content chunk (streams)."),
    AuditField("sidecar.timing.time_per_output_token_ms", "float", "Mean time between output tokens (streams)."),
    AuditField("sidecar.timing.proxy_overhead_ms", "float", "Time spent inside the sidecar itself."),
    AuditField("sidecar.gen_ai.protocol", _KEYWORD, "Wire protocol recognised: openai, kserve, tgi, ollama."),
    AuditField("sidecar.gen_ai.stream", "boolean", "Whether the answer was streamed."),
    AuditField("sidecar.gen_ai.input_token_source", _KEYWORD, "`reported` by the server or `counted`."),
    AuditField("sidecar.gen_ai.output_token_source", _KEYWORD, "`reported` by the server or `counted`."),
    AuditField("sidecar.gpu.seconds", "float", "The request's share of GPU busy time (see docs/gpu-attribution.md)."),
    AuditField("sidecar.gpu.energy_joules", "float", "The request's share of GPU energy."),
    AuditField("sidecar.cost.local", "float", "Electricity plus amortised hardware for this request."),
    AuditField("sidecar.cost.cloud_equivalent", "float", "The same tokens at the configured cloud prices."),
    AuditField("sidecar.cost.currency", _KEYWORD, "`gpu.cost.currency`."),
    AuditField("sidecar.content.request_sha256", _KEYWORD, "SHA-256 of the request body (`audit.content: sha256`)."),
    AuditField("sidecar.content.response_sha256", _KEYWORD, "SHA-256 of the response body as relayed."),
    AuditField("sidecar.content.request", _TEXT, "Request body head, redacted (`audit.content: redacted`).",
               redacted=True),  # fmt: skip
    AuditField("sidecar.content.response", _TEXT, "Response body head, redacted.", redacted=True),
    AuditField("sidecar.content.truncated", "boolean", "A kept body was cut at `audit.content_max_bytes`."),
    AuditField("sidecar.chain.id", _KEYWORD, "Random id of this chain, drawn when it started (first start, wiped spool)."),
    AuditField("sidecar.chain.prev_hash", _KEYWORD, "event.hash of the previous document in this chain."),
    AuditField("sidecar.checkpoint.chain_id", _KEYWORD, "Chain the checkpoint covers."),
    AuditField("sidecar.checkpoint.sequence", "long", "Chain position the checkpoint covers (its own predecessor)."),
    AuditField("sidecar.checkpoint.head_hash", _KEYWORD, "event.hash at that position."),
    AuditField("sidecar.checkpoint.time", "date", "When the checkpoint was signed."),
    AuditField("sidecar.checkpoint.interval_s", "float", "Promised time to the next checkpoint."),
    AuditField("sidecar.checkpoint.final", "boolean", "Written at a clean stop: nothing follows until a restart."),
    AuditField("sidecar.checkpoint.algorithm", _KEYWORD, "`ed25519`, `hmac-sha256`."),
    AuditField("sidecar.checkpoint.key_id", _KEYWORD, "SHA-256 (first 16 hex) of the public key or HMAC key."),
    AuditField("sidecar.checkpoint.signature", _KEYWORD, "Signature (base64) over the canonical checkpoint payload."),
    AuditField("sidecar.config.changed", _KEYWORD, "Keys a reload changed."),
    AuditField("sidecar.config.restart_required", _KEYWORD, "Changed keys that wait for a restart."),
    AuditField("sidecar.config.sha256", _KEYWORD, "Digest of the effective configuration."),
    AuditField("rule.name", _KEYWORD, "The alert rule (alertname) of an `alert-firing` or `alert-resolved` event."),
    AuditField("rule.description", _TEXT, "The alert's summary annotation."),
    AuditField("rule.ruleset", _KEYWORD, "`sidecar` for configured and default rules, `slo:<name>` for burn-rate alerts."),
    AuditField("sidecar.alert.state", _KEYWORD, "`firing` or `resolved`."),
    AuditField("sidecar.alert.severity", _KEYWORD, "The alert's severity label."),
    AuditField("sidecar.alert.fingerprint", _KEYWORD, "Alertmanager's fingerprint of the alert's labels."),
    AuditField("sidecar.alert.labels", "flattened", "Every label of the alert."),
    AuditField("sidecar.alert.value", "double", "The rule's value when the alert last held."),
    AuditField("sidecar.alert.active_at", "date", "When the condition started to hold."),
    AuditField("sidecar.gpu_event.gpu", _KEYWORD, "GPU index a GPU event concerns."),
    AuditField("sidecar.gpu_event.uuid", _KEYWORD, "GPU UUID a GPU event concerns."),
    AuditField("sidecar.gpu_event.xid", "long", "XID error code."),
    AuditField("sidecar.audit.dropped_events", "long", "Events dropped (spool full, fail_open) since the last notice."),
    AuditField("sidecar.audit.quarantined_bytes", "long", "Corrupt spool bytes set aside at recovery."),
    AuditField("sidecar.audit.sink", _KEYWORD, "The sink an `audit-sink-recovered` event is about: `elasticsearch` or `file`."),
    AuditField("sidecar.audit.stalled_seconds", "double",
               "How long records waited with none delivered, up to the delivery that ended it (`@timestamp`)."),
)


def field_names() -> frozenset[str]:
    return frozenset(field.name for field in FIELDS)


def redacted_fields() -> tuple[str, ...]:
    return tuple(field.name for field in FIELDS if field.redacted)


def es_mappings() -> dict[str, Any]:
    """Elasticsearch mappings for every field, nested the way Elasticsearch stores dotted names."""
    properties: dict[str, Any] = {}
    for field in FIELDS:
        *parents, leaf = field.name.split(".") if field.name != "@timestamp" else ["@timestamp"]
        node = properties
        for parent in parents:
            node = node.setdefault(parent, {"properties": {}})["properties"]
        mapping: dict[str, Any] = {"type": field.es_type}
        if field.es_type == "date":
            mapping["type"] = "date_nanos" if field.name in ("@timestamp", "event.start", "event.end") else "date"
        if field.es_type == _TEXT:
            mapping["fields"] = {"keyword": {"type": "keyword", "ignore_above": 1024}}
        elif field.es_type == _KEYWORD:
            mapping["ignore_above"] = 4096
        node[leaf] = mapping
    # Unknown fields are kept in _source but not indexed, so a newer sidecar
    # writing a field this template does not know never fails a bulk request.
    return {"dynamic": False, "properties": properties}


def schema_reference() -> str:
    """The schema in Markdown; `docs/audit-schema.md` holds this text."""
    lines = [
        "# Audit document schema",
        "",
        "Generated from `sidecar/audit/schema.py`; do not edit by hand.",
        "",
        f"Schema version **{SCHEMA_VERSION}** (`sidecar.schema_version`), ECS {ECS_VERSION}. "
        "Fields marked *redacted* pass through the redaction step before they are stored. "
        "Absent values are omitted, never written as null.",
        "",
        "Tamper evidence: `event.hash` is the SHA-256 (hex) of the document's canonical JSON "
        "(keys sorted, no whitespace, UTF-8, `event.hash` removed), and `sidecar.chain.prev_hash` is the "
        "previous document's `event.hash` (64 zeros for the first), so each document commits to every one "
        "before it. A checkpoint document signs `{instance, sequence, head_hash, time}` (canonical JSON of "
        "`sidecar.checkpoint` without `signature`, plus `service.node.name`).",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]
    for field in FIELDS:
        note = " *redacted*" if field.redacted else ""
        lines.append(f"| `{field.name}` | {field.es_type} | {field.description}{note} |")
    return "\n".join(lines) + "\n"
