"""The requested model and stream flag, from at most a bounded prefix of the body.

A whole small body is parsed as JSON. When only a prefix was kept (a large
body, such as a vision request with a base64 image, streams through without
being held), the prefix is tokenised just enough to follow the nesting, and
only keys of the top-level object count: a `"model"` inside a message does
not name the request's model. A key that comes after the prefix stays
unknown and the response fills in the model. (Access checks that depend on
the model parse the whole body instead; see the proxy handler.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# Strings (skipped whole, however long: a base64 image is one token), brackets and colons.
# The closing quote is a group of its own: a string cut off by the prefix has none.
_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)(")?|[{}\[\]:]')
_STRING_VALUE = re.compile(rb'\s*"((?:[^"\\]|\\.){1,512})"')
_BOOLEAN_VALUE = re.compile(rb"\s*(true|false)")


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
    model, stream = _top_level_model_and_stream(body)
    return RequestFacts(model, stream, None)


def _top_level_model_and_stream(prefix: bytes) -> tuple[str | None, bool | None]:
    """`model` and `stream` of the top-level object, as far as `prefix` shows them."""
    model: str | None = None
    stream: bool | None = None
    depth = 0
    key: bytes | None = None
    for token in _TOKEN.finditer(prefix):
        text = token.group()
        if text[:1] == b'"':
            if token.group(2) is None:
                break  # cut off by the end of the prefix
            key = token.group(1) if depth == 1 else None
            continue
        if text == b":":
            # The last occurrence wins, as in the JSON parsers model servers use.
            if key == b"model":
                value = _STRING_VALUE.match(prefix, token.end())
                if value is not None:
                    try:
                        decoded = json.loads(b'"' + value.group(1) + b'"')
                    except ValueError:
                        decoded = None
                    model = decoded if isinstance(decoded, str) else None
            elif key == b"stream":
                value = _BOOLEAN_VALUE.match(prefix, token.end())
                if value is not None:
                    stream = value.group(1) == b"true"
            key = None
            continue
        key = None
        depth += 1 if text in (b"{", b"[") else -1
        if depth <= 0:
            break  # the top-level object ended (or the body is not one)
    return model, stream
