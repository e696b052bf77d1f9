"""Clients that walk away mid-stream: the upstream is released, nothing leaks, nothing is logged as an error."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sidecar.exchange import Outcome
from tests.conftest import SidecarFactory
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

DISCONNECTS = 100


async def open_stream_then_vanish(url: str) -> None:
    """Read the first event of a long stream, then drop the TCP connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0]))
    writer.write(b"GET /sse?events=1000&interval_ms=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    writer.transport.abort()


async def test_client_disconnects_mid_stream_release_everything(upstream: TestUpstream, make_sidecar: SidecarFactory, caplog):
    caplog.set_level(logging.DEBUG)
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/echo") as response:
            await response.read()
    baseline = upstream.open_connections  # the pool's one idle keep-alive connection

    for batch in range(DISCONNECTS // 10):
        await asyncio.gather(*(open_stream_then_vanish(sidecar.url) for _ in range(10)))

    # Each upstream stream would run 10 s; they must all be cut well before.
    await wait_for(lambda: upstream.streams_cut == DISCONNECTS, timeout=5, what="the upstream to see every stream cut")
    await wait_for(lambda: len(sidecar.exchanges) == DISCONNECTS + 1, timeout=5, what="one exchange per request")
    await wait_for(lambda: upstream.open_connections <= baseline, timeout=5, what="upstream connections back to baseline")
    assert upstream.streams_finished == 0

    streams = sidecar.exchanges[1:]
    assert {e.outcome for e in streams} == {Outcome.CLIENT_CLOSED}
    assert {e.status for e in streams} == {200}  # headers had gone out; the status stands
    assert all(e.response_body_bytes > 0 and e.duration_s < 5 for e in streams)
    assert sidecar.sidecar.proxy.active_requests == 0

    # The pool still works after all that.
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/sse?events=3&interval_ms=0") as response:
            assert (await response.read()).count(b"data: ") == 3
        async with client.get(f"{sidecar.admin_url}/metrics") as response:
            families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    closed = [s.value for s in families["sidecar_exchanges"].samples if s.labels.get("outcome") == "client_closed" and s.name.endswith("_total")]
    assert closed == [DISCONNECTS]

    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_client_disconnect_before_response_start_cancels_the_upstream_request(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(sidecar.url.rsplit(":", 1)[1]))
    writer.write(b"GET /slow-start?delay=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await wait_for(lambda: upstream.open_connections == 1, what="the upstream request")
    writer.transport.abort()
    await wait_for(lambda: len(sidecar.exchanges) == 1, timeout=3, what="the exchange")
    exchange = sidecar.exchanges[0]
    assert (exchange.outcome, exchange.status, exchange.first_byte_s) == (Outcome.CLIENT_CLOSED, 499, None)
    # The model server's connection is closed, which is how it learns to stop generating.
    await wait_for(lambda: upstream.open_connections == 0, timeout=3, what="the upstream connection to close")
