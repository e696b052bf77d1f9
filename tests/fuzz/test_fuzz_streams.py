"""SSE and NDJSON streams cut anywhere: see tests/fuzz/targets/streams.py for the properties."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SidecarFactory
from tests.fuzz.known_bugs import hit, tolerating_known_bugs
from tests.fuzz.support import corpus_cases, fuzz_settings
from tests.fuzz.targets import streams as target

# Text the readers look at, including what JSON can smuggle in: lone surrogates (json.dumps
# writes them as "\ud800" escapes), control characters, very long and empty strings.
texts = st.one_of(
    st.sampled_from(["", "m", "llama-3", "stop", "length", "completed", "Ω", "\x00", "a\nb", "\ud800", "x\udc80", "x" * 300]),
    st.text(max_size=12),
)
numbers = st.one_of(st.integers(-3, 10**6), st.sampled_from([True, None, 1.5, -0.0]), st.integers(0, 2**70))


_KINDS = {"openai": "openai", "openai_responses": "responses", "tgi": "tgi", "ollama": "ollama", "kserve": "kserve"}


def _event(draw: st.DrawFn, protocol: str) -> bytes:
    """Mostly an event of `protocol`'s shape; sometimes another protocol's, or junk."""
    kind = draw(st.sampled_from([_KINDS[protocol]] * 4 + ["openai", "responses", "tgi", "ollama", "kserve", "junk"]))
    if kind == "openai":
        choice = {"index": 0, "delta": {"content": draw(texts)}, "finish_reason": draw(st.one_of(st.none(), texts))}
        event: object = {"model": draw(texts), "choices": draw(st.sampled_from([[choice], [], "x", [None, choice]])),
                         "usage": draw(st.one_of(st.none(), st.fixed_dictionaries({"prompt_tokens": numbers, "completion_tokens": numbers})))}  # fmt: skip
    elif kind == "responses":
        event = {"type": draw(st.sampled_from(["response.output_text.delta", "response.completed", "response.failed", None, 3])),
                 "delta": draw(texts), "response": {"model": draw(texts), "status": draw(texts),
                 "usage": {"input_tokens": draw(numbers), "output_tokens": draw(numbers)}}}  # fmt: skip
    elif kind == "tgi":
        event = {"token": {"text": draw(texts), "special": draw(st.booleans())},
                 "details": draw(st.one_of(st.none(), st.fixed_dictionaries({"finish_reason": texts, "generated_tokens": numbers,
                                                                              "prefill": st.lists(st.just({}), max_size=3)})))}  # fmt: skip
    elif kind == "ollama":
        event = {"model": draw(texts), "response": draw(texts), "done": draw(st.sampled_from([True, False, "yes"])),
                 "done_reason": draw(texts), "prompt_eval_count": draw(numbers), "eval_count": draw(numbers)}  # fmt: skip
    elif kind == "kserve":
        event = {"model_name": draw(texts), "text": draw(texts), "predictions": draw(st.sampled_from([[], [1], None]))}
    else:
        return draw(st.sampled_from([b"{", b"[[[[[[[[", b"[" * 5000, b"1" * 5000, b"\xff\xfe", b"null", b"[]", b'"s"', b"{}"]))
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


def sse_stream(draw: st.DrawFn, protocol: str) -> bytes:
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        end = draw(st.sampled_from([b"\n", b"\r\n", b"\n", b"\n", b"\r"]))
        kind = draw(st.integers(0, 11))
        if kind <= 5:
            parts.append(b"data: " + _event(draw, protocol) + end + end)
        elif kind == 6:  # one event over several data lines, "data:" with and without the space
            payload = _event(draw, protocol)
            middle = draw(st.integers(0, len(payload)))
            parts.append(b"data:" + payload[:middle] + end + b"data: " + payload[middle:] + end + end)
        elif kind in (7, 8):
            parts.append(draw(st.sampled_from([b"data: [DONE]", b": keep-alive", b"event: x", b"id: 1", b"retry: 5", b"data", b""])) + end)
        elif kind == 9:  # a line far over the limit
            parts.append(b"data: " + b"x" * draw(st.integers(10, 3000)) + end + end)
        else:
            parts.append(draw(st.binary(max_size=40)))
    return b"".join(parts)


def ndjson_stream(draw: st.DrawFn, protocol: str) -> bytes:
    parts = [_event(draw, protocol) + draw(st.sampled_from([b"\n", b"\r\n", b"", b"\n\n"])) for _ in range(draw(st.integers(0, 6)))]
    if draw(st.integers(0, 3)) == 0:
        parts.insert(draw(st.integers(0, len(parts))), draw(st.binary(max_size=60)))
    return b"".join(parts)


@st.composite
def tap_inputs(draw: st.DrawFn) -> tuple[bytes, str, str, int, list[int]]:
    """(stream, protocol, content type, max_line, cut points), the stream mostly shaped for the type."""
    protocol = draw(st.sampled_from(target.PROTOCOLS))
    content_type = draw(st.sampled_from(target.CONTENT_TYPES))
    shape = draw(st.sampled_from(["structured", "structured", "structured", "bytes"]))
    if shape == "bytes":
        data = draw(st.binary(max_size=300))
    elif content_type.startswith("application/"):
        data = ndjson_stream(draw, protocol)
    else:
        data = sse_stream(draw, protocol)
    max_line = draw(st.sampled_from([1024, 1024, 1024, 300, 64, 16, 2, 1]))
    cuts = draw(st.lists(st.integers(0, max(len(data), 1)), max_size=12))
    return data, protocol, content_type, max_line, cuts


@fuzz_settings(200)
@given(tap_inputs())
def test_streams_read_the_same_however_they_are_cut(case: tuple[bytes, str, str, int, list[int]]) -> None:
    tolerating_known_bugs(target.check_stream, *case)


@pytest.mark.parametrize("path", corpus_cases("streams"))
def test_corpus(path: Path) -> None:
    target.check_bytes(path.read_bytes())


# --- regressions: what fuzzing found (fixed) ------------------------------------------------


def test_a_model_name_that_is_not_unicode_is_made_well_formed() -> None:
    # b759fc3: the models of a GenAiCall go through well_formed.
    target.check_stream(b'data: {"model": "\\udc80", "choices": []}\n\n', "openai", "text/event-stream", 1024, [])


def test_a_finish_reason_that_is_not_unicode_is_made_well_formed() -> None:
    event = b'data: {"model": "m", "choices": [{"delta": {}, "finish_reason": "\\udc80"}]}\n\n'
    target.check_stream(event, "openai", "text/event-stream", 1024, [])


async def test_a_finish_reason_that_is_not_unicode_keeps_the_audit_record(make_sidecar: SidecarFactory) -> None:
    async def chat(request: web.Request) -> web.Response:
        body = b'{"model": "m", "choices": [{"message": {"content": "ok"}, "finish_reason": "\\udc80"}]}'
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sidecar = await make_sidecar(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{sidecar.url}/v1/chat/completions", json={"model": "m", "messages": []}) as response:
                assert response.status == 200
                await response.read()
        await asyncio.sleep(0.3)  # the audit writer thread encodes the record
        audit = sidecar.sidecar.audit
        dropped = audit.stats.dropped.get("encode_error", 0) if audit is not None else 0
        if dropped:
            hit("tap-text-surrogate", f"{dropped} audit record(s) dropped")
        assert not dropped
    finally:
        await runner.cleanup()
