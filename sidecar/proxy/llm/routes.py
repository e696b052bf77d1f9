"""Which model-call protocol a request speaks, from its method and path alone."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    """OpenTelemetry http.route: the path with variable parts replaced."""
    protocol: str | None
    operation: str | None
    streams_by_default: bool = False
    always_streams: bool = False


_EXACT: dict[tuple[str, str], Route] = {
    ("POST", "/v1/chat/completions"): Route("/v1/chat/completions", "openai", "chat"),
    ("POST", "/v1/completions"): Route("/v1/completions", "openai", "text_completion"),
    ("POST", "/v1/embeddings"): Route("/v1/embeddings", "openai", "embeddings"),
    ("POST", "/v1/responses"): Route("/v1/responses", "openai_responses", "chat"),
    ("POST", "/generate"): Route("/generate", "tgi", "text_completion"),
    ("POST", "/generate_stream"): Route("/generate_stream", "tgi", "text_completion", always_streams=True),
    ("POST", "/api/generate"): Route("/api/generate", "ollama", "text_completion", streams_by_default=True),
    ("POST", "/api/chat"): Route("/api/chat", "ollama", "chat", streams_by_default=True),
    ("POST", "/api/embed"): Route("/api/embed", "ollama", "embeddings"),
    ("POST", "/api/embeddings"): Route("/api/embeddings", "ollama", "embeddings"),
}
# Paths that are not model calls but are common enough to deserve their own route label.
_PLAIN = frozenset(
    {"/v1/models", "/health", "/healthz", "/metrics", "/ping", "/version", "/api/tags", "/api/version", "/info"}
)
_KSERVE_PREDICT = re.compile(r"/(v[12])/models/([^/]+?):predict")


def match_route(method: str, path: str) -> tuple[Route | None, str | None]:
    """(route, model named in the path) for known paths; (None, None) for the rest."""
    route = _EXACT.get((method, path))
    if route is not None:
        return route, None
    if method == "POST" and path.endswith(":predict"):
        match = _KSERVE_PREDICT.fullmatch(path)
        if match:
            return Route(f"/{match.group(1)}/models/{{model}}:predict", "kserve", "predict"), match.group(2)
    if path in _PLAIN:
        return Route(path, None, None), None
    return None, None
