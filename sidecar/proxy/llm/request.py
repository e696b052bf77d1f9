"""The requested model and stream flag, from at most a bounded prefix of the body.

A whole small body is parsed as JSON. When only a prefix was kept (a large
body, such as a vision request with a base64 image, streams through without
being held), the two top-level keys are looked for in the prefix text; a key
that comes after the prefix stays unknown and the response fills in the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,512})"')
_STREAM = re.compile(rb'"stream"\s*:\s*(true|false)')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')


@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str | None
    stream: bool | None
    """None when the body did not say (the protocol's default applies)."""
    parse_error: str | None


def read_request(body: bytes, complete: bool) -> RequestFacts:
    """Facts from `body`, which is the whole request body when `complete`, else its prefix."""
    if not body:
        return RequestFacts(None, None, None)
    if complete:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            return RequestFacts(None, None, f"request body is not JSON: {exc.__class__.__name__}")
        if not isinstance(document, dict):
            return RequestFacts(None, None, "request body is not a JSON object")
        model = document.get("model")
        stream = document.get("stream")
        return RequestFacts(
            model if isinstance(model, str) else None,
            stream if isinstance(stream, bool) else None,
            None,
        )
    model_match = _MODEL.search(body)
    stream_match = _STREAM.search(body)
    model = None
    if model_match:
        try:
            model = json.loads(b'"' + model_match.group(1) + b'"')
        except ValueError:
            model = None
    return RequestFacts(model, None if stream_match is None else stream_match.group(1) == b"true", None)
