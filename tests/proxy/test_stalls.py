"""Peers that stall: neither a silent upstream nor a stalled client may hold a request forever."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from sidecar.exchange import Outcome
from tests.conftest import SidecarFactory
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream


async def test_upstream_that_never_reads_a_large_body_gets_504(make_sidecar: SidecarFactory):
    accepted: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never reads: the sidecar's send buffer fills and its write blocks

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sidecar = await make_sidecar(f"http://127.0.0.1:{port}", upstream__response_start_timeout="1s")
        started = time.monotonic()
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{sidecar.url}/v1/chat/completions", data=b"x" * (8 << 20)) as response:
                assert response.status == 504
                assert (await response.json())["error"]["type"] == "upstream_response_start_timeout"
        assert time.monotonic() - started < 4
        assert sidecar.exchanges[0].outcome is Outcome.UPSTREAM_TIMEOUT
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def send_partial(url: str, head: bytes, body_part: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(head + body_part)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        # By length, not to EOF: aiohttp lingers on a connection whose body was not read.
        return head + await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


async def test_stalled_upload_gets_408_and_releases_the_upstream(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__client_timeout="300ms")
    large = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
    small = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    for head in (large, small):  # streamed body, and body read whole
        started = time.monotonic()
        reply = await send_partial(sidecar.url, head, b"y" * 100)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
        assert b"client_body_timeout" in reply
        assert time.monotonic() - started < 3
    assert [(e.status, e.outcome, e.error_type) for e in sidecar.exchanges] == [
        (408, Outcome.REJECTED, "client_body_timeout")
    ] * 2
    await wait_for(lambda: upstream.open_connections == 0, timeout=3, what="the upstream connection to be released")
    assert upstream.requests == []


async def test_client_that_stops_reading_is_cut_after_the_stall_timeout(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__client_timeout="300ms")
    reader, writer = await asyncio.open_connection("127.0.0.1", int(sidecar.url.rsplit(":", 1)[1]))
    writer.transport.set_write_buffer_limits(0)
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET /bytes?n=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    reader._transport.pause_reading()  # type: ignore[attr-defined]  # a client that never reads
    try:
        await wait_for(lambda: len(sidecar.exchanges) == 1, timeout=5, what="the exchange")
    finally:
        writer.close()
    exchange = sidecar.exchanges[0]
    assert (exchange.outcome, exchange.error_type) == (Outcome.ABORTED, "client_write_timeout")
    assert exchange.response_body_bytes < 50_000_000
    assert sidecar.sidecar.proxy.active_requests == 0


async def test_requests_cut_by_the_drain_timeout_are_recorded_as_aborted(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__drain_timeout="300ms")
    async with aiohttp.ClientSession() as client:
        stream = await client.get(f"{sidecar.url}/sse?events=1000&interval_ms=10")
        waiting = asyncio.create_task(client.get(f"{sidecar.url}/slow-start?delay=30"))
        await wait_for(lambda: sidecar.sidecar.proxy.active_requests == 2, what="both requests in flight")
        started = time.monotonic()
        await sidecar.sidecar.stop()
        elapsed = time.monotonic() - started
        stream.close()
        waiting.cancel()
    assert elapsed < 2.0
    outcomes = sorted((e.path, e.status, e.outcome, e.error_type) for e in sidecar.exchanges)
    assert outcomes == [
        ("/slow-start", 503, Outcome.ABORTED, "drain_timeout"),
        ("/sse", 200, Outcome.ABORTED, "drain_timeout"),
    ]
