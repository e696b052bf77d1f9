"""Audit documents in the Elastic Common Schema, built from Exchanges and lifecycle facts.

These functions run on the audit writer thread, never on the request path.
They produce plain nested dicts (as Elasticsearch stores `_source`) with
absent values left out: a value the sidecar does not know is never filled in.
Redaction, sequencing and hashing come after, in the pipeline. Every field
written here is listed in `audit/schema.py`; how records are categorised for
ECS is in docs/audit-schema.md.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from sidecar.audit.schema import ECS_VERSION, SCHEMA_VERSION
from sidecar.exchange import Exchange, Outcome


@dataclass(frozen=True, slots=True)
class AuditIdentity:
    """Who writes the documents: constant for the life of the process."""

    service_name: str
    node_name: str
    service_version: str
    host_name: str
    dataset: str
    namespace: str
    currency: str = "USD"
    """Of the cost fields."""
    gen_ai_system: str | None = None
    """ECS gen_ai.system: the model server product as configured (`llm.provider_name`)."""


def iso_time(seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC with microseconds, the form Elasticsearch dates take."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _base(identity: AuditIdentity, timestamp: float) -> dict[str, Any]:
    return {
        "@timestamp": iso_time(timestamp),
        "ecs": {"version": ECS_VERSION},
        "data_stream": {"type": "logs", "dataset": identity.dataset, "namespace": identity.namespace},
        "service": {
            "name": identity.service_name,
            "node": {"name": identity.node_name},
            "version": identity.service_version,
        },
        "host": {"name": identity.host_name},
        "sidecar": {"schema_version": SCHEMA_VERSION},
    }


# Refused credentials are a failed authentication (a session that did not start), so an auditor's
# `event.category:authentication` query finds every one. ECS expects no type with both `web` and
# `authentication` but `info`, which is for records of no attempt; so these are not `web` records.
_AUTH_ERRORS = frozenset({"unauthenticated", "forbidden"})
_AUTH_CATEGORIES = ("authentication",)
_AUTH_TYPES = ("start",)
_WEB_CATEGORIES = ("web",)
# The client's own doing: refused by the sidecar, or left before the answer. Not an `error` of the service.
_CLIENT_SIDE = frozenset({Outcome.COMPLETED, Outcome.REJECTED, Outcome.CLIENT_CLOSED})
_INT_MAX = 2**31 - 1
"""ECS maps token counts as `integer`; Elasticsearch refuses a document holding a larger one."""


def _event_outcome(exchange: Exchange) -> str:
    if exchange.outcome is Outcome.CLIENT_CLOSED and exchange.status < 400 or exchange.status == 499:
        return "unknown"
    if exchange.outcome is not Outcome.COMPLETED or exchange.status >= 400:
        return "failure"
    return "success"


def _event_types(exchange: Exchange) -> list[str]:
    # ECS expects `access`, `error` and `info` with `web`: a refusal (401, 429) is an access that failed.
    if exchange.status >= 500 or exchange.outcome not in _CLIENT_SIDE:
        return ["access", "error"]
    return ["access"]


@functools.lru_cache(maxsize=4096)
def _split_address(address: str | None) -> str | None:
    """aiohttp's `request.remote` is a bare IP; anything else (a unix socket) is not an `ip`."""
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _split_host(host: str) -> tuple[str | None, int | None]:
    """ECS url.domain and url.port from a Host header: `name[:port]` or `[IPv6][:port]`.

    A value that is neither is left out whole rather than guessed at. Cached: a
    sidecar sees a handful of Host values, and this runs on the writer thread.
    """
    if host.startswith("["):
        close = host.find("]")
        if close < 2:
            return None, None
        domain, rest = host[: close + 1], host[close + 1 :]
        if not rest:
            return domain, None
        if rest[0] != ":":
            return None, None
        port_text = rest[1:]
    else:
        domain, colon, port_text = host.partition(":")
        if not domain or ":" in port_text:
            return None, None
        if not colon:
            return domain, None
    if not port_text:
        return domain, None  # RFC 3986 allows an empty port: the scheme's default
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        return None, None
    return domain, int(port_text)


def _count(tokens: int | None) -> int | None:
    return tokens if tokens is not None and 0 <= tokens <= _INT_MAX else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _prune(value: dict[str, Any]) -> dict[str, Any]:
    """Drop None values and emptied sub-objects: absent fields are omitted, never null."""
    pruned: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if type(item) is dict:  # exact type: this runs ~30 times per document
            item = _prune(item)
            if not item:
                continue
        pruned[key] = item
    return pruned


def exchange_document(exchange: Exchange, identity: AuditIdentity, created: float) -> dict[str, Any]:
    """The audit document for one request through the proxy."""
    doc = _base(identity, exchange.started_at)
    end = exchange.started_at + exchange.duration_s
    gen_ai = exchange.gen_ai
    principal = exchange.principal
    client_ip = _split_address(exchange.client_address)
    domain, port = _split_host(exchange.host) if exchange.host else (None, None)
    refused_credentials = exchange.error_type in _AUTH_ERRORS
    # An empty method means the request line was never read (the HTTP parser refused the request).
    doc["message"] = (
        f"{exchange.method} {exchange.path} {exchange.status}"
        if exchange.method
        else f"{exchange.status} {exchange.error_type or 'request not read'}"
    )
    doc["event"] = {
        "kind": "event",
        "category": list(_AUTH_CATEGORIES if refused_credentials else _WEB_CATEGORIES),
        "type": list(_AUTH_TYPES) if refused_credentials else _event_types(exchange),
        "action": "model-call" if gen_ai is not None else "http-request",
        "outcome": _event_outcome(exchange),
        "duration": int(exchange.duration_s * 1e9),
        "id": os.urandom(16).hex(),
        "created": iso_time(created),
        "start": doc["@timestamp"],
        "end": iso_time(end),
    }
    doc["trace"] = {"id": exchange.trace_id}
    doc["span"] = {"id": exchange.span_id}
    doc["user"] = {"id": principal.user, "name": principal.user}
    doc["organization"] = {"id": principal.tenant}
    client_port = exchange.client_port if client_ip is not None else None
    doc["client"] = {"ip": client_ip, "port": client_port}
    doc["source"] = {"ip": client_ip, "port": client_port}
    doc["user_agent"] = {"original": exchange.user_agent}
    # No http.*.mime_type: ECS derives it from the body's content, never from Content-Type.
    doc["http"] = {
        "version": exchange.http_version or None,
        "request": {
            "id": exchange.request_id or None,
            "method": exchange.method or None,
            "body": {"bytes": exchange.request_body_bytes},
        },
        "response": {
            "status_code": exchange.status,
            "body": {"bytes": exchange.response_body_bytes},
        },
    }
    doc["url"] = {
        "path": exchange.path or None,
        "query": exchange.query or None,
        "scheme": exchange.scheme,
        "domain": domain,
        "port": port,
    }
    doc["error"] = {"type": exchange.error_type, "message": exchange.error_message}
    sidecar = doc["sidecar"]
    sidecar["http"] = {
        "request": {"content_type": exchange.request_content_type},
        "response": {"content_type": exchange.response_content_type},
    }
    sidecar["outcome"] = exchange.outcome.value
    sidecar["route"] = exchange.route
    sidecar["upstream"] = {"url": exchange.upstream, "status_code": exchange.upstream_status}
    sidecar["auth"] = {
        "method": principal.auth_method,
        "tier": principal.tier,
        "credential_id": principal.credential_id,
    }
    sidecar["timing"] = {
        "upstream_response_start_ms": _ms(exchange.upstream_response_start_s),
        "first_byte_ms": _ms(exchange.first_byte_s),
        "proxy_overhead_ms": _ms(exchange.proxy_overhead_s),
    }
    if gen_ai is not None:
        doc["gen_ai"] = {
            "operation": {"name": gen_ai.operation},
            "system": identity.gen_ai_system,
            "request": {"model": gen_ai.request_model},
            "response": {"model": gen_ai.response_model},
            "usage": {"input_tokens": _count(gen_ai.input_tokens), "output_tokens": _count(gen_ai.output_tokens)},
        }
        sidecar["timing"]["time_to_first_token_ms"] = _ms(gen_ai.time_to_first_token_s)
        sidecar["timing"]["time_per_output_token_ms"] = _ms(gen_ai.time_per_output_token_s)
        sidecar["gen_ai"] = {
            "protocol": gen_ai.protocol,
            # ECS's gen_ai.response.finish_reasons is mapped `nested`, which cannot hold strings.
            "finish_reasons": list(gen_ai.finish_reasons) or None,
            "stream": gen_ai.stream,
            "input_token_source": gen_ai.input_token_source.value,
            "output_token_source": gen_ai.output_token_source.value,
        }
    usage = exchange.usage
    if usage is not None:
        sidecar["gpu"] = {"seconds": round(usage.gpu_seconds, 6), "energy_joules": round(usage.energy_joules, 6)}
        sidecar["cost"] = {
            "local": usage.cost_local,
            "cloud_equivalent": usage.cost_cloud_equivalent,
            "currency": identity.currency if usage.cost_local is not None or usage.cost_cloud_equivalent is not None else None,
        }
    content = exchange.content
    if content is not None:
        sidecar["content"] = {
            "request_sha256": content.request_sha256,
            "response_sha256": content.response_sha256,
            "request": _text(content.request_head),
            "response": _text(content.response_head),
            "truncated": content.truncated or None,
        }
    return _prune(doc)


def _text(body: bytes | None) -> str | None:
    # Bodies are UTF-8 JSON or text for every protocol the proxy knows; anything
    # else is kept readable rather than dropped.
    return None if body is None else body.decode("utf-8", errors="replace")


def lifecycle_document(
    identity: AuditIdentity,
    at: float,
    *,
    action: str,
    category: list[str],
    types: list[str],
    message: str,
    reason: str | None = None,
    outcome: str | None = None,
    sidecar: dict[str, Any] | None = None,
    kind: str = "event",
    rule: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A document for something other than a request: start, stop, reload, checkpoint, drops.

    `outcome` only for a record of an attempt (a start, a reload); ECS leaves it out elsewhere.
    """
    doc = _base(identity, at)
    doc["message"] = message
    doc["event"] = {
        "kind": kind,
        "category": category,
        "type": types,
        "action": action,
        "outcome": outcome,
        "reason": reason,
        "id": os.urandom(16).hex(),
        "created": iso_time(at),
    }
    if rule:
        doc["rule"] = rule
    if sidecar:
        doc["sidecar"].update(sidecar)
    return _prune(doc)


def get_path(doc: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted field name in a nested document, or None."""
    node: Any = doc
    for part in dotted.split(".") if dotted != "@timestamp" else [dotted]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set an existing dotted field in a nested document."""
    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[leaf] = value
