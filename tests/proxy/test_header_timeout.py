"""proxy.request_header_timeout: a request head (request line and headers) must arrive in time.

Counted from connecting for a connection's first request and from the first
byte of each later one; the idle time between requests is not counted.
"""

from __future__ import annotations

import asyncio
import json
import time

from sidecar.proxy.server import ProxyServer
from tests.conftest import RunningSidecar, SidecarFactory, sidecar_config
from tests.support.upstream import TestUpstream

TIMEOUT = 0.3
# Generous upper bound on when a cut arrives: timers and loopback add milliseconds, loaded CI more.
LATE = TIMEOUT + 0.7


def proxy_server(sidecar: RunningSidecar) -> ProxyServer:
    server = sidecar.sidecar._proxy_server
    assert server is not None
    return server


async def connect(sidecar: RunningSidecar) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", int(sidecar.url.rsplit(":", 1)[1]))


async def read_until_closed(reader: asyncio.StreamReader, limit: float = 3.0) -> bytes:
    """Everything the sidecar sends until it closes the connection (fails after `limit` seconds)."""
    async with asyncio.timeout(limit):
        return await reader.read()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One Content-Length response: (status, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=3)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), timeout=3)


def assert_header_timeout_408(reply: bytes) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:80]
    assert b"Connection: close" in head
    assert json.loads(body)["error"]["type"] == "request_header_timeout"


async def test_a_connection_that_sends_nothing_is_closed_silently(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__request_header_timeout=f"{TIMEOUT}s")
    started = time.monotonic()
    reader, writer = await connect(sidecar)
    assert await read_until_closed(reader) == b""  # like nginx: nobody asked, nobody is answered
    assert TIMEOUT - 0.05 <= time.monotonic() - started < LATE
    assert proxy_server(sidecar).header_timeouts == 1
    assert sidecar.exchanges == []  # no request, no Exchange
    writer.close()


async def test_a_head_still_incomplete_at_the_deadline_gets_408_and_is_closed(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__request_header_timeout=f"{TIMEOUT}s")
    started = time.monotonic()
    reader, writer = await connect(sidecar)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    reply = await read_until_closed(reader)
    assert TIMEOUT - 0.05 <= time.monotonic() - started < LATE
    assert_header_timeout_408(reply)
    assert proxy_server(sidecar).header_timeouts == 1
    assert upstream.requests == []
    writer.close()


async def test_a_head_sent_in_pieces_within_the_deadline_is_served(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__request_header_timeout=f"{TIMEOUT}s")
    reader, writer = await connect(sidecar)
    for piece in (b"GET /echo HT", b"TP/1.1\r\nHost: x\r\n", b"\r\n"):
        writer.write(piece)
        await asyncio.sleep(TIMEOUT / 5)
    status, _ = await read_response(reader)
    assert status == 200
    assert proxy_server(sidecar).header_timeouts == 0
    writer.close()


async def test_keep_alive_idle_time_is_not_counted_but_a_later_slow_head_is(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__request_header_timeout=f"{TIMEOUT}s")
    reader, writer = await connect(sidecar)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    await asyncio.sleep(TIMEOUT * 2)  # idle between requests: the keep-alive timeout's business
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    await asyncio.sleep(TIMEOUT * 2)
    started = time.monotonic()
    writer.write(b"GET /echo HTTP/1.1\r\n")  # counted from this first byte
    reply = await read_until_closed(reader)
    assert TIMEOUT - 0.05 <= time.monotonic() - started < LATE
    assert_header_timeout_408(reply)
    assert len(upstream.requests) == 2
    writer.close()


async def test_a_body_slower_than_the_header_timeout_is_not_cut_by_it(upstream: TestUpstream, make_sidecar: SidecarFactory):
    # A stalled body is the client timeout's business (408 client_body_timeout), not this one's.
    sidecar = await make_sidecar(upstream.url, proxy__request_header_timeout=f"{TIMEOUT}s", proxy__client_timeout="2s")
    reader, writer = await connect(sidecar)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for _ in range(4):
        await asyncio.sleep(TIMEOUT * 0.6)
        writer.write(b"ab")
    status, body = await read_response(reader)
    assert status == 200
    assert json.loads(body)["body_length"] == 8
    assert proxy_server(sidecar).header_timeouts == 0
    writer.close()


async def test_a_head_pipelined_behind_a_long_response_does_not_cut_it(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__request_header_timeout=f"{TIMEOUT}s")
    reader, writer = await connect(sidecar)
    writer.write(b"GET /sse?events=8&interval_ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=3)
    writer.write(b"GET /echo HTTP/1.1\r\n")  # the next head starts, and stops, while the stream runs
    rest = await read_until_closed(reader)
    stream, _, after = rest.partition(b"\r\n0\r\n\r\n")
    assert stream.count(b"data: ") == 8  # the stream (0.8 s, past the deadline) ended whole
    assert_header_timeout_408(after)  # then the pipelined head's deadline applied
    assert sidecar.exchanges[0].status == 200
    writer.close()


async def test_a_reload_applies_to_connections_made_after_it(upstream: TestUpstream, make_sidecar: SidecarFactory, tmp_path):
    sidecar = await make_sidecar(upstream.url, proxy__request_header_timeout="5s")
    old_reader, old_writer = await connect(sidecar)
    sidecar.sidecar.apply_live(
        sidecar_config(upstream.url, tmp_path / "data", {"proxy.request_header_timeout": f"{TIMEOUT}s"})
    )
    new_reader, new_writer = await connect(sidecar)
    assert await read_until_closed(new_reader) == b""
    await asyncio.sleep(0.1)
    assert not old_reader.at_eof()  # made before the reload: still on its 5 s
    assert proxy_server(sidecar).header_timeouts == 1
    old_writer.close()
    new_writer.close()
