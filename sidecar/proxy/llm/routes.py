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
    """The answer streams unless the body says `"stream": false` (Ollama)."""
    always_streams: bool = False
    """The answer streams whatever the body says (TGI's /generate_stream)."""

    def streams(self, requested: bool | None) -> bool:
        """Whether the answer will stream, given the body's `stream` flag (None: the body did not say).

        A body that asks for a stream is taken at its word on every model route: a server that
        ignores the flag only costs the caller a stream slot for the length of one answer.
        """
        if self.always_streams:
            return True
        if requested is None:
            return self.streams_by_default
        return requested


# Every model-call route (all POST). Paths with a variable part name it `{model}`.
_MODEL_ROUTES = (
    Route("/v1/chat/completions", "openai", "chat"),
    Route("/v1/completions", "openai", "text_completion"),
    Route("/v1/embeddings", "openai", "embeddings"),
    Route("/v1/responses", "openai_responses", "chat"),
    Route("/generate", "tgi", "text_completion"),
    Route("/generate_stream", "tgi", "text_completion", always_streams=True),
    Route("/api/generate", "ollama", "text_completion", streams_by_default=True),
    Route("/api/chat", "ollama", "chat", streams_by_default=True),
    Route("/api/embed", "ollama", "embeddings"),
    Route("/api/embeddings", "ollama", "embeddings"),
    Route("/v1/models/{model}:predict", "kserve", "predict"),
    Route("/v2/models/{model}:predict", "kserve", "predict"),
)
_EXACT = {route.template: route for route in _MODEL_ROUTES if "{" not in route.template}
_TEMPLATED = {route.template: route for route in _MODEL_ROUTES if "{" in route.template}
# Paths that are not model calls but are common enough to deserve their own route label.
_PLAIN = frozenset(
    {"/v1/models", "/health", "/healthz", "/metrics", "/ping", "/version", "/api/tags", "/api/version", "/info"}
)
_KSERVE_PREDICT = re.compile(r"/(v[12])/models/([^/]+?):predict")


def model_routes() -> tuple[Route, ...]:
    """Every route that is a model call, all of them POST; a check that branches on protocol covers each."""
    return _MODEL_ROUTES


def match_route(method: str, path: str) -> tuple[Route | None, str | None]:
    """(route, model named in the path) for known paths; (None, None) for the rest."""
    if method == "POST":
        route = _EXACT.get(path)
        if route is not None:
            return route, None
        if path.endswith(":predict"):
            match = _KSERVE_PREDICT.fullmatch(path)
            if match:
                return _TEMPLATED[f"/{match.group(1)}/models/{{model}}:predict"], match.group(2)
    if path in _PLAIN:
        return Route(path, None, None), None
    return None, None
