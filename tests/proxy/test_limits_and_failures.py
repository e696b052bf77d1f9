"""Requests the sidecar refuses, and upstream failures it reports, each with its Exchange."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from sidecar.exchange import Outcome
from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.tools import closed_port, wait_for
from tests.support.upstream import TestUpstream


async def raw_request(sidecar: RunningSidecar, data: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are; return (status, headers, body) of the reply."""
    port = int(sidecar.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    # Read by Content-Length, not to EOF: after refusing a body, aiohttp keeps
    # the socket open a while to drain it (lingering close), as nginx does.
    body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), timeout=5)
    writer.close()
    return int(lines[0].split()[1]), headers, body


def assert_error_body(body: bytes, status: int, error_type: str) -> dict:
    error = json.loads(body)["error"]
    assert error["code"] == status
    assert error["type"] == error_type
    assert error["message"]
    return error


async def test_declared_body_over_limit_gets_413_without_touching_upstream(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__max_request_body="1KiB")
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{sidecar.url}/echo", data=b"x" * 1025) as response:
            assert response.status == 413
            error = assert_error_body(await response.read(), 413, "request_body_too_large")
            assert error["request_id"] == response.headers["X-Request-Id"]
        async with client.post(f"{sidecar.url}/echo", data=b"x" * 1024) as response:
            assert response.status == 200
            assert (await response.json())["body_length"] == 1024
    assert len(upstream.requests) == 1
    rejected = sidecar.exchanges[0]
    assert (rejected.status, rejected.outcome, rejected.error_type) == (413, Outcome.REJECTED, "request_body_too_large")
    assert rejected.upstream_status is None


async def test_chunked_body_over_limit_gets_413(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__max_request_body="256KiB")

    async def body():
        for _ in range(10):
            yield b"y" * 65536

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{sidecar.url}/echo", data=body()) as response:
            assert response.status == 413
            assert_error_body(await response.read(), 413, "request_body_too_large")
    await wait_for(lambda: len(sidecar.exchanges) == 1, what="the exchange")
    exchange = sidecar.exchanges[0]
    assert (exchange.outcome, exchange.error_type) == (Outcome.REJECTED, "request_body_too_large")
    assert exchange.request_body_bytes > 256 * 1024
    assert upstream.requests == []  # the upstream never saw a complete request


async def test_header_section_over_total_limit_gets_431(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__max_header_bytes="4KiB")
    headers = {f"X-Filler-{i}": "v" * 200 for i in range(30)}  # ~6.5 KB, every line short
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/echo", headers=headers) as response:
            assert response.status == 431
            assert_error_body(await response.read(), 431, "request_header_fields_too_large")
    exchange = sidecar.exchanges[0]
    assert (exchange.status, exchange.outcome) == (431, Outcome.REJECTED)
    assert upstream.requests == []


async def test_one_oversized_header_line_gets_431_from_the_parser(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__max_header_bytes="4KiB")
    status, headers, body = await raw_request(
        sidecar, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
    )
    assert status == 431
    assert headers["Content-Type"].startswith("application/json")
    assert_error_body(body, 431, "request_header_fields_too_large")
    await wait_for(lambda: len(sidecar.exchanges) == 1, what="the exchange")
    assert (sidecar.exchanges[0].status, sidecar.exchanges[0].outcome) == (431, Outcome.REJECTED)


async def test_too_many_headers_gets_431(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__max_header_count=20)
    lines = b"".join(b"X-H%d: 1\r\n" % i for i in range(40))
    status, _, body = await raw_request(sidecar, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert status == 431
    assert_error_body(body, 431, "request_header_fields_too_large")


async def test_overlong_request_target_gets_414(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__max_url_bytes="1KiB")
    status, _, body = await raw_request(sidecar, b"GET /echo?" + b"q" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414
    assert_error_body(body, 414, "request_uri_too_long")
    await wait_for(lambda: len(sidecar.exchanges) == 1, what="the exchange")
    assert sidecar.exchanges[0].error_type == "request_uri_too_long"


async def test_garbage_gets_a_json_400(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    status, _, body = await raw_request(sidecar, b"NOT HTTP AT ALL\x00\r\n\r\n")
    assert status == 400
    assert_error_body(body, 400, "bad_request")


async def test_absolute_form_target_is_refused(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    status, _, body = await raw_request(sidecar, b"GET http://elsewhere.example/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    assert_error_body(body, 400, "bad_request")
    assert upstream.requests == []


async def test_upstream_down_gets_502(make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(f"http://127.0.0.1:{closed_port()}")
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{sidecar.url}/v1/chat/completions", json={"model": "m"}) as response:
            assert response.status == 502
            assert_error_body(await response.read(), 502, "upstream_connect_error")
    exchange = sidecar.exchanges[0]
    assert (exchange.status, exchange.outcome, exchange.error_type) == (
        502,
        Outcome.UPSTREAM_UNAVAILABLE,
        "upstream_connect_error",
    )
    assert exchange.is_server_error


async def test_upstream_silent_past_response_start_timeout_gets_504(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, upstream__response_start_timeout="300ms")
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/slow-start?delay=5") as response:
            assert response.status == 504
            assert_error_body(await response.read(), 504, "upstream_response_start_timeout")
    exchange = sidecar.exchanges[0]
    assert (exchange.status, exchange.outcome) == (504, Outcome.UPSTREAM_TIMEOUT)
    assert 0.3 <= exchange.duration_s < 2


async def test_response_start_timeout_does_not_cut_a_slow_but_steady_stream(upstream: TestUpstream, make_sidecar: SidecarFactory):
    # 20 events 50 ms apart last 1 s, far past the 300 ms response-start limit,
    # but no gap exceeds the idle limit.
    sidecar = await make_sidecar(upstream.url, upstream__response_start_timeout="300ms", upstream__idle_timeout="500ms")
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/sse?events=20&interval_ms=50") as response:
            body = await response.read()
    assert body.count(b"data: ") == 20
    assert sidecar.exchanges[0].outcome is Outcome.COMPLETED


async def test_upstream_stalling_mid_stream_is_cut_after_idle_timeout(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, upstream__idle_timeout="300ms")
    received = b""
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/stall?chunks=2&sleep=10") as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in response.content.iter_any():
                    received += chunk
    assert received == b"data: 0\n\ndata: 1\n\n"  # what was relayed before the stall arrives intact
    await wait_for(lambda: len(sidecar.exchanges) == 1, what="the exchange")
    exchange = sidecar.exchanges[0]
    assert (exchange.status, exchange.outcome, exchange.error_type) == (
        200,
        Outcome.UPSTREAM_TIMEOUT,
        "upstream_idle_timeout",
    )
    assert exchange.duration_s < 3


async def test_upstream_breaking_off_mid_body_truncates_the_client_response(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/broken") as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    await wait_for(lambda: len(sidecar.exchanges) == 1, what="the exchange")
    exchange = sidecar.exchanges[0]
    assert (exchange.outcome, exchange.error_type) == (Outcome.UPSTREAM_ERROR, "upstream_response_incomplete")
    assert exchange.response_body_bytes == 10


async def test_expect_100_continue_is_answered_before_the_body_is_sent(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__max_request_body="1KiB")
    port = int(sidecar.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    assert upstream.requests[0]["body_length"] == 5
    assert "expect" not in {name.lower() for name, _ in upstream.requests[0]["headers"]}

    # Too large: refused at once, no 100, so the client never sends the body.
    status, _, body = await raw_request(
        sidecar, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    assert status == 413
    assert_error_body(body, 413, "request_body_too_large")


async def test_transfer_codings_other_than_chunked_get_501(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    status, _, body = await raw_request(
        sidecar, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert status == 501
    assert_error_body(body, 501, "unsupported_transfer_coding")
    assert upstream.requests == []


async def test_transfer_encoding_in_http_1_0_is_refused(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    status, headers, body = await raw_request(
        sidecar, b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert status == 400
    assert "keep-alive" not in headers.get("Connection", "").lower()  # HTTP/1.0 closes by default
    assert_error_body(body, 400, "bad_request")
    assert upstream.requests == []


async def test_upgrade_requests_are_answered_and_the_connection_closed(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    status, headers, _ = await raw_request(
        sidecar, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert status == 200
    assert headers.get("Connection") == "close"
    assert "upgrade" not in {name.lower() for name, _ in upstream.requests[0]["headers"]}
