"""OpenTelemetry semantic-convention values shared by metrics and spans."""

from __future__ import annotations

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

# gen_ai.provider.name when llm.provider_name is not set: named after the wire
# protocol, which is the "telemetry format flavor" the attribute discriminates.
_PROVIDER_BY_PROTOCOL = {
    "openai": "openai",
    "openai_responses": "openai",
    "tgi": "tgi",
    "ollama": "ollama",
    "kserve": "kserve",
}


def method_label(method: str) -> str:
    """http.request.method: the method if it is a known one, else `_OTHER`."""
    return method if method in KNOWN_METHODS else "_OTHER"


def provider_name(configured: str, protocol: str) -> str:
    return configured or _PROVIDER_BY_PROTOCOL.get(protocol, protocol)
