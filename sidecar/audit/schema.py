"""The audit document schema: every field, its Elasticsearch type, and what it means.

One table serves three readers: the Elasticsearch index template that
`sidecar es setup` installs (mappings), the written reference for auditors
(`docs/audit-schema.md`, generated from this table and checked by a test), and
the tests that require every field the sidecar writes to be listed here.

A field outside the custom namespace (`sidecar.*`) is an ECS field of the
version in `ECS_VERSION`, with ECS's type and multi-fields, so that these
indices sit beside ECS-mapped ones without conflicts; docs/audit-schema.md
says why that version. The custom fields' types are chosen for the queries
auditors run: identifiers and names are `keyword`, free text is
`match_only_text`, times are `date`, addresses are `ip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = "2"
"""Bumped when a field changes meaning or type; new optional fields do not bump it."""
ECS_VERSION = "9.4.0"
CUSTOM_NAMESPACE = "sidecar"
"""Every field that is not ECS's lives under this name."""


@dataclass(frozen=True, slots=True)
class AuditField:
    name: str
    es_type: str
    description: str
    redacted: bool = False
    """Free text that passes through redaction before it is stored."""
    multi_fields: tuple[tuple[str, str], ...] = ()
    """(sub-field name, type) pairs, as ECS declares them for the field."""


_KEYWORD = "keyword"
_TEXT = "match_only_text"
_TEXT_SUBFIELD = (("text", _TEXT),)

FIELDS: tuple[AuditField, ...] = (
    AuditField("@timestamp", "date", "When the request reached the sidecar (UTC; microseconds in the document, "
               "milliseconds in the index, as ECS maps it; `event.sequence` orders records within a millisecond)."),
    AuditField("message", _TEXT, "One-line summary, e.g. `POST /v1/chat/completions 200`.", redacted=True),
    AuditField("ecs.version", _KEYWORD, "ECS version the document follows."),
    AuditField("data_stream.type", "constant_keyword", "Always `logs`."),
    AuditField("data_stream.dataset", "constant_keyword", "`audit.elasticsearch.dataset`, default `sidecar.audit`."),
    AuditField("data_stream.namespace", "constant_keyword", "`audit.elasticsearch.namespace`, default `default`."),
    AuditField("event.kind", _KEYWORD, "`event` for requests and lifecycle events, `state` for checkpoints, "
               "`alert` for alerts firing and resolving."),
    AuditField("event.category", _KEYWORD, "`web` for requests, `authentication` for requests refused for their "
               "credentials, `process`, `configuration`, `host` (see the table above)."),
    AuditField("event.type", _KEYWORD, "A type ECS expects with the category: `access` (plus `error` for failures "
               "of the service), `start`, `end`, `change`, `info`."),
    AuditField(
        "event.action",
        _KEYWORD,
        "`http-request`, `model-call`, `sidecar-start` (with the config's digest), `sidecar-stop`, `config-reload`, "
        "`audit-checkpoint`, `audit-events-dropped`, `audit-spool-recovered`, `audit-sink-recovered`, `gpu-xid`, "
        "`gpu-lost`, `gpu-nvml-unavailable`, `gpu-driver-reloaded`, `gpu-recovered`, `gpu-read-timeout`, `gpu-stale`, "
        "`alert-firing`, `alert-resolved`.",
    ),
    AuditField("event.outcome", _KEYWORD, "Requests: `success`, `failure` (4xx/5xx, timeouts, upstream errors) or "
               "`unknown` (the client left first); `success` for start, stop, reload and a sink's recovery; absent "
               "on alerts and on records of type `info`, which report no attempt."),
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
    AuditField("user.name", _KEYWORD, "Authenticated user name; absent for anonymous requests.",
               multi_fields=_TEXT_SUBFIELD),
    AuditField("organization.id", _KEYWORD, "Tenant of the caller; absent for anonymous requests."),
    AuditField("client.ip", "ip", "Address of the peer that connected to the sidecar."),
    AuditField("client.port", "long", "Port of that peer."),
    AuditField("source.ip", "ip", "Same as client.ip (ECS asks for both)."),
    AuditField("source.port", "long", "Same as client.port."),
    AuditField("user_agent.original", _KEYWORD, "User-Agent header.", redacted=True, multi_fields=_TEXT_SUBFIELD),
    AuditField("http.version", _KEYWORD, "HTTP version of the client's request; absent when the request line was "
               "not read (a request the HTTP parser refused)."),
    AuditField("http.request.id", _KEYWORD, "Request id (the `proxy.request_id_header` value)."),
    AuditField("http.request.method", _KEYWORD, "HTTP method; absent when the request line was not read."),
    AuditField("http.request.body.bytes", "long", "Request body size as received."),
    AuditField("http.response.status_code", "long", "Status the client received (499: client left first)."),
    AuditField("http.response.body.bytes", "long", "Response body bytes relayed to the client."),
    AuditField("url.path", "wildcard", "Request path; absent when the request line was not read.", redacted=True),
    AuditField("url.query", _KEYWORD, "Query string (credentials and personal data masked).", redacted=True),
    AuditField("url.scheme", _KEYWORD, "`http` or `https`."),
    AuditField("url.domain", _KEYWORD, "Host the client asked for (Host header without its port; an IPv6 literal "
               "keeps its brackets); absent without a readable Host.", redacted=True),
    AuditField("url.port", "long", "Port in the Host header, when it names one."),
    AuditField("error.type", _KEYWORD, "Sidecar error code, e.g. `upstream_timeout`, `request_body_too_large`."),
    AuditField("error.message", _TEXT, "What went wrong, in words.", redacted=True),
    AuditField("gen_ai.operation.name", _KEYWORD, "`chat`, `text_completion`, `embeddings` or `predict`. (ECS beta.)"),
    AuditField("gen_ai.system", _KEYWORD, "`llm.provider_name` (e.g. `vllm`) when set; never guessed from the "
               "protocol. (ECS beta.)"),
    AuditField("gen_ai.request.model", _KEYWORD, "Model the client asked for. (ECS beta.)"),
    AuditField("gen_ai.response.model", _KEYWORD, "Model that answered. (ECS beta.)"),
    AuditField("gen_ai.usage.input_tokens", "integer", "Prompt tokens; absent when unknown or past an "
               "integer's range. (ECS beta.)"),
    AuditField("gen_ai.usage.output_tokens", "integer", "Completion tokens, likewise. (ECS beta.)"),
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
    AuditField("sidecar.http.request.content_type", _KEYWORD, "The request's Content-Type header, as sent "
               "(what it claims, not what the body is).", redacted=True),
    AuditField("sidecar.http.response.content_type", _KEYWORD, "The response's Content-Type header, as relayed."),
    AuditField("sidecar.gen_ai.protocol", _KEYWORD, "Wire protocol recognised: openai, kserve, tgi, ollama."),
    AuditField("sidecar.gen_ai.finish_reasons", _KEYWORD, "Why generation stopped, per choice, as the server said "
               "(ECS's `gen_ai.response.finish_reasons` is mapped `nested`, which cannot hold strings)."),
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
    AuditField("rule.description", _KEYWORD, "The alert's summary annotation."),
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


GENERATED_BEGIN = "<!-- begin: generated from sidecar/audit/schema.py (schema_tables) -->"
GENERATED_END = "<!-- end: generated -->"


def is_custom(name: str) -> bool:
    """Whether `name` is one of the sidecar's own fields rather than an ECS field."""
    return name.startswith(CUSTOM_NAMESPACE + ".")


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
        if field.es_type == _KEYWORD:
            mapping["ignore_above"] = 4096
        if field.multi_fields:
            mapping["fields"] = {name: {"type": es_type} for name, es_type in field.multi_fields}
        node[leaf] = mapping
    # Unknown fields are kept in _source but not indexed, so a newer sidecar
    # writing a field this template does not know never fails a bulk request.
    return {"dynamic": False, "properties": properties}


def schema_tables() -> str:
    """The field tables of docs/audit-schema.md, the text between its generated markers."""
    lines = ["", f"## ECS fields (ECS {ECS_VERSION})", "", "| field | type | meaning |", "|---|---|---|"]
    for field in FIELDS:
        if not is_custom(field.name):
            lines.append(_row(field))
    lines += ["", f"## Custom fields (`{CUSTOM_NAMESPACE}.*`)", "", "| field | type | meaning |", "|---|---|---|"]
    for field in FIELDS:
        if is_custom(field.name):
            lines.append(_row(field))
    return "\n".join(lines) + "\n"


def _row(field: AuditField) -> str:
    kind = field.es_type + "".join(f", `.{name}`: {es_type}" for name, es_type in field.multi_fields)
    note = " *redacted*" if field.redacted else ""
    return f"| `{field.name}` | {kind} | {field.description}{note} |"
