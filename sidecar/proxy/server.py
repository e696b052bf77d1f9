"""aiohttp's low-level HTTP server, with request-parsing failures answered properly.

The proxy needs no router: every request goes to one handler, so it runs on
`aiohttp.web.Server` directly. aiohttp answers every request it cannot parse
with a plain-text 400 and logs a traceback. Limits deserve their own status
codes (414 for a long request target, 431 for too many or too large headers)
and a client's malformed request is not a server fault worth a traceback. The
parser's limits are set from the proxy config, and each rejection is reported
to the proxy so it becomes an Exchange like any other.

The connection also bounds how long a request head (request line and
headers) may take to arrive, which is what ends slowloris attacks: aiohttp
itself waits as long as its keep-alive timeout for a head sent a byte at a
time. See `_ProxyRequestHandler`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler

from sidecar.proxy import aiohttp_private
from sidecar.proxy.errors import error_body, error_response

logger = logging.getLogger(__name__)

RejectionCallback = Callable[[web.BaseRequest, int, str, str], None]
"""Called with (request, status, error type, message) for every request rejected while parsing."""


class ParserLimits:
    """The parser settings aiohttp enforces before the proxy sees a request."""

    def __init__(
        self, max_url_bytes: int, max_header_bytes: int, max_header_count: int, header_timeout: float
    ) -> None:
        self.max_url_bytes = max_url_bytes
        # aiohttp reports both limits through LineTooLong with the limit as an
        # argument; keeping the two numbers distinct tells 414 from 431.
        self.max_field_bytes = max_header_bytes if max_header_bytes != max_url_bytes else max_header_bytes + 1
        self.max_header_count = max_header_count
        self.header_timeout = header_timeout
        # Written straight to the transport: a head that never completed has no
        # request for aiohttp to answer. Built once per (re)load, not per connection.
        body = error_body(
            408,
            "request_header_timeout",
            f"the request line and headers did not arrive within {header_timeout:g}s",
            None,
        )
        self.header_timeout_response = (
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )

    def classify(self, exc: BaseException | None) -> tuple[int, str, str]:
        """(status, error type, message) for a request the parser rejected."""
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == self.max_url_bytes:
                return 414, "request_uri_too_long", f"request target exceeds {self.max_url_bytes} bytes"
            return (
                431,
                "request_header_fields_too_large",
                f"a request header line exceeds {self.max_field_bytes} bytes",
            )
        if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message):
            return (
                431,
                "request_header_fields_too_large",
                f"more than {self.max_header_count} request headers",
            )
        if not isinstance(exc, HttpProcessingError):
            return 400, "bad_request", "malformed HTTP request"
        # Never the parser's own text: it quotes the request's bytes, credentials included.
        return 400, "bad_request", f"malformed HTTP request: {aiohttp_private.describe_parse_error(exc)}"


class _ProxyRequestHandler(RequestHandler):
    """One client connection: parse failures become JSON errors; a head must arrive in time.

    The head deadline runs from `connection_made` for a connection's first
    request, and from the first byte of each later one: idle time between
    requests is left to aiohttp's keep-alive timeout. One timer per head,
    cancelled as soon as the parser produces a message. Bytes are taken as
    the start of a head when the previous request's body had already ended
    before they arrived; body bytes never arm it (a stalled body is the
    proxy handler's 408 `client_body_timeout`). The parser does not say
    whether a segment that completed a request also began the next one, so
    such a head is timed from the next segment; one that never comes leaves
    an idle connection, which the keep-alive timeout ends. A head pipelined
    behind a request still in progress never cuts that request short: its
    deadline is pushed back by a full period instead.

    When it passes, the connection is closed. Like HAProxy and Apache (not
    nginx, which closes silently and only logs 408), a client that sent part
    of a head gets a 408 JSON error first, so a slow but honest client learns
    why; a connection that sent nothing is closed without a word, since a
    browser's preconnect or a port probe never asked for a response.
    """

    __slots__ = ("_proxy_server", "_limits", "_head_deadline", "_head_started", "_latest_body")

    def __init__(self, manager: ProxyServer, *, limits: ParserLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._proxy_server = manager
        self._limits = limits
        self._head_deadline: asyncio.TimerHandle | None = None
        # Whether any byte of the awaited head has arrived (decides 408 or a silent close).
        self._head_started = False
        # The body of the newest parsed request: once it has ended, more bytes are a new head.
        self._latest_body: StreamReader = EMPTY_PAYLOAD

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Per chunk this costs an int compare and one is_eof() call: no allocation.
        heads = aiohttp_private.requests_parsed(self)
        between_requests = self._latest_body.is_eof()
        super().data_received(data)
        if aiohttp_private.requests_parsed(self) != heads:
            # A head was parsed (or refused): its deadline is met. Nothing has
            # popped the queue since the parser appended to it.
            self._latest_body = aiohttp_private.newest_request_body(self)
            self._cancel_head_deadline()
        elif between_requests and data and aiohttp_private.takes_new_requests(self):
            self._head_started = True
            if self._head_deadline is None:
                self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        loop = aiohttp_private.event_loop(self)
        self._head_deadline = loop.call_later(self._limits.header_timeout, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        self._head_started = False

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        transport = self.transport
        if transport is None or aiohttp_private.is_closing(self):
            return
        if aiohttp_private.is_handling_request(self):
            # A request is still being handled; the late head is pipelined behind it.
            self._arm_head_deadline()
            return
        self._proxy_server.header_timeouts += 1
        logger.debug("request head timed out", extra={"head_started": self._head_started})
        if self._head_started:
            transport.write(self._limits.header_timeout_response)
        self.force_close()  # transport.close() still sends what was written

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # This connection's limits: after a reload, the proxy's may no longer be the parser's.
        code, error_type, text = self._limits.classify(exc)
        # The reason can quote the offending bytes; it goes to the (redacted) audit record, not the log.
        logger.debug("rejected unparsable request", extra={"status": code, "error_type": error_type})
        self._proxy_server.on_rejected(request, code, error_type, text)
        response = error_response(code, error_type, text)
        response.force_close()
        return response


class ProxyServer(web.Server):
    """A `web.Server` whose connections answer parse failures with 400/414/431 JSON.

    `header_timeouts` counts connections closed because a request head did not
    arrive within `limits.header_timeout`; there is no request, so no
    Exchange, for them.
    """

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Any],
        *,
        limits: ParserLimits,
        on_rejected: RejectionCallback,
        **kwargs: Any,
    ) -> None:
        missing = aiohttp_private.missing_internals()
        if missing:
            raise RuntimeError(
                f"aiohttp {aiohttp.__version__} lacks what the proxy reads from it ({', '.join(missing)}); "
                f"install aiohttp{aiohttp_private.CHECKED_RANGE}"
            )
        # auto_decompress=False: a proxy relays Content-Encoding, never undoes it.
        super().__init__(handler, handler_cancellation=True, access_log=None, auto_decompress=False, **kwargs)
        self.limits = limits
        self.on_rejected = on_rejected
        self.header_timeouts = 0

    def __call__(self) -> RequestHandler:
        # Read per connection, so a reload applies to connections made after it.
        limits = self.limits
        return _ProxyRequestHandler(
            self,
            loop=aiohttp_private.event_loop(self),
            **aiohttp_private.server_handler_kwargs(self),
            limits=limits,
            max_line_size=limits.max_url_bytes,
            max_field_size=limits.max_field_bytes,
            max_headers=limits.max_header_count,
        )
