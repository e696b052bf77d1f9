"""SSE and NDJSON response streams through LineSplitter and ResponseTap.

The properties, for any byte stream, protocol, content type and line limit:
- feeding it never raises, and the tap's catch-all ("response parser failed") never fires;
- the result does not depend on where the stream is cut into chunks: every field of the
  GenAiCall (except the chunk-gap timing, which is about chunks) is the same as when the
  stream comes in one piece, and so are the lines LineSplitter yields;
- a line longer than `max_line` is skipped and counted once, its bytes never yielded (the
  count is checked against a plain reference splitter, plus SSE events whose data lines add
  up to more than the limit);
- what the tap reports as text (models, finish reasons) can be encoded as UTF-8, since it
  ends up in metric labels, span attributes and audit JSON.

Bytes format (atheris, corpus): an optional first line `#!fuzz <protocol> <content-type>
<max_line>`; without it, the first byte picks them. The rest is the response body.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

from sidecar.exchange import GenAiCall
from sidecar.proxy.llm.lines import LineSplitter
from sidecar.proxy.llm.request import RequestFacts
from sidecar.proxy.llm.tap import ResponseTap
from tests.fuzz.known_bugs import hit

PROTOCOLS = ("openai", "openai_responses", "tgi", "ollama", "kserve")
CONTENT_TYPES = ("text/event-stream", "application/x-ndjson", "application/json", "text/event-stream; charset=utf-8",
                 "application/jsonl", "text/plain")  # fmt: skip
LINE_LIMITS = (16, 64, 1024)
NOW, END = 1.0, 2.0

_NO_FACTS = RequestFacts(None, None, None)


def run_tap(protocol: str, content_type: str, max_line: int, chunks: list[bytes], status: int = 200) -> GenAiCall:
    tap = ResponseTap(protocol=protocol, operation="chat", path_model=None, start=0.0, max_line=max_line, max_body=4096)
    tap.begin(status, content_type)
    for chunk in chunks:
        tap.feed(chunk, NOW)  # one clock reading for every chunk: timings must not depend on the cuts
    return tap.finish(END, _NO_FACTS)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({point % (len(data) + 1) for point in cuts})
    pieces, previous = [], 0
    for point in points:
        pieces.append(data[previous:point])
        previous = point
    pieces.append(data[previous:])
    return pieces


def reference_lines(data: bytes, max_line: int) -> tuple[list[bytes], bytes | None, int]:
    """(lines, unterminated tail, lines over the limit), splitting the whole stream at once."""
    *complete, tail = data.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in complete if len(line) <= max_line]
    oversized = sum(len(line) > max_line for line in complete) + (len(tail) > max_line)
    return lines, (tail if tail and len(tail) <= max_line else None), oversized


def reference_sse_overflows(lines: list[bytes], max_line: int) -> int:
    """Events whose data lines add up to more than the limit (counted with the long lines)."""
    size, overflows = 0, 0
    for line in lines:
        if not line:
            size = 0
        elif line.startswith(b"data:"):
            size += len(line[6:] if line.startswith(b"data: ") else line[5:])
            if size > max_line:
                overflows, size = overflows + 1, 0
    return overflows


def _comparable(call: GenAiCall) -> dict[str, object]:
    fields = dataclasses.asdict(call)
    fields.pop("max_chunk_gap_s")  # how many chunks carried content is about the cuts
    return fields


def _check_text(call: GenAiCall) -> None:
    for text in (call.request_model, call.response_model):
        assert text is None or text.encode("utf-8", "strict"), text
    for text in call.finish_reasons:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            hit("tap-text-surrogate", repr(text))
            raise


def check_stream(data: bytes, protocol: str, content_type: str, max_line: int, cuts: list[int]) -> None:
    # The splitter on its own: same lines, same tail, same count, however the stream is cut.
    expected_lines, expected_tail, expected_oversized = reference_lines(data, max_line)
    splitter = LineSplitter(max_line)
    lines = [line for piece in cut(data, cuts) for line in splitter.feed(piece)]
    assert lines == expected_lines
    assert splitter.flush() == expected_tail
    assert splitter.oversized_lines == expected_oversized

    whole = run_tap(protocol, content_type, max_line, [data])
    chunked = run_tap(protocol, content_type, max_line, cut(data, cuts))
    bytewise = run_tap(protocol, content_type, max_line, [data[i : i + 1] for i in range(len(data))]) if len(data) <= 600 else chunked
    for call in (whole, chunked, bytewise):
        assert "response parser failed" not in (call.parse_error or ""), call.parse_error
        assert call.protocol == protocol
    assert _comparable(chunked) == _comparable(whole)
    assert _comparable(bytewise) == _comparable(whole)
    _check_text(whole)

    mode = content_type.split(";")[0].strip()
    if mode in ("text/event-stream", "application/x-ndjson", "application/jsonl"):
        oversized = expected_oversized
        if mode == "text/event-stream":
            oversized += reference_sse_overflows(expected_lines, max_line)
        note = f"{oversized} stream line(s) over the parse limit were not read"
        assert (note in (whole.parse_error or "")) == (oversized > 0), (oversized, whole.parse_error)


_HEADER = b"#!fuzz "


def parse_bytes(data: bytes) -> tuple[bytes, str, str, int]:
    """(body, protocol, content type, max_line) from the bytes format described above."""
    if data.startswith(_HEADER):
        head, _, body = data.partition(b"\n")
        parts = head[len(_HEADER) :].decode("ascii", "replace").split()
        if len(parts) == 3 and parts[0] in PROTOCOLS and parts[2].isdigit():
            return body, parts[0], parts[1], max(1, min(int(parts[2]), 1 << 20))
    selector = data[0] if data else 0
    return (
        data[1:],
        PROTOCOLS[selector % len(PROTOCOLS)],
        CONTENT_TYPES[selector // len(PROTOCOLS) % len(CONTENT_TYPES)],
        LINE_LIMITS[selector // 30 % len(LINE_LIMITS)],
    )


def check_bytes(data: bytes) -> None:
    body, protocol, content_type, max_line = parse_bytes(data)
    rng = random.Random(hashlib.sha256(data).digest())  # the same cuts for the same input, always
    cuts = [rng.randrange(len(body) + 1) for _ in range(rng.randrange(1, 12))]
    check_stream(body, protocol, content_type, max_line, cuts)
