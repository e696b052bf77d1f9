"""Every use of aiohttp's private interfaces, in one module.

    requests_parsed(protocol)        # heads the connection's parser has produced
    describe_parse_error(exc)        # "invalid header value character at byte 23 of its line"

The proxy needs a few facts aiohttp keeps to itself: whether a connection is
between requests (to time a request head), and how to retime the upstream
read once response headers are in. They are read here and nowhere else.
`pyproject.toml` allows only the aiohttp minor release these were checked
against, and `tests/proxy/test_aiohttp_private.py` exercises each one on a
real connection: an upgrade that renames or reshapes one fails there, naming
the attribute, instead of as a timeout elsewhere. `missing_internals()` runs
the same checks when the proxy starts, so a user who installed another
aiohttp gets one clear error, not a broken connection.
"""

from __future__ import annotations

import ast
import asyncio
import re
from typing import Any

from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    TransferEncodingError,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

CHECKED_RANGE = ">=3.14.4,<3.15"
"""The aiohttp releases whose internals this module was checked against (as in pyproject.toml)."""

_REQUEST_HANDLER_ATTRIBUTES = ("_request_count", "_messages", "_upgraded", "_waiter", "_force_close", "_close", "_loop")
_SERVER_ATTRIBUTES = ("_kwargs", "_loop")

# llhttp's reasons are fixed strings compiled into the parser ("Invalid header value char"); the
# C parser puts one before the offending line, which follows after a blank line (behind "Bad
# status line:" for a request line). Only a reason made of these characters is kept.
_LLHTTP_REASON = re.compile(r"(?:Bad status line:\n  )?([A-Za-z][A-Za-z ,/'`-]{0,79}):\n\n")
# aiohttp's own fixed messages (the header name is one of the few that may appear only once).
_STATIC_MESSAGE = re.compile(
    r"Missing 'Host' header in request\.|Duplicate '[A-Za-z-]{1,40}' header found\."
    r"|Request has invalid `Transfer-Encoding`|Too many (?:headers|trailers) received"
    r"|Data after `Connection: close`|Bad line ending, expected CRLF"
)
# The caret line under the quoted input: its indent is the length of the repr of the bytes
# before the error, minus one (the repr's leading "b").
_CARET = re.compile(r"\n  ( *)\^\Z")

# Exceptions aiohttp's pure-Python parser raises with the client's bytes in their text.
_CLASS_REASONS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (BadHttpMethod, "invalid request method"),
    (BadStatusLine, "invalid request line"),
    (InvalidHeader, "invalid header"),
    (InvalidURLError, "invalid request target"),
    (TransferEncodingError, "invalid transfer encoding"),
    (ContentLengthError, "invalid content length"),
)


def requests_parsed(protocol: RequestHandler) -> int:
    """How many request heads the connection's parser has produced (refused ones included)."""
    count: int = protocol._request_count  # noqa: SLF001
    return count


def newest_request_body(protocol: RequestHandler) -> StreamReader:
    """The body stream of the request most recently parsed on the connection."""
    body: StreamReader = protocol._messages[-1][1]  # noqa: SLF001
    return body


def takes_new_requests(protocol: RequestHandler) -> bool:
    """False once the connection is upgraded or closing: its bytes are no longer request heads."""
    return not (protocol._upgraded or protocol._force_close or protocol._close)  # noqa: SLF001


def is_closing(protocol: RequestHandler) -> bool:
    """Whether the connection has been told to close after (or instead of) its current request."""
    return bool(protocol._force_close)  # noqa: SLF001


def is_handling_request(protocol: RequestHandler) -> bool:
    """Whether a request handler is running (the connection is not waiting for a head)."""
    waiter: asyncio.Future[None] | None = protocol._waiter  # noqa: SLF001
    return waiter is None or waiter.done()


def event_loop(owner: RequestHandler | web.Server) -> asyncio.AbstractEventLoop:
    """The loop a connection or server runs on."""
    loop: asyncio.AbstractEventLoop = owner._loop  # noqa: SLF001
    return loop


def server_handler_kwargs(server: web.Server) -> dict[str, Any]:
    """The keyword arguments `web.Server` passes to each connection's RequestHandler."""
    kwargs: dict[str, Any] = server._kwargs  # noqa: SLF001
    return kwargs


def restart_read_timeout(protocol: ResponseHandler, seconds: float) -> None:
    """Make `seconds` the allowed silence between upstream reads from now on.

    aiohttp's `sock_read` applies from the request's start until the response
    headers; after them the proxy wants the idle timeout instead.
    """
    protocol.read_timeout = seconds
    protocol.start_timeout()


def describe_parse_error(exc: HttpProcessingError) -> str:
    """What the parser refused, and where, without any of the bytes it quotes.

    aiohttp's messages quote the offending line, which may hold a credential;
    this keeps the parser's reason (a fixed string) and the byte offset in the
    line, e.g. "invalid header value char at byte 23 of its line".
    """
    message = exc.message if isinstance(exc.message, str) else ""
    reason_match = _LLHTTP_REASON.match(message)
    if reason_match is not None:
        reason = reason_match.group(1).lower()
        caret = _CARET.search(message)
        if caret is not None:
            quoted = message[reason_match.end() : caret.start()].strip()
            offset = _byte_offset(quoted, len(caret.group(1)))
            if offset is not None:
                return f"{reason} at byte {offset} of its line"
        return reason
    if _STATIC_MESSAGE.fullmatch(message):
        return message.rstrip(".").lower()
    for cls, reason in _CLASS_REASONS:
        if isinstance(exc, cls):
            return reason
    return "malformed request"


def describe_client_error(exc: BaseException) -> str:
    """An aiohttp client failure as "ClassName" or "ClassName: <parser reason>", without its text.

    A response the upstream framed badly is refused with the parser's message,
    which quotes the response's bytes (an echoed credential among them).
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, HttpProcessingError):
            return f"{exc.__class__.__name__}: {describe_parse_error(current)}"
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.__class__.__name__}: {exc.strerror}"
    return exc.__class__.__name__


def _byte_offset(quoted: str, caret_indent: int) -> int | None:
    """The byte offset the caret points at, from the repr of the line (b'...') and its indent."""
    try:
        line = _literal_bytes(quoted)
    except ValueError:
        return None
    # repr(before)[1:] is as long as the caret's indent (the leading "b" is outside it).
    for offset in range(len(line) + 1):
        width = len(repr(line[:offset])) - 1
        if width == caret_indent:
            return offset
        if width > caret_indent:
            return None
    return None


def _literal_bytes(quoted: str) -> bytes:
    if not (quoted.startswith(("b'", 'b"')) and len(quoted) >= 3):
        raise ValueError("not a bytes literal")
    value = ast.literal_eval(quoted)
    if not isinstance(value, bytes):
        raise ValueError("not a bytes literal")
    return value


def missing_internals() -> list[str]:
    """The private attributes the proxy reads that this aiohttp lacks (empty when all are there)."""
    missing: list[str] = []
    for name in _REQUEST_HANDLER_ATTRIBUTES:
        # Slots: a class attribute (a member descriptor) for each, on RequestHandler or a base.
        if not hasattr(RequestHandler, name):
            missing.append(f"aiohttp.web_protocol.RequestHandler.{name}")
    server_source = web.Server.__init__.__code__.co_names
    for name in _SERVER_ATTRIBUTES:
        if name not in server_source:
            missing.append(f"aiohttp.web_server.Server.{name}")
    for name in ("read_timeout", "start_timeout"):
        if not hasattr(ResponseHandler, name):
            missing.append(f"aiohttp.client_proto.ResponseHandler.{name}")
    return missing

