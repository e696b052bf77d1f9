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

# The top-level object is walked key by key: each value is skipped by the C JSON decoder,
# so a prefix costs one Python step per top-level key, however large or deep the values.
_KEY = re.compile(r'[ \t\n\r]*"((?:[^"\\]|\\.)*)"[ \t\n\r]*:')
_SPACE = re.compile(r"[ \t\n\r]*")
_AFTER_VALUE = re.compile(r"[ \t\n\r]*([,}])")
_DECODER = json.JSONDecoder()
# A request's top level has a few dozen keys; a body of thousands is not a model call worth
# the time (each key is a Python step, on the event loop).
_MAX_TOP_LEVEL_KEYS = 256
_MAX_PREFIX_MODEL = 512
"""A longer "model" in a prefix is taken for noise, not a name."""


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
    """`model` and `stream` of the top-level object, as far as `prefix` shows them.

    The last occurrence of a key wins, as in the JSON parsers model servers use.
    """
    # As json.loads decodes bytes (an encoded surrogate reads as one); what follows a byte that
    # is not UTF-8 at all (or a character cut in two by the prefix) is left unread.
    try:
        text = prefix.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        text = prefix[: exc.start].decode("utf-8", "surrogatepass")
    start = text.lstrip(" \t\n\r\ufeff")
    if not start.startswith("{"):
        return None, None
    position = len(text) - len(start) + 1
    model: str | None = None
    stream: bool | None = None
    for _ in range(_MAX_TOP_LEVEL_KEYS):
        key = _KEY.match(text, position)
        if key is None:
            break
        try:
            value, position = _DECODER.raw_decode(text, _skip_space(text, key.end()))
        except (ValueError, RecursionError):
            break  # the value is cut off by the end of the prefix (or is not JSON)
        name = key.group(1)
        if "\\" in name:
            try:
                name = json.loads(f'"{name}"')
            except ValueError:
                break
        if name == "model":
            model = value if isinstance(value, str) and 0 < len(value) <= _MAX_PREFIX_MODEL else None
        elif name == "stream":
            stream = value if isinstance(value, bool) else None
        after = _AFTER_VALUE.match(text, position)
        if after is None or after.group(1) == "}":
            break
        position = after.end()
    return model, stream


def _skip_space(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()  # type: ignore[union-attr]  # always matches
