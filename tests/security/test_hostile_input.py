"""Hostile clients against a running sidecar, each while a well-behaved client carries on.

Every attack asserts two things: what the attacker gets (a status from the
JSON error, or a closed connection) and, at the same time, that a bystander
sending a steady series of GETs and POSTs through the same sidecar sees only
200s. Requests the sidecar refuses must never reach the upstream: the test
upstream records what it serves, so anything there that is not the
bystander's is a request that got through.

Parser rejections come from aiohttp's C parser (llhttp) and carry no
request id; the proxy handler's own rejections do. The request-limit cases
(414 for a long target, 431 for too many, too long or too large headers) are
in tests/proxy/test_limits_and_failures.py (test_one_oversized_header_line_*,
test_too_many_headers_*, test_overlong_request_target_*,
test_header_section_over_total_limit_*) and are not repeated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest

from sidecar.audit.sinks import audit_files, read_documents
from sidecar.exchange import Exchange
from sidecar.logs import JsonFormatter
from sidecar.proxy.server import ProxyServer
from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

TIMEOUT = 0.5
"""proxy.request_header_timeout and proxy.client_timeout in these tests."""
HARDENED = {
    "proxy__request_header_timeout": f"{TIMEOUT}s",
    "proxy__client_timeout": f"{TIMEOUT}s",
    "proxy__max_request_body": "4KiB",
}


# --- helpers ---------------------------------------------------------------


@dataclass
class RawReply:
    status: int | None
    """Of the first response; None when none came."""
    body: bytes
    closed: bool
    """Whether the sidecar closed the connection before the wait ran out."""
    rest: bytes
    """Whatever followed the first response: a second response here means a second request was read."""

    @property
    def error(self) -> dict:
        return json.loads(self.body)["error"]


async def send_raw(port: int, *pieces: bytes, pause: float = 0.0, wait: float = 3.0) -> RawReply:
    """Send `pieces` as they are (`pause` seconds apart), then read until the sidecar closes or `wait` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read() -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)

    reading = asyncio.create_task(read())
    with contextlib.suppress(ConnectionError):
        for number, piece in enumerate(pieces):
            if number and pause:
                await asyncio.sleep(pause)
            if reading.done():
                break  # the sidecar has hung up on us
            writer.write(piece)
            await writer.drain()
    closed = True
    try:
        await asyncio.wait_for(reading, wait)
    except TimeoutError:
        closed = False
    except ConnectionError:
        pass
    writer.close()
    return parse_reply(bytes(received), closed)


def parse_reply(data: bytes, closed: bool) -> RawReply:
    head, found, after = data.partition(b"\r\n\r\n")
    if not found:
        return RawReply(None, b"", closed, data)
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), None)
    if length is None:  # a relayed chunked answer: kept whole
        return RawReply(int(lines[0].split()[1]), after, closed, b"")
    return RawReply(int(lines[0].split()[1]), after[:length], closed, after[length:])


def proxy_port(sidecar: RunningSidecar) -> int:
    assert sidecar.sidecar.proxy_address is not None
    return sidecar.sidecar.proxy_address.port


def admin_port(sidecar: RunningSidecar) -> int:
    assert sidecar.sidecar.admin_address is not None
    return sidecar.sidecar.admin_address.port


def proxy_server(sidecar: RunningSidecar) -> ProxyServer:
    server = sidecar.sidecar._proxy_server
    assert server is not None
    return server


def reached_upstream(upstream: TestUpstream) -> list[object]:
    """Request targets the upstream served, other than the bystander's."""
    return [record["raw_path"] for record in upstream.requests if "/bystander/" not in str(record["raw_path"])]


@contextlib.asynccontextmanager
async def bystander(sidecar: RunningSidecar, *, at_least: int = 4) -> AsyncIterator[list[object]]:
    """A well-behaved client doing alternate GETs and POSTs through the sidecar while the block runs.

    On leaving the block it checks that every request got a 200, promptly.
    """
    outcomes: list[object] = []
    latencies: list[float] = []
    stop = asyncio.Event()

    async def run() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as client:
            number = 0
            while not stop.is_set() or number < at_least:
                number += 1
                url = f"{sidecar.url}/echo/bystander/{number}"
                request = client.get(url) if number % 2 else client.post(url, data=b"b" * 1000)
                started = time.monotonic()
                try:
                    async with request as response:
                        await response.read()
                        outcomes.append(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcomes.append(repr(exc))
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.01)

    task = asyncio.create_task(run())
    try:
        yield outcomes
    finally:
        stop.set()
        await task
    assert outcomes and set(outcomes) == {200}, outcomes
    assert max(latencies) < 1.0, f"the bystander waited {max(latencies):.2f}s"


@pytest.fixture
async def sidecar(upstream: TestUpstream, make_sidecar: SidecarFactory) -> RunningSidecar:
    return await make_sidecar(upstream.url, **HARDENED)


# --- slow clients ----------------------------------------------------------


async def test_many_slow_header_senders_are_cut_at_the_header_timeout(sidecar: RunningSidecar, upstream: TestUpstream):
    head = b"GET /echo/attack HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200  # never finished

    async def slowloris() -> tuple[RawReply, float]:
        started = time.monotonic()
        reply = await send_raw(proxy_port(sidecar), *(bytes([byte]) for byte in head), pause=0.1, wait=3)
        return reply, time.monotonic() - started

    async with bystander(sidecar) as served:
        results = await asyncio.gather(*(slowloris() for _ in range(50)))
    assert len(served) >= 5  # the bystander kept being served all along
    for reply, elapsed in results:
        assert reply.closed
        assert (reply.status, reply.error["type"]) == (408, "request_header_timeout")
        assert TIMEOUT - 0.05 <= elapsed < TIMEOUT + 1.0
    assert proxy_server(sidecar).header_timeouts == 50
    assert reached_upstream(upstream) == []


async def test_idle_connections_are_closed_silently_at_the_header_timeout(sidecar: RunningSidecar):
    async def idle() -> tuple[RawReply, float]:
        started = time.monotonic()
        reply = await send_raw(proxy_port(sidecar), wait=3)
        return reply, time.monotonic() - started

    async with bystander(sidecar):
        results = await asyncio.gather(*(idle() for _ in range(50)))
    for reply, elapsed in results:
        assert reply.closed and reply.status is None and reply.rest == b""
        assert TIMEOUT - 0.05 <= elapsed < TIMEOUT + 1.0
    assert proxy_server(sidecar).header_timeouts == 50


async def test_a_body_that_trickles_then_stalls_gets_408(sidecar: RunningSidecar, upstream: TestUpstream):
    head = b"POST /echo/attack HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    async with bystander(sidecar):
        # Once the 408 is out, aiohttp keeps reading (and discarding) the rest of
        # a refused body for its lingering time, so the close is not waited for.
        reply = await send_raw(proxy_port(sidecar), head, b"0123456789", b"a", b"b", b"c", pause=0.1, wait=TIMEOUT + 1)
    assert (reply.status, reply.error["type"]) == (408, "client_body_timeout")
    assert reached_upstream(upstream) == []


# --- request smuggling and malformed messages -------------------------------


def http(line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    """A raw request: `line`, a Host header, `headers`, the blank line, `body`."""
    return line + b"\r\nHost: x\r\n" + b"".join(header + b"\r\n" for header in headers) + b"\r\n" + body


GET = b"GET /echo/attack HTTP/1.1"
POST = b"POST /echo/attack HTTP/1.1"
SMUGGLED = http(b"GET /echo/smuggled HTTP/1.1")
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
TE = b"Transfer-Encoding: "


class Refusal(NamedTuple):
    raw: bytes
    status: int = 400
    error_type: str = "bad_request"
    refused_by: str = "parser"
    """parser: aiohttp's C parser (llhttp), whose errors carry no request id; handler: the proxy's own checks."""


SMUGGLING = {
    # Framing the sidecar and an upstream could read differently.
    "content-length-and-chunked": Refusal(http(POST, b"Content-Length: 5", TE + b"chunked", body=b"0\r\n\r\n" + SMUGGLED)),
    "two-content-lengths": Refusal(http(POST, b"Content-Length: 5", b"Content-Length: 6", body=b"hello!")),
    "same-content-length-twice": Refusal(http(POST, b"Content-Length: 5", b"Content-Length: 5", body=b"hello")),
    "content-length-list": Refusal(http(POST, b"Content-Length: 5, 5", body=b"hello")),
    "content-length-signed": Refusal(http(POST, b"Content-Length: +5", body=b"hello")),
    "chunked-then-identity": Refusal(http(POST, TE + b"chunked, identity", body=CHUNKED_HELLO)),
    "xchunked": Refusal(http(POST, TE + b"xchunked", body=CHUNKED_HELLO)),
    "chunked-and-identity-lines": Refusal(http(POST, TE + b"chunked", TE + b"identity", body=CHUNKED_HELLO)),
    "space-before-transfer-encoding-line": Refusal(http(POST, b" " + TE + b"chunked", body=CHUNKED_HELLO)),
    "whitespace-after-chunked": Refusal(http(POST, TE + b"chunked \t", body=CHUNKED_HELLO)),
    "vertical-tab-before-chunked": Refusal(http(POST, TE + b"\x0bchunked", body=CHUNKED_HELLO)),
    "identity-then-chunked": Refusal(http(POST, TE + b"identity, chunked", body=CHUNKED_HELLO), 501, "unsupported_transfer_coding", "handler"),
    "gzip-then-chunked-then-a-request": Refusal(http(POST, TE + b"gzip, chunked", body=b"0\r\n\r\n" + SMUGGLED), 501, "unsupported_transfer_coding", "handler"),
    "chunked-in-http-1.0": Refusal(http(b"POST /echo/attack HTTP/1.0", TE + b"chunked", body=CHUNKED_HELLO), refused_by="handler"),
    "obs-fold-continuation": Refusal(http(POST, b"X-Folded: a", b"  continued", b"Content-Length: 5", body=b"hello")),
    "obs-fold-into-transfer-encoding": Refusal(http(POST, TE + b"identity", b"\tchunked", body=CHUNKED_HELLO)),
    "space-before-colon": Refusal(http(POST, b"Content-Length : 5", body=b"hello")),
    "invalid-chunk-size": Refusal(http(POST, TE + b"chunked", body=b"zz\r\nhello\r\n0\r\n\r\n")),
    "chunk-size-overflow": Refusal(http(POST, TE + b"chunked", body=b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n")),
    "chunk-size-line-bare-lf": Refusal(http(POST, TE + b"chunked", body=b"5\nhello\r\n0\r\n\r\n")),
    # Over the 4 KiB body limit: refused before the body is read. The request
    # "inside" it is body bytes, whose end the sidecar waits for before closing.
    "request-inside-a-refused-body": Refusal(http(POST, b"Content-Length: %d" % (5000 + len(SMUGGLED)), body=b"x" * 5000 + SMUGGLED), 413, "request_body_too_large", "handler"),
    # Line endings and characters that parsers disagree on.
    "bare-lf-line-endings": Refusal(b"GET /echo/attack HTTP/1.1\nHost: x\n\n"),
    "bare-lf-after-one-header": Refusal(b"GET /echo/attack HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n"),
    "bare-cr": Refusal(b"GET /echo/attack HTTP/1.1\rHost: x\r\n\r\n"),
    "cr-inside-header-value": Refusal(http(GET, b"X-A: a\rb")),
    "nul-in-request-target": Refusal(http(b"GET /echo/attack\x00 HTTP/1.1")),
    "control-char-in-request-target": Refusal(http(b"GET /echo/att\x01ack HTTP/1.1")),
    "tab-in-request-target": Refusal(http(b"GET /echo/att\tack HTTP/1.1")),
    "nul-in-header-value": Refusal(http(GET, b"X-A: a\x00b")),
    "control-char-in-header-value": Refusal(http(GET, b"X-A: a\x01b")),
    "del-in-header-value": Refusal(http(GET, b"X-A: a\x7fb")),
    "two-host-headers": Refusal(http(GET, b"Host: y")),
}  # fmt: skip


@pytest.mark.parametrize("case", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_ambiguous_or_malformed_requests_are_refused_and_the_connection_closed(
    sidecar: RunningSidecar, upstream: TestUpstream, case: Refusal
):
    async with bystander(sidecar):
        reply = await send_raw(proxy_port(sidecar), case.raw)
    assert (reply.status, reply.error["type"]) == (case.status, case.error_type)
    assert ("request_id" in reply.error) == (case.refused_by == "handler")
    assert reply.closed
    assert reply.rest == b""  # no second response: nothing after the refused request was read as one
    assert reached_upstream(upstream) == []


async def test_bytes_after_an_upgrade_request_are_not_taken_for_another_request(sidecar: RunningSidecar, upstream: TestUpstream):
    # Upgrades are not proxied: the request goes upstream without Upgrade, and
    # what the client sent after it (meant for the other protocol) is dropped
    # with the connection.
    raw = http(b"GET /echo/upgrade HTTP/1.1", b"Connection: Upgrade", b"Upgrade: websocket") + SMUGGLED
    async with bystander(sidecar):
        reply = await send_raw(proxy_port(sidecar), raw)
    assert reply.status == 200 and reply.closed and reply.rest == b""
    assert reached_upstream(upstream) == ["/echo/upgrade"]


async def test_chunked_with_extra_whitespace_is_framed_the_same_on_both_sides(sidecar: RunningSidecar, upstream: TestUpstream):
    # Whitespace before a field value is valid HTTP: not an attack, but the
    # framing the sidecar reads must be the one the upstream is sent. The
    # sidecar re-frames the body itself, so the upstream sees exactly "hello".
    # (Whitespace after "chunked" is refused by the parser: see SMUGGLING.)
    async with bystander(sidecar):
        reply = await send_raw(proxy_port(sidecar), http(POST, TE + b"\t chunked", b"Connection: close", body=CHUNKED_HELLO))
    assert reply.status == 200 and reply.closed
    assert json.loads(reply.body)["body_length"] == 5
    assert reached_upstream(upstream) == ["/echo/attack"]


# --- request targets ---------------------------------------------------------

TARGETS = {
    "absolute-form": b"GET http://evil.example/echo/attack HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "absolute-form-own-host": b"GET http://127.0.0.1/echo/attack HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "authority-form": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("raw", TARGETS.values(), ids=TARGETS.keys())
async def test_targets_other_than_a_path_are_refused(sidecar: RunningSidecar, upstream: TestUpstream, raw: bytes):
    async with bystander(sidecar):
        reply = await send_raw(proxy_port(sidecar), raw)
    assert (reply.status, reply.error["type"]) == (400, "bad_request")
    assert "origin-form" in reply.error["message"]
    assert reply.closed and reply.rest == b""
    assert reached_upstream(upstream) == []


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2"])
async def test_request_lines_of_other_http_versions_get_505(sidecar: RunningSidecar, upstream: TestUpstream, version: bytes):
    async with bystander(sidecar):
        reply = await send_raw(proxy_port(sidecar), b"GET /echo/attack " + version + b"\r\nHost: x\r\n\r\n")
    assert reply.status in (400, 505)  # llhttp refuses some version numbers itself
    if reply.status == 505:
        assert reply.error["type"] == "http_version_not_supported"
    assert reply.closed
    assert reached_upstream(upstream) == []


async def test_idle_keep_alive_connections_are_closed_after_the_keepalive_timeout(
    upstream: TestUpstream, make_sidecar: SidecarFactory
):
    running = await make_sidecar(upstream.url, proxy__keepalive_timeout="0.5s")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(running))
    writer.write(get("/echo/once"))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    async with asyncio.timeout(5):
        while await reader.read(65536):
            pass  # the rest of the answer, then the close
    assert time.monotonic() - started < 3
    writer.close()


# --- admin routes ------------------------------------------------------------

ADMIN_LOOKALIKES = [
    "/-/config", "/metrics", "/-/alerts", "/-/slo", "/-/healthy", "/-/ready", "/-/status.json", "/-/static/status.js",
    "/../-/ready", "/%2e%2e/metrics", "/%2E%2E/-/healthy", "//-/healthy", "/./metrics",
    "/-/static/../../etc/passwd", "//evil.example/-/healthy",
]  # fmt: skip
"""Paths the upstream does not serve: its own 404 must come back."""

FORWARDED_VERBATIM = ["/echo/../-/ready", "/echo/%2e%2e/metrics", "/echo//-/healthy", "/echo/%2F..%2F-%2Fconfig"]
"""Paths the upstream echoes: it must receive exactly the target the client sent."""

ADMIN_CONTENT = (b"# HELP", b"# TYPE", b'"healthy"', b'"ready"', b"inference-sidecar", b"<html", b"root:")


def get(target: str, *headers: bytes) -> bytes:
    """A raw GET of `target` exactly as written, on a connection the server closes after it."""
    return http(b"GET %s HTTP/1.1" % target.encode(), *headers, b"Connection: close")


def assert_not_admin_content(body: bytes) -> None:
    for marker in ADMIN_CONTENT:
        assert marker not in body, marker


@pytest.mark.parametrize("path", ADMIN_LOOKALIKES)
async def test_admin_paths_on_the_proxy_port_go_to_the_upstream(sidecar: RunningSidecar, upstream: TestUpstream, path: str):
    async with bystander(sidecar):
        reply = await send_raw(proxy_port(sidecar), get(path))
    assert (reply.status, reply.body) == (404, b"404: Not Found")  # aiohttp's 404, from the upstream
    assert_not_admin_content(reply.body)
    await wait_for(lambda: any("/bystander/" not in e.path for e in sidecar.exchanges), what="the exchange")
    attack = next(e for e in sidecar.exchanges if "/bystander/" not in e.path)
    assert attack.upstream_status == 404  # answered by the upstream, not made up by the sidecar


@pytest.mark.parametrize("path", FORWARDED_VERBATIM)
async def test_dot_segments_and_encoded_slashes_are_forwarded_verbatim(sidecar: RunningSidecar, upstream: TestUpstream, path: str):
    async with bystander(sidecar):
        reply = await send_raw(proxy_port(sidecar), get(path))
    assert reply.status == 200
    assert json.loads(reply.body)["raw_path"] == path
    assert_not_admin_content(reply.body)
    assert reached_upstream(upstream) == [path]


STATIC_TRAVERSALS = [
    "/-/static/..%2f..%2fetc%2fpasswd", "/-/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/-/static/..%2F..%2Fetc%2Fpasswd",
    "/-/static/../../etc/passwd", "/-/static/..%5c..%5cetc%5cpasswd", "/-/static/status.html%00.js",
    "/-/static/%2fetc%2fpasswd", "/-/static/..%2fstatic%2fstatus.html", "/-/static/.", "/-/static/..",
]  # fmt: skip


@pytest.mark.parametrize("path", STATIC_TRAVERSALS)
async def test_admin_static_files_refuse_traversal(sidecar: RunningSidecar, path: str):
    served = await send_raw(admin_port(sidecar), get("/-/static/status.html"))
    assert served.status == 200  # the route exists, so a 404 below is the handler refusing
    async with bystander(sidecar):
        reply = await send_raw(admin_port(sidecar), get(path))
    assert reply.status == 404
    assert b"root:" not in reply.body and b"<html" not in reply.body.lower()


# --- large model-call bodies ------------------------------------------------


async def test_a_huge_chat_request_is_forwarded_whole_and_read_only_as_far_as_the_peek(upstream: TestUpstream, make_sidecar: SidecarFactory):
    # The upstream's echo route stands in for the model server (base path /echo),
    # so it reports the length and digest of exactly what it received.
    settings = {**HARDENED, "proxy__max_request_body": "16MiB", "llm__request_peek_bytes": "64KiB"}
    sidecar = await make_sidecar(f"{upstream.url}/echo", **settings)
    # Two "model" keys tell the parses apart: the prefix scan finds the first,
    # a whole-body JSON parse would keep the last.
    body = (
        b'{"model": "first-model", "messages": [{"role": "user", "content": "'
        + b"x" * (5 << 20)
        + b'"}], "model": "last-model"}'
    )
    async with bystander(sidecar):
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"{sidecar.url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 200
                received = await response.json()
    assert received["raw_path"] == "/echo/v1/chat/completions"
    assert received["body_length"] == len(body)
    assert received["body_sha256"] == hashlib.sha256(body).hexdigest()
    await wait_for(lambda: any(e.route for e in sidecar.exchanges), what="the model call's exchange")
    call = next(e for e in sidecar.exchanges if e.route)
    assert call.request_body_bytes == len(body)
    assert call.gen_ai is not None
    assert call.gen_ai.request_model == "first-model"  # found within the 64 KiB kept, the rest streamed past


# --- what reaches the logs and the audit trail ------------------------------


@pytest.fixture
async def logged_sidecar(
    upstream: TestUpstream, make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> RunningSidecar:
    caplog.set_level(logging.INFO, logger="sidecar.access")
    return await make_sidecar(upstream.url, log__access_log=True, **HARDENED)


async def access_line_for(
    raw: bytes, sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture
) -> tuple[RawReply, str]:
    """Send one request; return the reply and the one JSON access-log line its exchange produced."""

    def records() -> list[logging.LogRecord]:
        return [
            record for record in caplog.records
            if record.name == "sidecar.access" and "/bystander/" not in getattr(record, "url.path", "")
        ]  # fmt: skip

    def exchanges() -> list[Exchange]:
        return [exchange for exchange in sidecar.exchanges if "/bystander/" not in exchange.path]

    exchanges_before, lines_before = len(exchanges()), len(records())
    reply = await send_raw(proxy_port(sidecar), raw)
    await wait_for(
        lambda: len(exchanges()) > exchanges_before and len(records()) > lines_before, what="the access record"
    )
    await asyncio.sleep(0.05)  # a second record for the same exchange would have arrived by now
    (exchange,) = exchanges()[exchanges_before:]
    new = records()[lines_before:]
    assert len(new) == 1, [JsonFormatter().format(record) for record in new]
    assert getattr(new[0], "http.request.id") == exchange.request_id
    line = JsonFormatter().format(new[0])
    assert json.loads(line)["url.path"] == exchange.path  # the value survives, escaped
    return reply, line


LOGGED = {
    # Forwarded as sent; the upstream's router finds no route for a path with a line break in it.
    "percent-encoded-crlf-in-path": (get("/echo/x%0d%0aFAKE:%20injected"), 404),
    "percent-encoded-nul-and-escape-in-path": (get("/echo/x%00%1b[31m"), 200),
    "tab-in-user-agent": (get("/echo/ua", b"User-Agent: curl\t7.0"), 200),
    "del-in-user-agent": (get("/echo/ua", b"User-Agent: curl\x7f7.0"), 400),  # refused by the parser: still one record
    "crlf-in-the-path-of-a-refused-request": (get("/echo/x%0d%0aFAKE", b"Content-Length : 1"), 400),
}


@pytest.mark.parametrize(("raw", "status"), LOGGED.values(), ids=LOGGED.keys())
async def test_client_controlled_values_cannot_forge_access_log_lines(
    logged_sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture, raw: bytes, status: int
):
    async with bystander(logged_sidecar):
        reply, line = await access_line_for(raw, logged_sidecar, caplog)
    assert reply.status == status
    assert "\r" not in line and "\n" not in line


async def test_unicode_line_separators_in_the_path_do_not_split_the_access_line(
    logged_sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture
):
    _, line = await access_line_for(get("/echo/x%c2%85FAKE%e2%80%a8FAKE%e2%80%a9"), logged_sidecar, caplog)
    assert len(line.splitlines()) == 1


@pytest.mark.parametrize("header", [b"User-Agent: evil\xff", b"Content-Type: text/\xfe"])
async def test_non_utf8_header_bytes_do_not_cost_the_request_its_audit_record(
    upstream: TestUpstream, make_sidecar: SidecarFactory, tmp_path: Path, header: bytes
):
    sidecar = await make_sidecar(upstream.url, audit__elasticsearch__batch_age="20ms", **HARDENED)
    reply = await send_raw(proxy_port(sidecar), get("/echo/audited", header))
    assert reply.status == 200
    await sidecar.sidecar.stop()
    documents = list(read_documents(audit_files(tmp_path / "data" / "audit" / "events")))
    actions = [document["event"]["action"] for document in documents]
    assert "audit-events-dropped" not in actions
    requests = [document for document in documents if document["event"]["action"] == "http-request"]
    assert [document["url"]["path"] for document in requests] == ["/echo/audited"]


async def test_a_model_name_that_is_not_unicode_breaks_neither_metrics_nor_audit(
    upstream: TestUpstream, make_sidecar: SidecarFactory, tmp_path: Path
):
    sidecar = await make_sidecar(upstream.url, audit__elasticsearch__batch_age="20ms", **HARDENED)
    async with aiohttp.ClientSession() as client:
        chat = f"{sidecar.url}/v1/chat/completions"
        async with client.post(chat, data=b'{"model": "\\ud800x"}', headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200  # the upstream is content with it
        await wait_for(lambda: any(e.route for e in sidecar.exchanges), what="the model call's exchange")
        async with client.get(f"{sidecar.admin_url}/metrics") as response:
            assert response.status == 200
    await sidecar.sidecar.stop()
    documents = list(read_documents(audit_files(tmp_path / "data" / "audit" / "events")))
    assert "audit-events-dropped" not in [document["event"]["action"] for document in documents]
