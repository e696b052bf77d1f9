"""aiohttp's low-level HTTP server, with request-parsing failures answered properly.

The proxy needs no router: every request goes to one handler, so it runs on
`aiohttp.web.Server` directly. aiohttp answers every request it cannot parse
with a plain-text 400 and logs a traceback. Limits deserve their own status
codes (414 for a long request target, 431 for too many or too large headers)
and a client's malformed request is not a server fault worth a traceback. The
parser's limits are set from the proxy config, and each rejection is reported
to the proxy so it becomes an Exchange like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from sidecar.proxy.errors import error_response

logger = logging.getLogger(__name__)

RejectionCallback = Callable[[web.BaseRequest, int, str, str], None]
"""Called with (request, status, error type, message) for every request rejected while parsing."""


class ParserLimits:
    """The parser settings aiohttp enforces before the proxy sees a request."""

    def __init__(self, max_url_bytes: int, max_header_bytes: int, max_header_count: int) -> None:
        self.max_url_bytes = max_url_bytes
        # aiohttp reports both limits through LineTooLong with the limit as an
        # argument; keeping the two numbers distinct tells 414 from 431.
        self.max_field_bytes = max_header_bytes if max_header_bytes != max_url_bytes else max_header_bytes + 1
        self.max_header_count = max_header_count

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
        message = exc.message if isinstance(exc, HttpProcessingError) else "malformed HTTP request"
        return 400, "bad_request", f"malformed HTTP request: {message}"


class _ProxyRequestHandler(RequestHandler):
    def __init__(self, manager: ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._proxy_server = manager

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        code, error_type, text = self._proxy_server.limits.classify(exc)
        # The reason can quote the offending bytes; it goes to the (redacted) audit record, not the log.
        logger.debug("rejected unparsable request", extra={"status": code, "error_type": error_type})
        self._proxy_server.on_rejected(request, code, error_type, text)
        response = error_response(code, error_type, text)
        response.force_close()
        return response


class ProxyServer(web.Server):
    """A `web.Server` whose connections answer parse failures with 400/414/431 JSON."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Any],
        *,
        limits: ParserLimits,
        on_rejected: RejectionCallback,
        **kwargs: Any,
    ) -> None:
        # auto_decompress=False: a proxy relays Content-Encoding, never undoes it.
        super().__init__(handler, handler_cancellation=True, access_log=None, auto_decompress=False, **kwargs)
        self.limits = limits
        self.on_rejected = on_rejected

    def __call__(self) -> RequestHandler:
        # Read per connection, so a reload applies to connections made after it.
        return _ProxyRequestHandler(
            self,
            loop=self._loop,
            **self._kwargs,
            max_line_size=self.limits.max_url_bytes,
            max_field_size=self.limits.max_field_bytes,
            max_headers=self.limits.max_header_count,
        )
