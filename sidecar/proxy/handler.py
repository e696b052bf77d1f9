"""The request path: a client request in, an upstream request out, one Exchange.

Per request the proxy checks limits, rewrites headers, streams the body to
the upstream, and relays the response chunk by chunk as the upstream writes
it: no response body is ever buffered whole, so SSE, NDJSON and chunked
answers reach the client as they are produced. When the request is over, in
every case, one immutable Exchange goes to the observers.

Failure mapping (status, Exchange outcome, error type):
- request body over the limit: 413, rejected, request_body_too_large
- header section over the limit: 431, rejected, request_header_fields_too_large
- upstream refuses or cannot be reached: 502, upstream_unavailable, upstream_connect_error
- upstream connect or response start past its timeout: 504, upstream_timeout
- upstream silent mid-response past idle_timeout: the client connection is
  closed without the terminating chunk (a truncated body, which clients detect),
  upstream_timeout, upstream_idle_timeout
- client gone: upstream request cancelled and its connection closed (the model
  server stops generating), client_closed, status 499 if no response had started
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from sidecar.config import Config
from sidecar.exchange import ANONYMOUS, Exchange, GenAiCall, GpuUsage, Outcome, Principal, well_formed
from sidecar.proxy import aiohttp_private
from sidecar.proxy.access import NOT_LIMITED, AccessControl, Admission, Refusal
from sidecar.proxy.content import BodyRecorder, ContentMode
from sidecar.proxy.errors import error_response
from sidecar.proxy.headers import client_response_headers, upstream_request_headers
from sidecar.proxy.llm.request import RequestFacts, read_request
from sidecar.proxy.llm.routes import match_route
from sidecar.proxy.llm.tap import ResponseTap
from sidecar.telemetry.tracing import TRACE_HEADERS, ServerSpan, Tracing

# Request bodies with a declared length up to this size are read whole before
# the upstream request starts: one write instead of a chunked stream, and the
# common case (a JSON chat request) needs no generator.
_READ_WHOLE_BELOW = 64 * 1024
# A request body parsed before forwarding (an access check needs its model) is parsed on a
# worker thread above this size: json.loads of a 10 MB vision request takes tens of ms.
_PARSE_INLINE_BELOW = 256 * 1024

logger = logging.getLogger(__name__)

_SSE_KEEPALIVE = b": keep-alive\n\n"
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
_HTTP_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0", (0, 9): "0.9"}
_PROXIED_VERSIONS = frozenset({(1, 1), (1, 0)})


UsageOf = Callable[[float, float, GenAiCall | None, bool], GpuUsage | None]
"""(when the request reached the model server, seconds it spent there, model call, whether the model
server processed it) -> the request's GPU usage, or None when unknown."""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the request path reads from the config, precomputed once per (re)load."""

    upstream_label: str
    upstream_prefix: str
    upstream_authority: str
    pass_client_host: bool
    client_timeout: aiohttp.ClientTimeout
    response_start_timeout: float
    idle_timeout: float
    client_stall_timeout: float
    max_request_body: int
    max_header_bytes: int
    request_id_header: str
    forwarded: bool
    trust_incoming_forwarded: bool
    llm_enabled: bool
    llm_request_peek: int
    llm_max_body: int
    llm_max_line: int
    sse_keepalive: float
    audit_content: ContentMode
    audit_content_max: int

    @classmethod
    def from_config(cls, config: Config) -> ProxySettings:
        upstream = config.upstream
        return cls(
            upstream_label=str(upstream.url),
            upstream_prefix=upstream.url.origin + upstream.url.base_path,
            upstream_authority=upstream.url.authority,
            pass_client_host=upstream.host_header == "client",
            client_timeout=aiohttp.ClientTimeout(
                total=None,
                connect=upstream.connect_timeout,
                sock_connect=upstream.connect_timeout,
                # Until response headers arrive; _relay switches the connection
                # to idle_timeout once they have.
                sock_read=upstream.response_start_timeout,
            ),
            response_start_timeout=upstream.response_start_timeout,
            idle_timeout=upstream.idle_timeout,
            client_stall_timeout=config.proxy.client_timeout,
            max_request_body=int(config.proxy.max_request_body),
            max_header_bytes=int(config.proxy.max_header_bytes),
            request_id_header=config.proxy.request_id_header,
            forwarded=config.proxy.forwarded.enabled,
            trust_incoming_forwarded=config.proxy.forwarded.trust_incoming,
            llm_enabled=config.llm.enabled,
            llm_request_peek=int(config.llm.request_peek_bytes),
            llm_max_body=int(config.llm.max_parsed_body),
            llm_max_line=int(config.llm.max_event_bytes),
            sse_keepalive=config.proxy.sse_keepalive,
            audit_content=config.audit.content if config.audit.enabled else "none",
            audit_content_max=int(config.audit.content_max_bytes),
        )


class _BodyTooLarge(Exception):
    pass


class _ClientWriteFailed(Exception):
    """A write to the client failed while the relay was waiting on the upstream."""


def _peer_port(request: web.BaseRequest) -> int | None:
    """The client's port: peername is (host, port) or (host, port, flow, scope); a unix socket has none."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[1] if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int) else None


class _Flight:
    """Mutable facts about one request while it is in flight; frozen into an Exchange at the end."""

    __slots__ = (
        "start",
        "request_id",
        "request_body_bytes",
        "status",
        "response_content_type",
        "response_body_bytes",
        "response_chunks",
        "outcome",
        "error_type",
        "error_message",
        "upstream_response_start",
        "first_byte",
        "upstream_status",
        "body_too_large",
        "client_body_failed",
        "route",
        "tap",
        "request_prefix",
        "request_complete",
        "overhead",
        "client_body_timed_out",
        "response_start_deadline",
        "close_connection",
        "start_ns",
        "span",
        "content",
        "published",
        "principal",
        "admission",
        "facts",
        "client_port",
        "forwarded",
        "processed",
    )

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.start_ns = time.time_ns()
        self.request_id: str | None = None
        self.request_body_bytes = 0
        self.status = 0
        self.response_content_type: str | None = None
        self.response_body_bytes = 0
        self.response_chunks = 0
        self.outcome: Outcome | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.upstream_response_start: float | None = None
        self.first_byte: float | None = None
        self.upstream_status: int | None = None
        self.body_too_large = False
        self.client_body_failed = False
        self.route: str | None = None
        self.tap: ResponseTap | None = None
        # The request body (or its first bytes), kept for model calls only and
        # parsed when the exchange is over, so parsing never delays a byte.
        self.request_prefix: bytes | bytearray = b""
        self.request_complete = True
        self.overhead = 0.0
        self.client_body_timed_out = False
        self.response_start_deadline: asyncio.Timeout | None = None
        self.close_connection = False
        self.span: ServerSpan | None = None
        self.content: BodyRecorder | None = None
        self.published = False
        self.principal: Principal = ANONYMOUS
        self.admission: Admission = NOT_LIMITED
        # Read before forwarding when an access check needed the model or the stream flag.
        self.facts: RequestFacts | None = None
        # When the request went to the model server (perf_counter), and whether it got there: a request
        # the sidecar refused, or one the model server never received, is charged no GPU time.
        self.forwarded: float | None = None
        self.processed = True
        self.client_port: int | None = None

    @property
    def response_started(self) -> bool:
        """Whether response headers went out (after which the status cannot change)."""
        return self.first_byte is not None

    def fail(self, outcome: Outcome, error_type: str, message: str, status: int | None = None) -> None:
        if self.outcome is None:
            self.outcome, self.error_type, self.error_message = outcome, error_type, message
            if status is not None:
                self.status = status

    def closed_by_client(self) -> None:
        """The client went away; 499 (nginx's code) in the record unless a status was already sent."""
        self.fail(Outcome.CLIENT_CLOSED, "client_closed", "client closed the connection",
                  None if self.response_started else 499)  # fmt: skip

    def exchange(self, request: web.BaseRequest, settings: ProxySettings, usage: UsageOf | None = None) -> Exchange:
        end = time.perf_counter()
        start = self.start
        headers = request.headers
        trace_id, span_id, sampled = self.span.ids() if self.span is not None else (None, None, False)
        gen_ai = None
        if self.tap is not None:
            try:
                facts = self.facts
                if facts is None:
                    facts = (
                        read_request(bytes(self.request_prefix), self.request_complete)
                        if self.request_prefix
                        else RequestFacts(None, None, None)
                    )
                gen_ai = self.tap.finish(end, facts)
            except Exception:
                # A reader bug must cost the model-call details, never the record itself.
                logger.exception("reading a model call failed", extra={"route": self.route})
        duration = end - start
        gpu_usage = None
        forwarded = self.forwarded
        if usage is not None and forwarded is not None:
            try:
                gpu_usage = usage(self.start_ns / 1e9 + (forwarded - start), end - forwarded, gen_ai, self.processed)
            except Exception:
                logger.exception("attributing GPU usage failed")
        return Exchange(
            request_id=self.request_id or "",
            started_at=self.start_ns / 1e9,
            method=request.method,
            path=well_formed(request.path),
            query=request.rel_url.raw_query_string,
            scheme=request.scheme,
            host=well_formed(request.host),
            http_version=_HTTP_VERSIONS.get(tuple(request.version), "1.1"),
            client_address=request.remote,
            client_port=self.client_port,
            user_agent=well_formed(headers.get("User-Agent")),
            request_content_type=well_formed(headers.get("Content-Type")),
            request_body_bytes=self.request_body_bytes,
            status=self.status,
            response_content_type=well_formed(self.response_content_type),
            response_body_bytes=self.response_body_bytes,
            response_chunks=self.response_chunks,
            outcome=self.outcome or Outcome.COMPLETED,
            error_type=self.error_type,
            error_message=self.error_message,
            duration_s=duration,
            upstream_response_start_s=(
                None if self.upstream_response_start is None else self.upstream_response_start - start
            ),
            first_byte_s=None if self.first_byte is None else self.first_byte - start,
            # Refused before any upstream call: all of it was the sidecar's own time.
            proxy_overhead_s=self.overhead or end - start,
            upstream=settings.upstream_label,
            upstream_status=self.upstream_status,
            principal=self.principal,
            route=self.route,
            gen_ai=gen_ai,
            trace_id=trace_id,
            span_id=span_id,
            trace_sampled=sampled,
            content=self.content.result() if self.content is not None else None,
            usage=gpu_usage,
        )


class ProxyHandler:
    """Forwards every request to the upstream and publishes one Exchange per request."""

    def __init__(
        self,
        settings: ProxySettings,
        session: aiohttp.ClientSession,
        publish: Callable[[Exchange], None],
        tracing: Tracing | None = None,
        *,
        admission: Callable[[], str | None] | None = None,
        settle: Callable[[Exchange], Awaitable[None]] | None = None,
        access: AccessControl | None = None,
        usage: UsageOf | None = None,
    ) -> None:
        """`admission` names a reason to refuse new requests (503), or None to let them in;
        `settle` is awaited with each Exchange before the response's last bytes leave;
        `access` authenticates callers and holds them to their rate limits; `usage` gives a
        request's GPU usage as its Exchange is built."""
        self.settings = settings
        self.access = access
        self._usage = usage
        self._session = session
        self._publish = publish
        self._tracing = tracing
        self._admission = admission
        self._settle = settle
        self._active = 0
        # In flight by (method, scheme) as received; a key leaves at zero, so methods a client
        # makes up cannot pile up.
        self._active_by: dict[tuple[str, str], int] = {}
        # Requests at the model server, and over wall time their integral and the time with at least
        # one there, kept exactly at each start and end: GPU attribution shares energy by them.
        self._upstream_active = 0
        self._request_seconds = 0.0
        self._occupied_seconds = 0.0
        self._upstream_since = time.time()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._aborting = False
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def active_requests(self) -> int:
        return self._active

    def active_requests_by(self) -> dict[tuple[str, str], int]:
        """Requests in flight by (method, scheme) as received; only those with one in flight."""
        return dict(self._active_by)

    def request_seconds(self) -> float:
        """Seconds of requests at the model server, summed over requests, since the handler was built."""
        return self._request_seconds + self._upstream_active * (time.time() - self._upstream_since)

    def occupied_seconds(self) -> float:
        """Seconds during which at least one request was at the model server, since the handler was built.
        Safe to call from other threads (a simulated GPU's): the reading may lag by one change."""
        active, since, total = self._upstream_active, self._upstream_since, self._occupied_seconds
        return total + (time.time() - since if active else 0.0)

    def _count_upstream(self, change: int) -> None:
        now = time.time()
        elapsed = now - self._upstream_since
        self._request_seconds += self._upstream_active * elapsed
        if self._upstream_active:
            self._occupied_seconds += elapsed
        self._upstream_since = now
        self._upstream_active += change

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """Answer every response from now on with `Connection: close`."""
        self._draining = True

    async def abort_in_flight(self, grace: float) -> None:
        """Cancel every request still in flight (drain timeout); wait up to `grace` for them to unwind."""
        self._aborting = True
        for task in list(self._tasks):
            task.cancel()
        await self.wait_idle(grace)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def reject_unparsable(self, request: web.BaseRequest, status: int, error_type: str, message: str) -> None:
        """Record a request that aiohttp's parser refused before it reached `__call__`."""
        flight = _Flight()
        flight.client_port = _peer_port(request)
        flight.fail(Outcome.REJECTED, error_type, message, status)
        flight.response_content_type = "application/json"
        exchange = flight.exchange(request, self.settings, self._usage)
        # `request` is aiohttp's stand-in (UNKNOWN / HTTP/1.0, no headers): nothing of the client's
        # request line or Host is known, so none of it goes on record.
        self._publish(dataclasses.replace(exchange, method="", path="", query="", host="", http_version=""))

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        settings = self.settings
        flight = _Flight()
        flight.client_port = _peer_port(request)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._active += 1
        active_by, key = self._active_by, (request.method, request.scheme)
        active_by[key] = active_by.get(key, 0) + 1
        self._idle.clear()
        try:
            response = await self._forward(request, settings, flight)
            if self._settle is not None and not flight.published:
                # A response returned here is written by aiohttp after we return:
                # its record is settled first.
                await self._finish(request, settings, flight, settle=True)
            return response
        except asyncio.CancelledError:
            transport = request.transport
            if not self._aborting and (transport is None or transport.is_closing()):
                flight.closed_by_client()
            else:
                flight.fail(Outcome.ABORTED, "drain_timeout", "cut short by sidecar shutdown")
                if not flight.response_started:
                    flight.status = 503
            raise
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._active -= 1
            if active_by[key] > 1:
                active_by[key] -= 1
            else:
                del active_by[key]
            if flight.forwarded is not None:
                self._count_upstream(-1)
            if not self._active:
                self._idle.set()
            if not flight.published:
                await self._finish(request, settings, flight, settle=False)

    async def _finish(
        self, request: web.BaseRequest, settings: ProxySettings, flight: _Flight, *, settle: bool
    ) -> None:
        """Freeze the flight into its Exchange, end the span, publish; with `settle`, wait for the record."""
        flight.published = True
        if flight.span is None and self._tracing is not None:
            # Refused before its span would start (401, 413, 431, ...): the caller's trace still goes on record.
            flight.span = self._tracing.caller_context(request.headers, flight.start_ns)
        exchange = flight.exchange(request, settings, self._usage)
        if flight.admission is not NOT_LIMITED and self.access is not None:
            try:
                self.access.settle(flight.admission, exchange)
            except Exception:
                logger.exception("settling a request's rate limits failed")
        if flight.span is not None and self._tracing is not None:
            try:
                self._tracing.finish(flight.span, exchange)
            except Exception:
                logger.exception("ending the request's span failed")
        self._publish(exchange)
        if settle and self._settle is not None:
            await self._settle(exchange)

    def _reject(
        self, flight: _Flight, settings: ProxySettings, status: int, error_type: str, message: str
    ) -> web.Response:
        flight.fail(Outcome.REJECTED, error_type, message, status)
        response = self._error(flight, settings, status, error_type, message)
        # What follows on this connection cannot be trusted to be a request:
        # a refused body may still be arriving, a malformed head may be a
        # smuggling attempt. Close it, as nginx does.
        response.force_close()
        return response

    def _error(
        self, flight: _Flight, settings: ProxySettings, status: int, error_type: str, message: str
    ) -> web.Response:
        flight.response_content_type = "application/json"
        response = error_response(
            status,
            error_type,
            message,
            request_id=flight.request_id,
            request_id_header=settings.request_id_header or None,
        )
        if self._draining or flight.close_connection:
            response.force_close()
        flight.response_body_bytes = len(response.body)  # type: ignore[arg-type]
        flight.first_byte = time.perf_counter()
        return response

    async def _forward(
        self, request: web.BaseRequest, settings: ProxySettings, flight: _Flight
    ) -> web.StreamResponse:
        headers = request.headers
        if settings.request_id_header:
            incoming = headers.get(settings.request_id_header)
            flight.request_id = (
                incoming if incoming is not None and _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
            )
        if self._admission is not None:
            refusal = self._admission()
            if refusal is not None:
                flight.fail(Outcome.REJECTED, "service_unavailable", refusal, 503)
                response = self._error(flight, settings, 503, "service_unavailable", refusal)
                response.headers["Retry-After"] = "1"
                if request.body_exists:
                    response.force_close()  # the unread body must not be taken for the next request
                return response
        if settings.audit_content != "none":
            flight.content = BodyRecorder(settings.audit_content, settings.audit_content_max)
        if request.version not in _PROXIED_VERSIONS:
            # Re-framed as HTTP/1.1 upstream, an HTTP/2.0 or 0.9 request line would be answered
            # in a framing its sender does not expect.
            return self._reject(
                flight, settings, 505, "http_version_not_supported",
                f"HTTP/{request.version[0]}.{request.version[1]} is not supported; use HTTP/1.1 or 1.0",
            )  # fmt: skip
        raw_path = request.raw_path
        if not raw_path.startswith("/"):
            return self._reject(
                flight, settings, 400, "bad_request", "request target must be a path (origin-form)"
            )
        header_bytes = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
        if header_bytes > settings.max_header_bytes:
            return self._reject(
                flight,
                settings,
                431,
                "request_header_fields_too_large",
                f"request headers total {header_bytes} bytes; the limit is {settings.max_header_bytes}",
            )
        transfer_encoding = headers.get("Transfer-Encoding")
        if transfer_encoding is not None:
            if request.version < (1, 1):
                return self._reject(
                    flight, settings, 400, "bad_request", "Transfer-Encoding is not allowed in HTTP/1.0 requests"
                )
            if transfer_encoding.strip().lower() != "chunked":
                # Relaying other codings would hand the upstream an encoded body
                # labelled as plain; nginx answers 501 too.
                return self._reject(
                    flight, settings, 501, "unsupported_transfer_coding",
                    f"transfer coding {transfer_encoding!r} is not supported; only chunked is",
                )  # fmt: skip
        if "Upgrade" in headers:
            # Protocol upgrades (WebSocket, h2c) are not proxied; the request goes
            # upstream without Upgrade, and the connection closes after it
            # because aiohttp treats what follows on it as upgraded bytes.
            flight.close_connection = True
        declared_length = request.content_length
        if declared_length is not None and declared_length > settings.max_request_body:
            return self._reject(
                flight,
                settings,
                413,
                "request_body_too_large",
                f"request body of {declared_length} bytes exceeds the limit of {settings.max_request_body}",
            )

        access = self.access
        identity = None
        if access is not None:
            identified = access.identify(headers, request.path, raw_path, request.remote)
            if isinstance(identified, Refusal):
                return self._refuse(request, flight, settings, identified)
            identity = identified
            flight.principal = identity.principal

        route, path_model = match_route(request.method, request.path)
        # A model call whether or not its bodies are read (llm.enabled): allowlists and stream caps hold either way.
        model_call = route is not None and route.protocol is not None
        tracing = self._tracing
        if tracing is not None:
            flight.span = tracing.start(headers, request.method, route.template if route else None, flight.start_ns)
        if route is not None:
            flight.route = route.template
            if route.protocol is not None and route.operation is not None and settings.llm_enabled:
                flight.tap = ResponseTap(
                    protocol=route.protocol,
                    operation=route.operation,
                    path_model=path_model,
                    start=flight.start,
                    max_line=settings.llm_max_line,
                    max_body=settings.llm_max_body,
                )

        body: bytes | AsyncIterator[bytes] | None = None
        if request.body_exists:
            if request.version >= (1, 1) and headers.get("Expect", "").lower() == "100-continue":
                # aiohttp's router answers this for applications; the low-level
                # server does not, and curl would wait a second before sending.
                # Answered only now, after the size check, so an oversized body
                # is refused before the client sends it.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if declared_length is not None and declared_length <= _READ_WHOLE_BELOW:
                try:
                    async with asyncio.timeout(settings.client_stall_timeout):
                        body = await request.read()
                except ConnectionError:
                    return self._client_gone(flight)
                except TimeoutError:
                    return self._client_body_timeout(flight, settings)
                flight.request_body_bytes = len(body)
                if flight.tap is not None:
                    flight.request_prefix = body
                if flight.content is not None:
                    flight.content.request(body)
            elif (
                access is not None
                and identity is not None
                and model_call
                and access.needs_request_facts(identity)
            ):
                # An access decision rests on the model or stream flag: read and parse the whole
                # body, as the model server will. A prefix could be fooled by a second "model"
                # key further on (JSON parsers keep the last).
                try:
                    body = await self._read_whole(request, settings, flight)
                except ConnectionError:
                    return self._client_gone(flight)
                except TimeoutError:
                    return self._client_body_timeout(flight, settings)
                except _BodyTooLarge:
                    return self._upstream_failed(_BodyTooLarge(), flight, settings)
            else:
                body = self._stream_request_body(request, settings, flight)

        client_ip = request.remote
        if access is not None and identity is not None:
            model, stream = path_model, False
            if model_call and access.needs_request_facts(identity):
                whole = body if isinstance(body, bytes) else b""
                if len(whole) > _PARSE_INLINE_BELOW:
                    facts = await asyncio.to_thread(read_request, whole, True)  # a large JSON parse off the loop
                else:
                    facts = read_request(whole, True)
                flight.facts = facts
                model = facts.model or path_model
                stream = route is not None and route.streams(facts.stream)
            admitted = access.admit(identity, client_ip, model=model, stream=stream, model_call=model_call)
            if isinstance(admitted, Refusal):
                if not isinstance(body, bytes) and body is not None:
                    await body.aclose()  # type: ignore[union-attr]
                return self._refuse(request, flight, settings, admitted)
            flight.admission = admitted
        upstream_headers = upstream_request_headers(
            headers,
            host=request.host if settings.pass_client_host else settings.upstream_authority,
            client_ip=client_ip,
            scheme=request.scheme,
            client_host=headers.get("Host"),
            forwarded=settings.forwarded,
            trust_incoming_forwarded=settings.trust_incoming_forwarded,
            request_id_header=settings.request_id_header,
            request_id=flight.request_id,
            replaced=TRACE_HEADERS if flight.span is not None and flight.span.own else frozenset(),
        )
        if access is not None:
            access.upstream_credentials(upstream_headers)
        if flight.span is not None and tracing is not None:
            tracing.inject(flight.span, upstream_headers)
        url = URL(settings.upstream_prefix + raw_path, encoded=True)
        flight.forwarded = time.perf_counter()
        flight.overhead = flight.forwarded - flight.start
        self._count_upstream(1)
        # aiohttp's read timeout only starts once the whole body is written; an
        # upstream that stops reading a streamed (large) body would hang the
        # request. This deadline covers the send: the body stream pushes it back
        # each time the upstream takes a chunk, and pauses it while waiting on
        # the client. A body read whole (64 KiB at most) fits in the socket
        # buffers, so aiohttp's own timeout covers it and no timer is needed.
        deadline: asyncio.Timeout | contextlib.nullcontext[None]
        if isinstance(body, bytes) or body is None:
            deadline = contextlib.nullcontext()
        else:
            deadline = flight.response_start_deadline = asyncio.timeout(settings.response_start_timeout)
        try:
            async with deadline:
                upstream = await self._session.request(
                    request.method,
                    url,
                    headers=upstream_headers,
                    data=body,
                    allow_redirects=False,
                    timeout=settings.client_timeout,
                )
        except Exception as exc:
            return self._upstream_failed(exc, flight, settings)

        flight.upstream_response_start = time.perf_counter()
        flight.upstream_status = flight.status = upstream.status
        try:
            response = await self._relay(request, upstream, settings, flight)
        except BaseException:
            upstream.close()
            raise
        # A complete body returns the connection to the pool; anything else
        # closes it, since a half-read response leaves it unusable (and closing
        # is what tells the model server to stop generating).
        if flight.outcome is None:
            upstream.release()
        else:
            upstream.close()
        return response

    def _client_body_timeout(self, flight: _Flight, settings: ProxySettings) -> web.Response:
        return self._reject(
            flight,
            settings,
            408,
            "client_body_timeout",
            f"the request body stalled for more than {settings.client_stall_timeout:g}s",
        )

    def _client_gone(self, flight: _Flight) -> web.Response:
        flight.closed_by_client()
        # Nobody will read this; returning it lets aiohttp finish the request quietly.
        return web.Response(status=499)

    def _refuse(
        self, request: web.BaseRequest, flight: _Flight, settings: ProxySettings, refusal: Refusal
    ) -> web.Response:
        """Answer a request access control turned away (401, 403, 429)."""
        flight.fail(Outcome.REJECTED, refusal.error_type, refusal.message, refusal.status)
        response = self._error(flight, settings, refusal.status, refusal.error_type, refusal.message)
        response.headers.extend(refusal.headers)
        if request.body_exists and not request.content.at_eof():
            response.force_close()  # the unread body must not be taken for the next request
        return response

    async def _read_whole(self, request: web.BaseRequest, settings: ProxySettings, flight: _Flight) -> bytes:
        """The whole request body (up to the body limit), read before forwarding."""
        content = request.content
        received = bytearray()
        while True:
            async with asyncio.timeout(settings.client_stall_timeout):
                chunk = await content.readany()
            if not chunk:
                break
            received += chunk
            if len(received) > settings.max_request_body:
                flight.body_too_large = True
                raise _BodyTooLarge
        body = bytes(received)
        flight.request_body_bytes = len(body)
        flight.request_prefix = body
        flight.request_complete = True
        if flight.content is not None:
            flight.content.request(body)
        return body

    def _upstream_failed(self, exc: Exception, flight: _Flight, settings: ProxySettings) -> web.Response:
        # The model server never had the whole request: it could not be reached, or the body did not arrive.
        flight.processed = not (
            flight.client_body_failed or flight.client_body_timed_out or flight.body_too_large
            or isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError)
        )  # fmt: skip
        if flight.client_body_failed:
            return self._client_gone(flight)
        if flight.client_body_timed_out:
            return self._client_body_timeout(flight, settings)
        if flight.body_too_large:
            return self._reject(
                flight,
                settings,
                413,
                "request_body_too_large",
                f"request body exceeds the limit of {settings.max_request_body} bytes",
            )
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            outcome, status, error_type = Outcome.UPSTREAM_TIMEOUT, 504, "upstream_connect_timeout"
            message = "timed out connecting to the upstream"
        elif isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
            outcome, status, error_type = Outcome.UPSTREAM_TIMEOUT, 504, "upstream_response_start_timeout"
            message = "the upstream did not start its response in time"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            outcome, status, error_type = Outcome.UPSTREAM_UNAVAILABLE, 502, "upstream_connect_error"
            message = f"cannot connect to the upstream: {exc.os_error.strerror or exc.os_error}"
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            outcome, status, error_type = Outcome.UPSTREAM_ERROR, 502, "upstream_disconnected"
            message = "the upstream closed the connection without a response"
        elif isinstance(exc, aiohttp.ClientResponseError):
            outcome, status, error_type = Outcome.UPSTREAM_ERROR, 502, "upstream_bad_response"
            message = f"the upstream sent an invalid response: {aiohttp_private.describe_client_error(exc)}"
        elif isinstance(exc, aiohttp.ClientError | OSError):
            outcome, status, error_type = Outcome.UPSTREAM_ERROR, 502, "upstream_error"
            message = f"upstream request failed: {aiohttp_private.describe_client_error(exc)}"
        else:
            raise exc
        flight.fail(outcome, error_type, message, status)
        return self._error(flight, settings, status, error_type, message)

    async def _stream_request_body(
        self, request: web.BaseRequest, settings: ProxySettings, flight: _Flight
    ) -> AsyncIterator[bytes]:
        limit = settings.max_request_body
        peek = settings.llm_request_peek if flight.tap is not None else 0
        if peek:
            flight.request_prefix = bytearray()
        content = request.content
        deadline = flight.response_start_deadline
        loop = asyncio.get_running_loop()
        while True:
            if deadline is not None:
                deadline.reschedule(None)  # waiting on the client now, not the upstream
            try:
                async with asyncio.timeout(settings.client_stall_timeout):
                    chunk = await content.readany()
            except ConnectionError:
                flight.client_body_failed = True
                raise
            except TimeoutError:
                flight.client_body_timed_out = True
                raise
            if deadline is not None:
                deadline.reschedule(loop.time() + settings.response_start_timeout)
            if not chunk:
                return
            if peek and len(flight.request_prefix) < peek:
                flight.request_prefix += chunk[: peek - len(flight.request_prefix)]  # type: ignore[operator]
            flight.request_body_bytes += len(chunk)
            flight.request_complete = flight.request_body_bytes <= peek
            if flight.request_body_bytes > limit:
                flight.body_too_large = True
                raise _BodyTooLarge
            if flight.content is not None:
                flight.content.request(chunk)
            yield chunk

    @staticmethod
    async def _write_within(
        response: web.StreamResponse,
        chunk: bytes | None,
        stall: float,
        flight: _Flight,
        transport: asyncio.Transport,
    ) -> bool:
        """Write `chunk` (or end the body when None) unless the client stalls past `stall`.

        False when it stalled: the connection is then cut and the exchange
        recorded as aborted, since a client that stopped reading would
        otherwise hold an upstream connection forever.
        """
        try:
            async with asyncio.timeout(stall):
                if chunk is None:
                    await response.write_eof()
                else:
                    await response.write(chunk)
        except TimeoutError:
            flight.fail(Outcome.ABORTED, "client_write_timeout", f"the client accepted no response bytes for {stall:g}s")
            transport.abort()
            return False
        return True

    @staticmethod
    async def _read_keeping_alive(
        content: aiohttp.StreamReader, response: web.StreamResponse, interval: float
    ) -> bytes:
        """The next chunk; an SSE comment goes to the client each `interval` of silence before it.

        Only between whole events: a comment written inside an event would corrupt it.
        """
        while True:
            deadline = asyncio.timeout(interval)
            try:
                async with deadline:
                    return await content.readany()
            except TimeoutError:
                if not deadline.expired():
                    raise  # aiohttp's own idle timeout: the upstream has been silent too long
                try:
                    await response.write(_SSE_KEEPALIVE)
                except ConnectionError as exc:
                    raise _ClientWriteFailed from exc  # the client's failure, not the upstream's

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        settings: ProxySettings,
        flight: _Flight,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=client_response_headers(
                upstream.headers,
                request_id_header=settings.request_id_header,
                request_id=flight.request_id,
            ),
        )
        limit_headers = flight.admission.decision.headers
        if limit_headers:
            response.headers.extend(limit_headers)
        flight.response_content_type = upstream.headers.get("Content-Type")
        tap = flight.tap
        if tap is not None:
            tap.begin(upstream.status, flight.response_content_type)
        if self._draining or flight.close_connection:
            response.force_close()
        connection = upstream.connection
        if connection is not None and connection.protocol is not None:
            # Headers are in: from here the read timeout is the allowed silence
            # between chunks. aiohttp stops this timer while the client applies
            # backpressure, so a slow reader is never blamed on the upstream.
            aiohttp_private.restart_read_timeout(connection.protocol, settings.idle_timeout)
        await response.prepare(request)
        flight.first_byte = time.perf_counter()
        flight.overhead += flight.first_byte - flight.upstream_response_start  # type: ignore[operator]

        content = upstream.content
        keepalive = 0.0
        if settings.sse_keepalive and (flight.response_content_type or "").startswith("text/event-stream"):
            keepalive = settings.sse_keepalive
        at_event_boundary = True
        transport = request.transport
        # A write waits only once the transport's send buffer passes its
        # high-water mark; only writes that could cross it get a deadline, so
        # the common case pays for no timer at all.
        high_water = transport.get_write_buffer_limits()[1] if transport is not None else 0
        recorder = flight.content
        # With `settle`, the client must not see a complete response before its
        # record is settled: a chunked body's terminating chunk waits anyway, and
        # of a Content-Length body the last byte is held back.
        held_back = upstream.content_length if self._settle is not None else None
        held = b""
        reading = True
        try:
            while True:
                reading = True
                if keepalive and at_event_boundary:
                    chunk = await self._read_keeping_alive(content, response, keepalive)
                else:
                    chunk = await content.readany()
                if not chunk:
                    break
                if keepalive:
                    at_event_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n"))
                arrived = time.perf_counter()
                reading = False
                whole = chunk
                if held_back is not None and flight.response_body_bytes + len(chunk) >= held_back:
                    chunk, held = chunk[:-1], chunk[-1:]
                if transport is not None and transport.get_write_buffer_size() + len(chunk) > high_water:
                    if not await self._write_within(response, chunk, settings.client_stall_timeout, flight, transport):
                        return response
                elif chunk:
                    await response.write(chunk)
                flight.overhead += time.perf_counter() - arrived
                flight.response_body_bytes += len(whole)
                flight.response_chunks += 1
                # After the write: reading the chunk never delays it.
                if tap is not None:
                    tap.feed(whole, arrived)
                if recorder is not None:
                    recorder.response(whole)
            reading = False
            if self._settle is not None:
                await self._finish(request, settings, flight, settle=True)
                if held:
                    await response.write(held)
            if transport is not None and transport.get_write_buffer_size() + 16 > high_water:
                if not await self._write_within(response, None, settings.client_stall_timeout, flight, transport):
                    return response
            else:
                await response.write_eof()
        except Exception as exc:
            if not reading or isinstance(exc, _ClientWriteFailed):
                if isinstance(exc, ConnectionError | _ClientWriteFailed):
                    flight.closed_by_client()
                    return response
                raise
            if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
                flight.fail(
                    Outcome.UPSTREAM_TIMEOUT,
                    "upstream_idle_timeout",
                    f"the upstream sent nothing for {settings.idle_timeout:g}s mid-response",
                )
            elif isinstance(exc, aiohttp.ClientError | OSError):
                flight.fail(
                    Outcome.UPSTREAM_ERROR,
                    "upstream_response_incomplete",
                    f"the upstream response broke off: {aiohttp_private.describe_client_error(exc)}",
                )
            else:
                raise
            # The status line is gone already; closing without the final chunk
            # (or short of Content-Length) is how HTTP/1.1 tells the client the
            # body is incomplete. close() flushes what was relayed first.
            transport = request.transport
            if transport is not None:
                transport.close()
        return response
