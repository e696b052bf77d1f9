"""Incoming W3C trace context (traceparent, tracestate, baggage) through Tracing and the upstream headers.

The properties, for any request headers, with and without an exporter:
- `Tracing.start` never raises, and counts a present traceparent that is not valid (one sent
  in more than one line is not);
- a valid traceparent is continued (same trace id, the sidecar's span is its child, the
  sampled flag followed), an invalid or absent one starts a new trace (with an exporter) or
  leaves the request untraced (without one, where the sidecar opens no span);
- the upstream request carries exactly one well-formed W3C `traceparent` naming the sidecar's
  span; a `tracestate` exactly when the traceparent was continued and the client's lines form a
  valid list (Level 2 key grammar, at most 32 members; repeated keys are the sender's to avoid,
  not a reason to drop it), with the same members in the same order; the client's `baggage`
  byte for byte (tracing.py promises that rather than re-encoding it); without an exporter, the
  client's trace headers unchanged;
- the baggage extracted into the span's context stays within W3C limits (180 members, 8192 bytes).

Bytes format (atheris, corpus): one header per line, `name: value`, decoded as UTF-8 with
surrogateescape, as aiohttp decodes request headers.
"""

from __future__ import annotations

import re
from functools import cache

from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import baggage, trace

from sidecar.config import TracingConfig
from sidecar.proxy.headers import upstream_request_headers
from sidecar.telemetry.tracing import TRACE_HEADERS, Tracing
from tests.fuzz.known_bugs import hit, raised_in

Headers = list[tuple[str, str]]

# Written from the W3C Trace Context and Baggage recommendations, not from the SDK's code.
TRACEPARENT_OUT = re.compile(r"00-(?!0{32}-)[0-9a-f]{32}-(?!0{16}-)[0-9a-f]{16}-[0-9a-f]{2}")
_INCOMING = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_KEY = r"[a-z0-9][a-z0-9_\-*/@]{0,255}"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
TRACESTATE_MEMBER = re.compile(f"({_KEY})=({_VALUE})")
MAX_TRACEPARENT = 512  # longer values are ignored, as the SDK does (a new trace starts)
MAX_TRACESTATE = 8192  # longer (joined) lists are dropped, as the SDK does
MAX_TRACESTATE_MEMBERS = 32
BAGGAGE_MAX_MEMBERS = 180
BAGGAGE_MAX_BYTES = 8192


def expected_parent(value: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent id, flags) of a traceparent the sidecar must continue, else None."""
    if value is None or len(value) > MAX_TRACEPARENT:
        return None
    match = _INCOMING.fullmatch(value.strip(" \t"))
    if not match:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version == "00" and rest is not None:
        return None  # version 00 has exactly four fields
    return trace_id, parent_id, int(flags, 16)


def tracestate_members(value: str) -> list[tuple[str, str]] | None:
    """The members of one tracestate value, or None where W3C says to discard it."""
    members: list[tuple[str, str]] = []
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        match = TRACESTATE_MEMBER.fullmatch(member)
        if not match:
            return None
        members.append((match.group(1), match.group(2)))
    return members


@cache
def tracer(exporting: bool) -> Tracing:
    """One Tracing per mode for the process; with an exporter its spans are never ended, so never exported."""
    config = TracingConfig(exporter="console" if exporting else "none")
    return Tracing(config, instance_id="fuzz", provider_name="")


def _upstream(headers: CIMultiDictProxy[str], tracing: Tracing, span) -> CIMultiDict[str]:  # type: ignore[no-untyped-def]
    upstream = upstream_request_headers(
        headers,
        host="upstream.invalid",
        client_ip="127.0.0.1",
        scheme="http",
        client_host=headers.get("Host"),
        forwarded=True,
        trust_incoming_forwarded=False,
        request_id_header="x-request-id",
        request_id="fuzz",
        replaced=TRACE_HEADERS if span.own else frozenset(),
    )
    tracing.inject(span, upstream)
    return upstream


def check_headers(pairs: Headers, exporting: bool) -> None:
    tracing = tracer(exporting)
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    before = tracing.invalid_trace_headers
    try:
        span = tracing.start(headers, "POST", "/v1/chat/completions", 1_000_000_000)
    except UnicodeEncodeError as exc:
        if raised_in(exc, "opentelemetry/baggage") and any(
            not value.isascii() for value in headers.getall("baggage", ())
        ):
            hit("baggage-not-utf8", repr(headers.getall("baggage")))
        raise

    traceparents = headers.getall("traceparent", [])
    traceparent = traceparents[0] if len(traceparents) == 1 else None
    parent = expected_parent(traceparent)  # none when sent in several lines: W3C says invalid
    counted = tracing.invalid_trace_headers - before
    assert counted == (1 if traceparents and parent is None else 0), (traceparents, counted)

    trace_id, span_id, sampled = span.ids()
    upstream = _upstream(headers, tracing, span)
    client = {name: headers.getall(name, []) for name in ("traceparent", "tracestate", "baggage")}
    sent = {name: upstream.getall(name, []) for name in ("traceparent", "tracestate", "baggage")}
    assert sent["baggage"] == client["baggage"], "baggage must reach the upstream byte for byte"

    if not exporting:
        assert not span.own and span_id is None
        if parent is None:
            assert (trace_id, sampled) == (None, False), traceparent
        else:
            assert (trace_id, sampled) == (parent[0], bool(parent[2] & 1))
        assert sent["traceparent"] == client["traceparent"] and sent["tracestate"] == client["tracestate"]
        _check_baggage(span.parent)
        return

    assert span.own and trace_id is not None and span_id is not None
    (written,) = sent["traceparent"]
    assert TRACEPARENT_OUT.fullmatch(written), written
    _, written_trace, written_span, written_flags = written.split("-")
    assert (written_trace, written_span) == (trace_id, span_id)
    assert bool(int(written_flags, 16) & 1) == sampled
    if parent is None:
        assert sampled  # a new trace, and sample_ratio is 1
        assert not sent["tracestate"], "a tracestate without a valid traceparent must be dropped"
    else:
        assert trace_id == parent[0], "a valid traceparent must be continued"
        continued = trace.get_current_span(span.parent).get_span_context()
        assert trace.format_span_id(continued.span_id) == parent[1] and continued.is_remote
        recorded_parent = getattr(span.span, "parent", None)  # a non-recording (unsampled) span has none
        assert recorded_parent is None or recorded_parent.span_id == continued.span_id
        assert span_id != parent[1]
        assert sampled == bool(parent[2] & 1)
        _check_tracestate(client["tracestate"], sent["tracestate"])
    _check_baggage(span.parent)


def _check_tracestate(client: list[str], sent: list[str]) -> None:
    # The field's lines form one list (RFC 9110 §5.3), forwarded whole or, if invalid, not at all.
    joined = ",".join(client)
    members = tracestate_members(joined) if client and len(joined) <= MAX_TRACESTATE else None
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        assert not sent, f"an invalid or empty tracestate must be dropped: {client!r} went on as {sent!r}"
        return
    assert len(sent) == 1 and tracestate_members(sent[0]) == members, (client, sent)


def _check_baggage(context) -> None:  # type: ignore[no-untyped-def]
    entries = baggage.get_all(context)
    assert len(entries) <= BAGGAGE_MAX_MEMBERS
    size = sum(len(str(name).encode("utf-8", "surrogatepass")) + len(str(value).encode("utf-8", "surrogatepass")) + 1
               for name, value in entries.items())  # fmt: skip
    assert size <= BAGGAGE_MAX_BYTES, size


def headers_from_bytes(data: bytes) -> Headers:
    pairs: Headers = []
    for line in data.split(b"\n"):
        name, colon, value = line.partition(b":")
        name = name.strip()
        if not colon or not name:
            continue
        pairs.append(
            (name.decode("utf-8", "surrogateescape"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
        )
    return pairs


def check_bytes(data: bytes) -> None:
    pairs = headers_from_bytes(data)
    for exporting in (False, True):
        check_headers(pairs, exporting)
