"""The aiohttp internals the proxy reads, checked on real connections of the installed aiohttp.

A failure here means aiohttp changed something `sidecar/proxy/aiohttp_private.py` relies on:
update that module (and the aiohttp range in pyproject.toml), nothing else.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import requires
from typing import Any
from unittest import mock

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from aiohttp import http_parser, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from sidecar.proxy import aiohttp_private
from sidecar.proxy.server import ParserLimits, ProxyServer

SECRET = "sk-proj-Q7r8S9t0A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"


def secret_fragments(secret: str = SECRET, size: int = 8) -> list[str]:
    return [secret[start : start + size] for start in range(len(secret) - size + 1)]


def test_pyproject_allows_only_the_aiohttp_range_these_internals_were_checked_against() -> None:
    declared = [Requirement(line) for line in requires("inference-sidecar") or []]
    aiohttp_requirements = [requirement for requirement in declared if requirement.name == "aiohttp"]
    assert len(aiohttp_requirements) == 1, "inference-sidecar declares aiohttp once"
    assert aiohttp_requirements[0].specifier == SpecifierSet(aiohttp_private.CHECKED_RANGE)


def test_the_installed_aiohttp_has_every_internal_the_proxy_reads() -> None:
    assert aiohttp_private.missing_internals() == [], f"aiohttp {aiohttp.__version__} changed its internals"


def test_a_missing_internal_is_named_and_stops_the_proxy_from_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = next(cls for cls in RequestHandler.__mro__ if "_upgraded" in vars(cls))
    monkeypatch.delattr(owner, "_upgraded")
    assert aiohttp_private.missing_internals() == ["aiohttp.web_protocol.RequestHandler._upgraded"]
    with pytest.raises(RuntimeError, match=r"RequestHandler\._upgraded.*install aiohttp>=3\.14\.4,<3\.15"):
        ProxyServer(lambda request: None, limits=ParserLimits(8190, 8190, 100, 10.0), on_rejected=lambda *a: None)


class _ObservedHandler(RequestHandler):
    """Records what the accessors say right after the parser produced a head, as the proxy reads them."""

    def __init__(self, *args: Any, observed: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observed = observed

    def data_received(self, data: bytes) -> None:
        before = aiohttp_private.requests_parsed(self)
        super().data_received(data)
        if aiohttp_private.requests_parsed(self) != before:
            self.observed.append({
                "parsed": aiohttp_private.requests_parsed(self),
                "body": aiohttp_private.newest_request_body(self),
                "takes_new": aiohttp_private.takes_new_requests(self),
                "closing": aiohttp_private.is_closing(self),
            })  # fmt: skip


async def test_connection_facts_on_a_real_connection() -> None:
    observed: list[dict[str, Any]] = []
    in_handler: list[dict[str, Any]] = []

    async def handler(request: web.BaseRequest) -> web.Response:
        protocol = request.protocol
        assert isinstance(protocol, RequestHandler)
        in_handler.append({
            "body": request.content,
            "handling": aiohttp_private.is_handling_request(protocol),
            "loop": aiohttp_private.event_loop(protocol) is asyncio.get_running_loop(),
        })  # fmt: skip
        return web.Response(text="ok")

    class ObservedServer(web.Server):
        def __call__(self) -> RequestHandler:
            kwargs = aiohttp_private.server_handler_kwargs(self)
            return _ObservedHandler(self, loop=aiohttp_private.event_loop(self), observed=observed, **kwargs)

    server = ObservedServer(handler, tcp_keepalive=False)
    assert aiohttp_private.server_handler_kwargs(server) == {"tcp_keepalive": False}
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as client:
            for body in (b"one", b"two"):
                async with client.post(f"http://127.0.0.1:{port}/", data=body) as response:
                    assert await response.text() == "ok"
    finally:
        await runner.cleanup()
    assert [facts["parsed"] for facts in observed] == [1, 2]
    assert all(facts["takes_new"] and not facts["closing"] for facts in observed)
    assert [facts["body"] for facts in observed] == [facts["body"] for facts in in_handler]
    assert all(facts["handling"] and facts["loop"] for facts in in_handler)


async def test_restart_read_timeout_bounds_the_silence_after_response_headers() -> None:
    done = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await done.wait()  # silent until the client has timed out
        return response

    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        timeout = aiohttp.ClientTimeout(sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            async with client.get(f"http://127.0.0.1:{port}/") as response:
                assert response.connection is not None and response.connection.protocol is not None
                aiohttp_private.restart_read_timeout(response.connection.protocol, 0.2)
                assert await response.content.readany() == b"first"
                with pytest.raises(aiohttp.ServerTimeoutError):
                    await asyncio.wait_for(response.content.readany(), 20)
    finally:
        done.set()
        await runner.cleanup()


PARSERS = [pytest.param(http_parser.HttpRequestParserPy, id="python")]
if http_parser.HttpRequestParserC is not http_parser.HttpRequestParserPy:
    PARSERS.insert(0, pytest.param(http_parser.HttpRequestParserC, id="c"))

# (request, what the description must say). The secret sits before, inside and after the bad byte.
HOSTILE_HEADS = [
    (b"Authorization: Bearer \x7f" + SECRET.encode(), "header"),
    (b"Authorization: Bearer " + SECRET[:15].encode() + b"\x7f" + SECRET[15:].encode(), "header"),
    (b"Authorization: Bearer " + SECRET.encode() + b"\x00", "header"),
    (b"Authorization: Bearer\r\n " + SECRET.encode(), "header"),
    (b"X-" + SECRET.encode() + b"\x01: 1", "header"),
    (b"Cookie: theme=dark; session=" + SECRET.encode() + b"\x0b", "header"),
]


def _parse_error(parser_class: type, raw: bytes) -> HttpProcessingError:
    async def feed() -> HttpProcessingError:
        parser = parser_class(mock.Mock(), asyncio.get_running_loop(), 2**16, max_line_size=8190, max_field_size=8190)
        try:
            parser.feed_data(raw)
        except HttpProcessingError as exc:
            return exc
        raise AssertionError(f"the parser accepted {raw!r}")

    return asyncio.run(feed())


@pytest.mark.parametrize("parser_class", PARSERS)
@pytest.mark.parametrize(("header", "about"), HOSTILE_HEADS)
def test_a_parse_error_is_described_without_the_bytes_it_quotes(parser_class: type, header: bytes, about: str) -> None:
    exc = _parse_error(parser_class, b"GET / HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n\r\n")
    assert any(fragment in str(exc) for fragment in secret_fragments()), "the parser no longer quotes its input"
    described = aiohttp_private.describe_parse_error(exc)
    assert not [fragment for fragment in secret_fragments() if fragment in described], described
    assert about in described or described in ("malformed request", "invalid header")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \x7f" + SECRET.encode() + b"\r\n\r\n",
         "invalid header value char at byte 22 of its line"),
        (b"GET /" + SECRET.encode() + b"\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
         f"invalid char in url path at byte {5 + len(SECRET)} of its line"),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\nHost: a\r\n\r\n",
         "duplicate content-length"),
        (b"GET / HTTP/1.1\r\n\r\n", "missing 'host' header in request"),
    ],
)  # fmt: skip
def test_the_c_parser_reason_and_position_survive(raw: bytes, expected: str) -> None:
    if http_parser.HttpRequestParserC is http_parser.HttpRequestParserPy:
        pytest.skip("aiohttp's C parser is not built for this platform")
    described = aiohttp_private.describe_parse_error(_parse_error(http_parser.HttpRequestParserC, raw))
    assert described.startswith(expected), described


def test_client_errors_are_described_by_class_and_parser_reason_only() -> None:
    parse = _parse_error(http_parser.HttpRequestParserPy, b"GET / HTTP/1.1\r\nHost: a\r\nX-" + SECRET.encode() + b"\x01: 1\r\n\r\n")
    wrapped = aiohttp.ClientPayloadError(f"Response payload is not completed: {parse!r}", parse)
    described = aiohttp_private.describe_client_error(wrapped)
    assert described == "ClientPayloadError: invalid header"
    try:
        raise aiohttp.ClientResponseError(mock.Mock(), (), status=400, message=str(parse)) from parse
    except aiohttp.ClientResponseError as exc:
        assert aiohttp_private.describe_client_error(exc) == "ClientResponseError: invalid header"
    refused = ConnectionRefusedError(111, "Connection refused")
    assert aiohttp_private.describe_client_error(refused) == "ConnectionRefusedError: Connection refused"
    assert aiohttp_private.describe_client_error(aiohttp.ServerDisconnectedError(SECRET)) == "ServerDisconnectedError"
