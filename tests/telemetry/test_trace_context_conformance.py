"""W3C Trace Context (Level 2) through a running sidecar, with spans exported and without.

The cases are those of the W3C conformance suite (w3c/trace-context, test/test.py, strict
level 2) for one request: the header lines a client sends, and whether the caller's trace
must go on. For each, the checks are what the model server received, which trace the
sidecar's exported span belongs to and which span is its parent, and how
`sidecar_trace_context_invalid_total` moved. With spans exported the sidecar is a
participant: it continues a valid traceparent or restarts the trace, and forwards the
caller's tracestate unless the spec says to discard it. Without an exporter it is a
pass-through proxy: the trace headers reach the model server unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import pytest
from multidict import CIMultiDict
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.otlp import make_sidecar_after_receiver, receiver  # noqa: F401 (fixtures)
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

TRACE_ID = "12345678901234567890123456789012"
PARENT_ID = "1234567890123456"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"  # the suite's tracestate cases: no span is exported for these


@dataclass(frozen=True)
class Case:
    """Header lines a client sends; whether its trace goes on; the tracestate a participant forwards."""

    name: str
    lines: tuple[tuple[str, str], ...]
    continues: bool
    tracestate: str | None = None  # what the model server receives with spans exported

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.lines if key.lower() == name]


def with_state(name: str, states: list[str], forwarded: str | None, traceparent: str = UNSAMPLED) -> Case:
    return Case(name, (("traceparent", traceparent), *(("tracestate", state) for state in states)), True, forwarded)


def parent(value: str, continues: bool, name: str = "traceparent") -> Case:
    """A request with one traceparent line (sent as `name`)."""
    return Case(f"{name}: {value}", ((name, value),), continues)


FUTURE = "-what-the-future-will-be-like"
TRACEPARENT_CASES = [
    Case("none", (), continues=False),
    parent(SAMPLED, True),
    *(parent(SAMPLED, False, name) for name in ("trace-parent", "trace.parent")),
    *(parent(SAMPLED, True, name) for name in ("TraceParent", "TrAcEpArEnT", "TRACEPARENT")),
    *(parent(SAMPLED + tail, False) for tail in (".", FUTURE)),  # version 00 has four fields
    *(parent("cc" + SAMPLED[2:] + tail, True) for tail in ("", FUTURE)),  # a later version may have more
    parent("cc" + SAMPLED[2:] + "." + FUTURE[1:], False),
    *(parent(version + SAMPLED[2:], False) for version in ("ff", ".0", "0.", "000", "0000", "0")),
    *(parent(f"00-{trace_id}-{PARENT_ID}-01", False)
      for trace_id in ("0" * 32, "." + TRACE_ID[1:], TRACE_ID[:-1] + ".", TRACE_ID + "3", TRACE_ID[:-1])),  # fmt: skip
    *(parent(f"00-{TRACE_ID}-{parent_id}-01", False)
      for parent_id in ("0" * 16, "." + PARENT_ID[1:], PARENT_ID[:-1] + ".", PARENT_ID + "7", PARENT_ID[:-1])),  # fmt: skip
    *(parent(f"00-{TRACE_ID}-{PARENT_ID}-{flags}", False) for flags in (".0", "0.", "001", "1")),
    *(parent(value, True) for value in (" " + SAMPLED, SAMPLED + " ", "\t " + SAMPLED + " \t")),
    parent(f"00-{TRACE_ID}-{PARENT_ID}-02", True),  # Level 2's random flag must go on
]

OTHER_TRACE = f"00-{TRACE_ID[:-1]}1-{PARENT_ID}-01"
TWO_TRACEPARENTS = [
    Case("two traceparent lines", (("traceparent", OTHER_TRACE), ("traceparent", SAMPLED)), continues=False),
    Case("two equal traceparent lines", (("traceparent", SAMPLED), ("traceparent", SAMPLED)), continues=False),
    Case("two traceparent lines and a tracestate",
         (("traceparent", SAMPLED), ("tracestate", "foo=1"), ("traceparent", SAMPLED)), continues=False),  # fmt: skip
]

KEY = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")  # leading space: part of the value
# The members bar01=01 to bar32=32, then to bar33=33, in four lines each.
BARS = [",".join(f"bar{n:02}={n:02}" for n in range(first, min(first + 10, last + 1)))
        for last in (32, 33) for first in (1, 11, 21, 31)]  # fmt: skip

TRACESTATE_CASES = [
    Case("tracestate without traceparent", (("tracestate", "foo=1"),), continues=False),
    Case("tracestate without traceparent, two members", (("tracestate", "foo=1,bar=2"),), continues=False),
    with_state("traceparent and tracestate", ["foo=1,bar=2"], "foo=1,bar=2"),
    Case("wrong name trace-state", (("traceparent", UNSAMPLED), ("trace-state", "foo=1")), continues=True),
    *(Case(f"name {name}", (("traceparent", UNSAMPLED), (name, "foo=1")), continues=True, tracestate="foo=1")
      for name in ("TraceState", "TrAcEsTaTe", "TRACESTATE")),  # fmt: skip
    with_state("empty", [""], None),
    with_state("empty line after", ["foo=1", ""], "foo=1"),
    with_state("empty line before", ["", "foo=1"], "foo=1"),
    with_state("three lines", ["foo=1,bar=2", "rojo=1,congo=2", "baz=3"], "foo=1,bar=2,rojo=1,congo=2,baz=3"),
    with_state("all allowed characters", [f"{KEY}={VALUE}"], f"{KEY}={VALUE}"),
    with_state("all allowed characters, with a vendor", [f"{KEY}@a-z0-9_-*/={VALUE}"], f"{KEY}@a-z0-9_-*/={VALUE}"),
    with_state("spaces and tabs around members", ["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3"),
    with_state("tabs and spaces around members", ["foo=1\t \t,\t \tbar=2,\t \tbaz=3"], "foo=1,bar=2,baz=3"),
    with_state("trailing tab", ["foo=1\t"], "foo=1"),
    with_state("32 members in four lines", BARS[:4], ",".join(BARS[:4])),
    with_state("key of 256 characters", ["foo=1", "z" * 256 + "=1"], "foo=1," + "z" * 256 + "=1"),
    with_state("tenant of 241 and system of 14 characters", ["foo=1", "t" * 241 + "@" + "v" * 14 + "=1"],
               "foo=1," + "t" * 241 + "@" + "v" * 14 + "=1"),  # fmt: skip
    # What the spec says to discard: the traceparent still goes on.
    *(with_state(f"key {state!r}", [state], None) for state in ("foo =1", "FOO=1", "foo.bar=1", "@foo=1,bar=2")),
    with_state("33 members in four lines", BARS[4:], None),
    with_state("key of 257 characters", ["foo=1", "z" * 257 + "=1"], None),
    with_state("value with =", ["foo=bar=baz"], None),
    with_state("empty value", ["foo=,bar=3"], None),
]

# Valid tracestate that OpenTelemetry's TraceState cannot hold: forwarded as the client sent it.
DUPLICATE_KEYS = [
    with_state("foo=1,foo=1", ["foo=1,foo=1"], "foo=1,foo=1"),
    with_state("foo=1,foo=2", ["foo=1,foo=2"], "foo=1,foo=2"),
    with_state("foo=1 twice, two lines", ["foo=1", "foo=1"], "foo=1,foo=1"),
    with_state("foo=1 and foo=2, two lines", ["foo=1", "foo=2"], "foo=1,foo=2"),
    with_state("duplicate keys, sampled", ["rojo=1, congo=2,rojo=3"], "rojo=1, congo=2,rojo=3", traceparent=SAMPLED),
]
AT_SIGN_KEYS = [
    with_state("foo@", ["foo@=1,bar=2"], "foo@=1,bar=2"),
    with_state("foo@@bar", ["foo@@bar=1,bar=2"], "foo@@bar=1,bar=2"),
    with_state("foo@bar@baz", ["foo@bar@baz=1,bar=2"], "foo@bar@baz=1,bar=2"),
    with_state("tenant of 242 characters", ["foo=1", "t" * 242 + "@v=1"], "foo=1," + "t" * 242 + "@v=1"),
    with_state("system of 15 characters", ["foo=1", "t@" + "v" * 15 + "=1"], "foo=1,t@" + "v" * 15 + "=1"),
    with_state("digit first, sampled", ["1vendor=x", "a@1=y"], "1vendor=x,a@1=y", traceparent=SAMPLED),
]




def header_values(upstream: TestUpstream, index: int, name: str) -> list[str]:
    return [value for key, value in upstream.requests[index]["headers"] if key.lower() == name]


async def invalid_total(client: aiohttp.ClientSession, sidecar: RunningSidecar) -> float:
    async with client.get(f"{sidecar.admin_url}/metrics", headers={"Accept": "application/openmetrics-text"}) as response:
        families = {family.name: family for family in parse_openmetrics(await response.text())}
    (total,) = [s.value for s in families["sidecar_trace_context_invalid"].samples if s.name.endswith("_total")]
    return total


async def send(sidecar: RunningSidecar, cases: list[Case]) -> list[float]:
    """Send each case's header lines in one request; how much the invalid counter rose for each."""
    rises = []
    async with aiohttp.ClientSession() as client:
        before = await invalid_total(client, sidecar)
        for case in cases:
            async with client.get(f"{sidecar.url}/echo", headers=CIMultiDict(case.lines)) as response:
                assert response.status == 200, case.name
            after = await invalid_total(client, sidecar)
            rises.append(after - before)
            before = after
    await wait_for(lambda: len(sidecar.exchanges) == len(cases), what="an exchange per request")
    return rises


def caller(case: Case) -> tuple[str, str, int]:
    """(trace id, parent id, flags) of the case's one traceparent."""
    (value,) = case.values("traceparent")
    _, trace_id, parent_id, flags = value.strip(" \t").split("-")[:4]
    return trace_id, parent_id, int(flags, 16)


def spans_by_id(receiver: OtlpReceiver) -> dict[str, ReceivedSpan]:
    return {span.span_id: span for span in receiver.spans}


def participant_failures(case: Case, index: int, upstream: TestUpstream, sidecar: RunningSidecar,
                         spans: dict[str, ReceivedSpan], rise: float) -> list[str]:  # fmt: skip
    """What a spans-exporting sidecar did wrong with one case."""
    wrong = []
    counted = 1 if case.values("traceparent") and not case.continues else 0
    if rise != counted:
        wrong.append(f"counted {rise}, expected {counted}")
    sent = header_values(upstream, index, "traceparent")
    if len(sent) != 1:
        return [*wrong, f"model server got traceparent {sent}"]
    version, trace_id, span_id, flags = sent[0].split("-")
    exchange = sidecar.exchanges[index]
    if version != "00" or (exchange.trace_id, exchange.span_id) != (trace_id, span_id):
        wrong.append(f"model server got {sent[0]}, the exchange says {exchange.trace_id}/{exchange.span_id}")
    if case.continues:
        parent_trace, parent_id, parent_flags = caller(case)
        if (trace_id, int(flags, 16)) != (parent_trace, parent_flags & 0x03):
            wrong.append(f"{sent[0]} does not continue {parent_trace} with flags {parent_flags & 0x03:02x}")
    else:
        parent_id = ""
        refused = {value.strip(" \t").split("-")[1] for _, value in case.lines if value.count("-") >= 3}
        if trace_id in refused or trace_id == "0" * 32 or not int(flags, 16) & 0x01:
            wrong.append(f"{sent[0]} is not a new sampled trace")
    tracestate = header_values(upstream, index, "tracestate")
    if tracestate != ([case.tracestate] if case.tracestate is not None else []):
        wrong.append(f"model server got tracestate {tracestate}, expected {case.tracestate!r}")
    span = spans.get(span_id)
    if exchange.trace_sampled:
        if span is None or (span.trace_id, span.parent_span_id) != (trace_id, parent_id):
            wrong.append(f"exported span {span and (span.trace_id, span.parent_span_id)}, expected {(trace_id, parent_id)}")
    elif span is not None:
        wrong.append("an unsampled span was exported")
    return wrong


def pass_through_failures(case: Case, index: int, upstream: TestUpstream, sidecar: RunningSidecar, rise: float) -> list[str]:
    """What a sidecar without an exporter did wrong with one case."""
    wrong = []
    counted = 1 if case.values("traceparent") and not case.continues else 0
    if rise != counted:
        wrong.append(f"counted {rise}, expected {counted}")
    for name in ("traceparent", "tracestate"):
        # aiohttp's parser strips a value's surrounding whitespace, before the sidecar sees it.
        sent, sent_by_client = header_values(upstream, index, name), [v.strip(" \t") for v in case.values(name)]
        if sent != sent_by_client:
            wrong.append(f"model server got {name} {sent}, the client sent {sent_by_client}")
    exchange = sidecar.exchanges[index]
    expected = caller(case)[0] if case.continues else None
    if (exchange.trace_id, exchange.span_id) != (expected, None):
        wrong.append(f"the exchange records trace {exchange.trace_id}/{exchange.span_id}, expected {expected}")
    return wrong


async def check(cases: list[Case], exporting: bool, upstream: TestUpstream, make_sidecar: SidecarFactory,
                receiver: OtlpReceiver) -> None:  # fmt: skip
    settings = {"tracing__exporter": "otlp", "tracing__endpoint": receiver.endpoint, "tracing__schedule_delay": "100ms"}
    sidecar = await make_sidecar(upstream.url, **(settings if exporting else {}))
    rises = await send(sidecar, cases)
    if exporting:
        sampled = sum(1 for exchange in sidecar.exchanges if exchange.trace_sampled)
        await wait_for(lambda: len(receiver.spans) >= sampled, what=f"{sampled} exported spans")
        spans = spans_by_id(receiver)
        failures = {case.name: participant_failures(case, i, upstream, sidecar, spans, rises[i]) for i, case in enumerate(cases)}
    else:
        failures = {case.name: pass_through_failures(case, i, upstream, sidecar, rises[i]) for i, case in enumerate(cases)}
    failed = {name: wrong for name, wrong in failures.items() if wrong}
    assert not failed, "\n".join(f"{name}: {'; '.join(wrong)}" for name, wrong in failed.items())


MODES = pytest.mark.parametrize("exporting", [True, False], ids=["spans-exported", "pass-through"])


@MODES
async def test_traceparent_cases(exporting: bool, upstream: TestUpstream, make_sidecar: SidecarFactory, receiver: OtlpReceiver):
    await check(TRACEPARENT_CASES, exporting, upstream, make_sidecar, receiver)


@MODES
async def test_two_traceparent_lines_are_an_invalid_traceparent(exporting: bool, upstream: TestUpstream, make_sidecar: SidecarFactory,
                                                                receiver: OtlpReceiver):  # fmt: skip
    """Spans exported: a new trace, without the caller's tracestate; pass-through: forwarded, no trace recorded. Counted."""
    await check(TWO_TRACEPARENTS, exporting, upstream, make_sidecar, receiver)


@MODES
async def test_tracestate_cases(exporting: bool, upstream: TestUpstream, make_sidecar: SidecarFactory, receiver: OtlpReceiver):
    await check(TRACESTATE_CASES, exporting, upstream, make_sidecar, receiver)


@MODES
async def test_tracestate_with_duplicate_keys_is_forwarded(exporting: bool, upstream: TestUpstream, make_sidecar: SidecarFactory,
                                                           receiver: OtlpReceiver):  # fmt: skip
    await check(DUPLICATE_KEYS, exporting, upstream, make_sidecar, receiver)


@MODES
async def test_tracestate_keys_with_at_signs_are_forwarded(exporting: bool, upstream: TestUpstream, make_sidecar: SidecarFactory,
                                                           receiver: OtlpReceiver):  # fmt: skip
    """The key grammar: a lowercase letter or digit, then up to 255 of a-z 0-9 _ - * / @."""
    await check(AT_SIGN_KEYS, exporting, upstream, make_sidecar, receiver)


async def test_the_invalid_counter_says_what_each_mode_does(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.admin_url}/metrics", headers={"Accept": "application/openmetrics-text"}) as response:
            families = {family.name: family for family in parse_openmetrics(await response.text())}
    help_text = families["sidecar_trace_context_invalid"].documentation
    assert "more than one" in help_text  # two traceparent lines count too
    assert "with spans exported" in help_text and "new trace" in help_text
    assert "without an exporter" in help_text and "forwarded unchanged" in help_text
