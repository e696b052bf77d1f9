"""What passes through the proxy unchanged, and what it must not pass."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from sidecar.exchange import Outcome
from tests.conftest import SidecarFactory
from tests.support.upstream import TestUpstream, deterministic_bytes


def _header_values(record: dict, name: str) -> list[str]:
    return [value for key, value in record["headers"] if key.lower() == name.lower()]


async def test_end_to_end_request_headers_pass_and_hop_by_hop_do_not(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    headers = [
        ("Connection", "keep-alive, X-Hop-Named"),
        ("X-Hop-Named", "drop me"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("Upgrade", "websocket"),
        ("Authorization", "Bearer end-to-end"),
        ("X-Custom", "one"),
        ("X-Custom", "two"),
        ("Accept", "text/event-stream"),
    ]
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as client:
        async with client.post(f"{sidecar.url}/echo", data=b"{}", headers=CIMultiDict(headers)) as response:
            record = await response.json()
    names = {key.lower() for key, _ in record["headers"]}
    for hop in ("connection", "x-hop-named", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in names, f"{hop} was forwarded"
    assert _header_values(record, "X-Custom") == ["one", "two"]
    assert _header_values(record, "Authorization") == ["Bearer end-to-end"]
    assert _header_values(record, "Accept") == ["text/event-stream"]
    # Nothing invented: aiohttp's default User-Agent must not appear.
    assert _header_values(record, "User-Agent") == []


async def test_hop_by_hop_response_headers_are_stripped(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/hop-headers") as response:
            assert await response.text() == "hop"
            headers = response.headers
    for hop in ("X-Hop-Named", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert hop not in headers, f"{hop} reached the client"
    assert headers["X-End-To-End"] == "kept"
    assert headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


async def test_forwarded_headers_replace_client_supplied_ones_by_default(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"{sidecar.url}/echo", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil"}
        ) as response:
            record = await response.json()
    assert _header_values(record, "X-Forwarded-For") == ["127.0.0.1"]
    assert _header_values(record, "X-Forwarded-Proto") == ["http"]
    assert _header_values(record, "X-Forwarded-Host") == [sidecar.url.removeprefix("http://")]
    assert _header_values(record, "Host") == [f"127.0.0.1:{upstream.port}"]


async def test_forwarded_headers_append_when_trusted(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__forwarded__trust_incoming=True, upstream__host_header="client")
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"{sidecar.url}/echo",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "Host": "api.example"},
        ) as response:
            record = await response.json()
    assert _header_values(record, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert _header_values(record, "X-Forwarded-Proto") == ["https"]
    assert _header_values(record, "Host") == ["api.example"]


async def test_request_id_is_kept_generated_and_echoed(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/echo", headers={"X-Request-Id": "req-42"}) as response:
            assert response.headers["X-Request-Id"] == "req-42"
            assert _header_values(await response.json(), "X-Request-Id") == ["req-42"]
        async with client.get(f"{sidecar.url}/echo", headers={"X-Request-Id": "bad id\twith spaces"}) as response:
            generated = response.headers["X-Request-Id"]
    assert len(generated) == 32 and generated != "bad id\twith spaces"
    assert [e.request_id for e in sidecar.exchanges] == ["req-42", generated]


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_537, 3 * 1024 * 1024])
async def test_binary_bodies_pass_byte_identical_both_ways(upstream: TestUpstream, make_sidecar: SidecarFactory, size: int):
    sidecar = await make_sidecar(upstream.url)
    payload = deterministic_bytes(size, seed=size)
    async with aiohttp.ClientSession() as client:
        async with client.put(f"{sidecar.url}/echo", data=payload) as response:
            record = await response.json()
        async with client.get(f"{sidecar.url}/bytes?n={size}") as response:
            returned = await response.read()
            assert response.headers["Content-Length"] == str(size)
    assert record["body_length"] == size
    assert record["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert returned == deterministic_bytes(size)
    assert sidecar.exchanges[0].request_body_bytes == size
    assert sidecar.exchanges[1].response_body_bytes == size


async def test_chunked_upload_streams_through(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    parts = [deterministic_bytes(100_000, seed=i) for i in range(5)]

    async def body():
        for part in parts:
            yield part

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{sidecar.url}/echo", data=body()) as response:
            record = await response.json()
    assert record["chunked"] is True
    assert record["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_query_string_and_path_are_forwarded_exactly(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    target = "/echo/a%2Fb/%E4%BD%A0?q=%20x&q=y&empty=&flag&enc=%2B%26"
    async with aiohttp.ClientSession() as client:
        async with client.get(URL(f"{sidecar.url}{target}", encoded=True)) as response:
            record = await response.json()
    assert record["raw_path"] == target
    exchange = sidecar.exchanges[0]
    assert exchange.query == "q=%20x&q=y&empty=&flag&enc=%2B%26"


@pytest.mark.parametrize("code", [200, 201, 202, 204, 301, 304, 400, 404, 418, 500, 503])
async def test_status_codes_pass_through(upstream: TestUpstream, make_sidecar: SidecarFactory, code: int):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/status/{code}", allow_redirects=False) as response:
            body = await response.read()
            assert response.status == code
            assert response.headers["X-Status"] == str(code)
            if code in (204, 304):
                assert body == b""
                assert "Transfer-Encoding" not in response.headers
            else:
                assert body == f"status {code}\n".encode()
            if code == 304:
                assert response.headers["ETag"] == '"v1"'
    exchange = sidecar.exchanges[0]
    assert (exchange.status, exchange.upstream_status, exchange.outcome) == (code, code, Outcome.COMPLETED)


async def test_head_keeps_content_length_without_a_body(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.head(f"{sidecar.url}/bytes?n=5000") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == "5000"
            assert await response.read() == b""
        # The connection is still usable afterwards (no stray body bytes on it).
        async with client.get(f"{sidecar.url}/bytes?n=10") as response:
            assert await response.read() == deterministic_bytes(10)


async def test_upstream_cookies_are_not_shared_between_clients(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as first:
        async with first.get(f"{sidecar.url}/hop-headers") as response:
            assert response.headers.getall("Set-Cookie")
    async with aiohttp.ClientSession() as second:
        async with second.get(f"{sidecar.url}/echo") as response:
            record = await response.json()
    assert _header_values(record, "Cookie") == []


async def test_compressed_bodies_stay_compressed(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.get(f"{sidecar.url}/echo", headers={"Accept-Encoding": "identity"}) as response:
            assert "Content-Encoding" not in response.headers
        async with client.post(
            f"{sidecar.url}/echo", data=b"\x1f\x8b\x08\x00", headers={"Content-Encoding": "gzip"}
        ) as response:
            record = await response.json()
    assert _header_values(record, "Content-Encoding") == ["gzip"]
    assert record["body_length"] == 4


async def test_unix_socket_upstream(tmp_path, make_sidecar: SidecarFactory):
    socket_path = str(tmp_path / "model.sock")
    server = TestUpstream()
    await server.start(unix_path=socket_path)
    try:
        sidecar = await make_sidecar(f"unix:{socket_path}")
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{sidecar.url}/echo?x=1", data=b"via unix") as response:
                record = await response.json()
        assert record["raw_path"] == "/echo?x=1"
        assert record["body_length"] == 8
        assert _header_values(record, "Host") == ["localhost"]
    finally:
        await server.stop()


async def test_exchange_describes_the_request(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.post(
            f"{sidecar.url}/echo?k=v", data=b'{"a":1}', headers={"User-Agent": "ua/1", "Content-Type": "application/json"}
        ) as response:
            await response.read()
    (exchange,) = sidecar.exchanges
    assert exchange.method == "POST"
    assert exchange.path == "/echo"
    assert exchange.query == "k=v"
    assert exchange.user_agent == "ua/1"
    assert exchange.request_content_type == "application/json"
    assert exchange.response_content_type.startswith("application/json")
    assert exchange.client_address == "127.0.0.1"
    assert exchange.http_version == "1.1"
    assert exchange.upstream == upstream.url
    assert exchange.principal.is_anonymous
    assert 0 < exchange.upstream_response_start_s <= exchange.first_byte_s <= exchange.duration_s


async def test_other_address_claims_are_dropped_unless_trusted(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.url}/echo", headers={"Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6"}) as response:
            record = await response.json()
    assert _header_values(record, "Forwarded") == [] and _header_values(record, "X-Real-IP") == []


async def test_trusted_forwarded_for_lines_are_joined(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, proxy__forwarded__trust_incoming=True)
    async with aiohttp.ClientSession() as client:
        headers = CIMultiDict([("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")])
        async with client.get(f"{sidecar.url}/echo", headers=headers) as response:
            record = await response.json()
    assert _header_values(record, "X-Forwarded-For") == ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
