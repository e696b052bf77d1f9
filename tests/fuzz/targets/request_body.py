"""The request body reader, `read_request(body, complete)`.

The properties, for any bytes:
- it never raises, whole body or prefix, and returns a model that is None or a str (which may
  hold lone surrogates from "\ud800" escapes: `well_formed` cleans it where the record is made,
  see test_fuzz_request_body.py's end-to-end test), a stream flag that is None or a bool, and a
  parse error only for a whole body;
- a whole body that is a JSON object gives its top-level `model` (a str) and `stream` (a bool),
  exactly as json.loads reads them;
- a prefix that holds a top-level `"model": "..."` (at most 512 characters as written) and
  `"stream": true|false`, with no other "model"/"stream" key before them, gives the same
  values as the whole body: the reader does not need the rest.

Bytes format (atheris, corpus): the body. It is read whole, and as prefixes cut at a few
points (every 7th byte, and the places where a model or stream value ends).
"""

from __future__ import annotations

import json
import re

from sidecar.proxy.llm.request import RequestFacts, read_request

MAX_PREFIX_MODEL = 512
_UNIT = re.compile(rb'[^"\\]|\\.', re.DOTALL)


def _check_shape(facts: RequestFacts, complete: bool) -> None:
    assert facts.model is None or isinstance(facts.model, str)
    assert facts.stream is None or isinstance(facts.stream, bool)
    assert facts.parse_error is None or (complete and isinstance(facts.parse_error, str))


def check_whole(body: bytes) -> RequestFacts:
    facts = read_request(body, True)
    _check_shape(facts, True)
    if not body:
        assert facts == RequestFacts(None, None, None)
        return facts
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        assert facts.parse_error is not None and (facts.model, facts.stream) == (None, None)
        return facts
    if isinstance(document, dict):
        model, stream = document.get("model"), document.get("stream")
        assert facts.model == (model if isinstance(model, str) else None)
        assert facts.stream == (stream if isinstance(stream, bool) else None)
        assert facts.parse_error is None
    else:
        assert (facts.model, facts.stream) == (None, None) and facts.parse_error is not None
    return facts


def check_prefix(prefix: bytes) -> RequestFacts:
    facts = read_request(prefix, False)
    _check_shape(facts, False)
    if facts.model is not None:
        assert 0 < len(facts.model) <= MAX_PREFIX_MODEL
    return facts


def top_level_ends(body: bytes) -> dict[str, tuple[int, object]] | None:
    """For a JSON object written as json.dumps writes it: where its top-level `model` and
    `stream` values end, and the values, when that key appears nowhere else in the body."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    ends: dict[str, tuple[int, object]] = {}
    for key, pattern in (("model", rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"'), ("stream", rb'"stream"\s*:\s*(true|false)')):
        matches = list(re.finditer(pattern, body))
        if len(matches) != 1 or key not in document:
            continue
        match = matches[0]
        # The key occurs once, so it is the top-level one: only then does this oracle know when
        # a prefix must show it (nested keys are checked by test_a_prefix_gives_the_top_level_model).
        value = document[key]
        if key == "model":
            try:
                written = json.loads(b'"' + match.group(1) + b'"')
            except ValueError:
                continue
            if written != value or not isinstance(value, str):
                continue
            if not 0 < len(_UNIT.findall(match.group(1))) <= MAX_PREFIX_MODEL:
                continue
        elif value is not (match.group(1) == b"true"):
            continue
        ends[key] = (match.end(), value)
    return ends


def check_body(body: bytes, extra_cuts: tuple[int, ...] = ()) -> None:
    whole = check_whole(body)
    cuts = set(range(0, len(body) + 1, 7)) | {len(body)} | {cut for cut in extra_cuts if 0 <= cut <= len(body)}
    ends = top_level_ends(body)
    if ends:
        for end, _ in ends.values():
            cuts |= {end - 1, end, end + 1}
    for cut in sorted(cut for cut in cuts if 0 <= cut <= len(body)):
        facts = check_prefix(body[:cut])
        if not ends:
            continue
        if "model" in ends and cut >= ends["model"][0]:
            assert facts.model == ends["model"][1] == whole.model, (cut, facts, body[:200])
        if "stream" in ends and cut >= ends["stream"][0]:
            assert facts.stream is ends["stream"][1] is whole.stream, (cut, facts, body[:200])


def check_bytes(data: bytes) -> None:
    check_body(data)
