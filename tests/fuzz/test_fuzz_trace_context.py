"""Trace context headers from hostile clients: see tests/fuzz/targets/trace_context.py for the properties."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SidecarFactory
from tests.fuzz.known_bugs import hit, tolerating_known_bugs
from tests.fuzz.support import corpus_cases, fuzz_settings
from tests.fuzz.targets import trace_context as target
from tests.support.upstream import TestUpstream

HEX = "0123456789abcdef"


def hex_id(length: int) -> st.SearchStrategy[str]:
    """A non-zero id; small and large values both, as integers shrink and draw faster than text."""
    return st.integers(1, 16**length - 1).map(lambda number: f"{number:0{length}x}")


@st.composite
def valid_traceparents(draw: st.DrawFn) -> str:
    version = draw(st.sampled_from(["00", "00", "00", "01", "7f", "cc", "fe"]))
    value = f"{version}-{draw(hex_id(32))}-{draw(hex_id(16))}-{draw(st.integers(0, 255)):02x}"
    if version != "00" and draw(st.booleans()):
        value += "-" + draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
    space = st.sampled_from(["", " ", "\t", "  "])
    return draw(space) + value + draw(space)


def _mutate(value: str, position: int, kind: int, char: str) -> str:
    position %= max(len(value), 1)
    if kind == 0:
        return value[:position] + char + value[position + 1 :]  # replace
    if kind == 1:
        return value[:position] + char + value[position:]  # insert
    if kind == 2:
        return value[:position]  # truncate
    if kind == 3:
        return value.upper()
    if kind == 4:
        return "ff" + value[2:]
    if kind == 5:
        return value[:3] + "0" * 32 + value[35:]
    if kind == 6:
        return value[:36] + "0" * 16 + value[52:]
    if kind == 7:
        return value + "-" + char * 600  # over the length limit
    return value + "-extra"  # extra fields are only for versions after 00


# Header values as aiohttp hands them over: any bytes but CR/LF, decoded with surrogateescape.
raw_values = st.binary(max_size=120).map(
    lambda data: data.replace(b"\r", b"").replace(b"\n", b"").decode("utf-8", "surrogateescape")
)
any_text = st.text(max_size=120).map(lambda text: text.replace("\r", "").replace("\n", ""))
huge_values = st.tuples(st.sampled_from(["a", "0", "-", ",", "=", "k=v,", "%20", " "]), st.integers(1, 10_000)).map(
    lambda pair: pair[0] * pair[1]
)
traceparents = st.one_of(
    valid_traceparents(),
    st.builds(_mutate, valid_traceparents(), st.integers(0, 60), st.integers(0, 8), st.characters()),
    raw_values,
    any_text,
    huge_values,
)
_KEY_CHARS = "abcxyz0189_-*/"
_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
# Built from plain alphabets (st.from_regex is several times slower to draw from).
tracestate_keys = st.one_of(
    st.builds(lambda head, tail: head + tail, st.sampled_from("abz"), st.text(_KEY_CHARS, max_size=8)),
    st.builds(lambda tenant, system: f"{tenant}@{system}", st.text(_KEY_CHARS, min_size=1, max_size=5).map(lambda t: "a" + t[1:]),
              st.text(_KEY_CHARS, max_size=4).map(lambda t: "v" + t)),  # fmt: skip
)
tracestate_values = st.text(_VALUE_CHARS, max_size=12).map(lambda value: value.rstrip(" ") + "x")
members = st.one_of(
    st.builds(lambda key, value: f"{key}={value}", tracestate_keys, tracestate_values),
    st.just(""),
    any_text,
)
tracestates = st.one_of(
    st.lists(members, max_size=12).map(",".join),
    st.lists(st.builds(lambda key, value: f" {key}={value} ", tracestate_keys, tracestate_values), max_size=6).map(",".join),
    st.integers(30, 40).map(lambda count: ",".join(f"k{index}=v" for index in range(count))),  # around 32 members
    raw_values,
    huge_values,
)
_BAGGAGE_CHARS = "abcXYZ019_.-%2F"
baggage_members = st.one_of(
    st.builds(lambda key, value: f"{key}={value}", st.text(_BAGGAGE_CHARS, min_size=1, max_size=8),
              st.text(_BAGGAGE_CHARS, max_size=12)),  # fmt: skip
    st.builds(lambda prop: f"k=v;{prop}", any_text),
    any_text,
)
baggages = st.one_of(
    st.lists(baggage_members, max_size=12).map(",".join),
    st.integers(150, 400).map(lambda count: ",".join(f"k{index}=v" for index in range(count))),  # over 180 members
    st.integers(1, 3).map(lambda count: ",".join(["k=" + "v" * 4000] * count)),  # over 4096 / 8192 bytes
    raw_values,
    huge_values,
)
names = st.sampled_from(["traceparent", "Traceparent", "TRACEPARENT", "tracestate", "TraceState", "baggage", "Baggage"])


@st.composite
def header_lists(draw: st.DrawFn) -> target.Headers:
    pairs: target.Headers = []
    if draw(st.booleans()):
        pairs.append((draw(st.sampled_from(["traceparent", "Traceparent"])), draw(traceparents)))
    for _ in range(draw(st.integers(0, 2))):
        pairs.append(("tracestate", draw(tracestates)))
    if draw(st.booleans()):
        pairs.append(("baggage", draw(baggages)))
    extra = draw(st.lists(st.tuples(names, st.one_of(traceparents, tracestates, baggages)), max_size=2))
    pairs.extend(extra)
    pairs.append(("Host", "sidecar.invalid"))
    return draw(st.permutations(pairs))


@fuzz_settings(250)
@given(header_lists(), st.booleans())
def test_any_trace_headers_are_handled(pairs: target.Headers, exporting: bool) -> None:
    tolerating_known_bugs(target.check_headers, pairs, exporting)


@fuzz_settings(60)
@given(valid_traceparents(), st.lists(st.builds(lambda k, v: f"{k}={v}", tracestate_keys, tracestate_values),
                                      max_size=32, unique_by=lambda member: member.split("=")[0]))
def test_a_valid_traceparent_is_continued(traceparent: str, state: list[str]) -> None:
    pairs = [("traceparent", traceparent), ("tracestate", ",".join(state))]
    for exporting in (False, True):
        target.check_headers(pairs, exporting)  # no known bug applies to valid headers
        span = target.tracer(exporting).start(target.CIMultiDictProxy(target.CIMultiDict(pairs)), "GET", None, 0)
        assert span.ids()[0] == traceparent.strip(" \t").split("-")[1]


@pytest.mark.parametrize("path", corpus_cases("trace_context"))
def test_corpus(path: Path) -> None:
    target.check_bytes(path.read_bytes())


# --- regressions: what fuzzing found (fixed) ------------------------------------------------


def test_baggage_that_is_not_utf8_is_ignored() -> None:
    target.check_headers([("baggage", b"tenant=\xff".decode("utf-8", "surrogateescape"))], exporting=False)


async def test_baggage_that_is_not_utf8_does_not_fail_the_request(upstream: TestUpstream, make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(upstream.url)
    assert sidecar.sidecar.proxy_address is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.sidecar.proxy_address.port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nbaggage: tenant=\xff\r\nConnection: close\r\n\r\n")
    await writer.drain()
    head = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    if head.startswith(b"HTTP/1.1 500"):
        hit("baggage-not-utf8", head.decode())
    assert head.startswith(b"HTTP/1.1 200"), head


def test_several_tracestate_lines_form_one_list() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    target.check_headers([("traceparent", traceparent), ("tracestate", "a=1"), ("tracestate", "b=2")], exporting=True)
