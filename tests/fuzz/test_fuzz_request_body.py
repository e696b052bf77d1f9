"""Request bodies, whole and cut short: see tests/fuzz/targets/request_body.py for the properties."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SidecarFactory
from tests.fuzz.known_bugs import hit, tolerating_known_bugs
from tests.fuzz.support import corpus_cases, fuzz_settings
from tests.fuzz.targets import request_body as target
from tests.support.upstream import TestUpstream

models = st.one_of(
    st.sampled_from(["llama-3.1-8b", "Qwen/Qwen2.5-7B", "", "m\"odel", "back\\slash", "ünï", "\ud800", "a\udfff", "x" * 512, "x" * 513]),
    st.text(max_size=20),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)
junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.sampled_from(["role", "content", "n", "x"]), children, max_size=3)),
    max_leaves=10,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A JSON object as clients write them: model and stream somewhere among other keys."""
    document: dict[str, object] = {}
    keys = draw(st.permutations(["model", "stream", "messages", "max_tokens", "stream_options", "image"]))
    for key in keys:
        if key == "model" and draw(st.integers(0, 5)):
            document["model"] = draw(models)
        elif key == "stream" and draw(st.booleans()):
            document["stream"] = draw(st.one_of(st.booleans(), st.sampled_from([0, 1, "true", None])))
        elif key == "messages":
            document["messages"] = [{"role": "user", "content": draw(st.text(max_size=30))}, draw(junk)]
        elif key == "stream_options" and draw(st.booleans()):
            document["stream_options"] = {"include_usage": draw(st.booleans())}
        elif key == "image" and draw(st.integers(0, 3)) == 0:
            document["image"] = "A" * draw(st.integers(0, 3000))  # a base64 image pushing later keys far back
        elif key == "max_tokens":
            document["max_tokens"] = draw(st.integers(0, 10**6))
    text = json.dumps(
        document,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, None, 1, "\t"])),
        separators=draw(st.sampled_from([None, (",", ":"), (", ", " : ")])),
    )
    return text.encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 100_000).map(lambda depth: b"[" * depth),
    st.sampled_from([b"", b"null", b"[]", b'"model"', b'{"model": ', b'{"model": "x', b'{"model": "x\\', b'{"stream": tru',
                     b"\xef\xbb\xbf{}", b'{"model": "\\ud800"}', b'{"model": "a\\u0000b"}', b"1" * 5000]),  # fmt: skip
)


@fuzz_settings(150)
@given(st.one_of(bodies(), bodies(), raw_bodies), st.lists(st.integers(0, 5000), max_size=4))
def test_any_body_whole_or_cut_is_read(body: bytes, cuts: list[int]) -> None:
    tolerating_known_bugs(target.check_body, body, tuple(cuts))


@pytest.mark.parametrize("path", corpus_cases("request_body"))
def test_corpus(path: Path) -> None:
    target.check_bytes(path.read_bytes())


# --- regressions: what fuzzing found (fixed) ------------------------------------------------


async def test_a_model_that_is_not_unicode_keeps_metrics_and_audit_working(upstream: TestUpstream, make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        body = b'{"model": "evil\\ud800", "messages": []}'
        async with client.post(f"{sidecar.url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200
            await response.read()
        async with client.get(f"{sidecar.admin_url}/metrics") as response:
            metrics_status = response.status
    await asyncio.sleep(0.3)  # the audit writer thread encodes the record
    audit = sidecar.sidecar.audit
    dropped = audit.stats.dropped.get("encode_error", 0) if audit is not None else 0
    # Found by this fuzzer, fixed in b759fc3 (well_formed): /metrics answered 500 from then on,
    # and the request's own audit record was dropped.
    assert metrics_status == 200 and not dropped


def test_a_prefix_gives_the_top_level_model() -> None:
    # A body over the read-whole limit: only its prefix is kept, and a tool schema comes first.
    body = json.dumps({"tools": [{"parameters": {"model": "cheap-model"}}], "model": "expensive-model"}).encode()
    assert target.check_prefix(body).model == "expensive-model"
    # However it is cut, a prefix never names the nested model.
    for cut in range(len(body) + 1):
        assert target.check_prefix(body[:cut]).model in (None, "expensive-model"), cut


# --- hostile prefixes: the reader runs on the event loop, once per large request ---------------

PREFIX = 64 * 1024  # llm.request_peek_bytes' default: what is kept of a body too large to read whole
HOSTILE_UNITS = [b"[", b"{", b'{"a":', b'"k": 1, ', b'"x", ', b'\\"', b'"model": "', b'"model": 1, ', b":", b" ",
                 b"\t\n", b'"stream": true, ', b'{"model": "m"}, ', b'"\\u00e9", ', b"1, "]  # fmt: skip
HOSTILE_OPENINGS = [b"{", b'{"messages": [', b"", b'{"model":', b'{"model": "m", "stream":', b'{"a": 1']


def _fastest(run: Callable[[], object], times: int = 5) -> float:
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


@cache
def c_speed() -> float:
    """Seconds the json module's C scanner takes for a 64 KiB string: the yardstick, so that
    the bound holds on fast and slow machines alike."""
    literal = b'"' + b"a" * PREFIX + b'"'
    return _fastest(lambda: json.loads(literal), times=20)


SLOWER_THAN_C = 40
"""A reader at C speed stays under ~6x the yardstick on 64 KiB of anything; a Python step per
character, token or key (which runs on the event loop, for every large request) is over 100x."""


def check_prefix_time(prefix: bytes) -> None:
    took = _fastest(lambda: target.check_prefix(prefix), times=3)
    ratio = took / c_speed()
    described = f"{took * 1000:.2f} ms ({ratio:.0f}x the C scanner) for 64 KiB of {prefix[:40]!r}..."
    if ratio >= SLOWER_THAN_C:
        hit("request-prefix-slow", described)
    assert ratio < SLOWER_THAN_C, described


@fuzz_settings(15)
@given(st.lists(st.sampled_from(HOSTILE_UNITS), min_size=1, max_size=3).map(b"".join), st.sampled_from(HOSTILE_OPENINGS))
def test_a_hostile_prefix_is_read_in_bounded_time(unit: bytes, opening: bytes) -> None:
    tolerating_known_bugs(check_prefix_time, (opening + unit * (PREFIX // len(unit) + 1))[:PREFIX])


def test_a_prefix_of_many_top_level_keys_is_read_in_bounded_time() -> None:
    # d46bc48 walked every token in Python (~25 ms for 64 KiB of "["), its successor every
    # top-level key (~15 ms for 8000 of them); the working tree stops after 256 keys.
    check_prefix_time((b"{" + b'"k": 1, ' * (PREFIX // 8))[:PREFIX])
    check_prefix_time(b"[" * PREFIX)


@pytest.mark.parametrize("space", [b" ", b"\t\n"])
def test_whitespace_after_a_key_is_skipped_in_bounded_time(space: bytes) -> None:
    # Found by fuzzing, fixed in c125733: skipped a character at a time, 150x the C scanner.
    check_prefix_time((b'{"model":' + space * PREFIX)[:PREFIX])
