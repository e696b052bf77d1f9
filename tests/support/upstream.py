"""A model-server stand-in with endpoints for each proxy behaviour under test.

Runs on 127.0.0.1 in the test's event loop. Every streamed event carries the
monotonic time it was written (time.monotonic_ns, the same clock in every
process on the machine) so delays can be measured across processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time

from aiohttp import web

from tests.support.tools import serve_on_loopback


def deterministic_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


FAULTS = {
    "malformed-json": b'{"model": "m", "choices": [',
    "truncated-sse": b'data: {"model": "m", "choices": [{"delta": {"content": "a"}}]}\n\ndata: {"model": "m", "cho',
    "invalid-utf8": b'data: {"model": "\xff\xfe", "choices": []}\n\ndata: [DONE]\n\n',
    "huge-line": b"data: " + b"x" * (10 << 20) + b"\n\ndata: [DONE]\n\n",
}


class TestUpstream:
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.healthy = True
        self.health_delay = 0.0
        self.streams_started = 0
        self.streams_finished = 0
        self.streams_cut = 0
        self.slow_started = 0
        self.requests: list[dict[str, object]] = []
        self._runner: web.AppRunner | None = None
        self._server: web.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections still open (aiohttp keeps a closed one listed until its handler returns)."""
        assert self._runner is not None and self._runner.server is not None
        return sum(1 for connection in self._runner.server.connections if connection.transport is not None)

    async def start(self, unix_path: str | None = None) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_route("*", "/echo/{tail:.*}", self.echo)
        app.router.add_get("/bytes", self.random_bytes)
        app.router.add_route("*", "/status/{code}", self.status)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/ndjson", self.ndjson)
        app.router.add_get("/slow-start", self.slow_start)
        app.router.add_get("/stall", self.stall)
        app.router.add_get("/broken", self.broken)
        app.router.add_get("/hop-headers", self.hop_headers)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/chat/completions", self.chat)
        if unix_path is None:
            self._runner, self.port = await serve_on_loopback(app, auto_decompress=False)
            return
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, auto_decompress=False)
        await self._runner.setup()
        await web.UnixSite(self._runner, unix_path).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
        }
        self.requests.append(record)
        return web.json_response(record)

    async def random_bytes(self, request: web.Request) -> web.Response:
        size = int(request.query.get("n", "1024"))
        return web.Response(body=deterministic_bytes(size), content_type="application/octet-stream")

    async def status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"X-Status": str(code)}
        if code == 304:
            headers["ETag"] = '"v1"'
        if code in (204, 304) or request.method == "HEAD":
            return web.Response(status=code, headers=headers)
        return web.Response(status=code, text=f"status {code}\n", headers=headers)

    async def _stream(self, request: web.Request, content_type: str, render) -> web.StreamResponse:
        count = int(request.query.get("events", "10"))
        interval = float(request.query.get("interval_ms", "1")) / 1000
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        self.streams_started += 1
        try:
            await response.prepare(request)
            for seq in range(count):
                await response.write(render(seq, time.monotonic_ns()))
                if interval:
                    await asyncio.sleep(interval)
            await response.write_eof()
        except asyncio.CancelledError:
            self.streams_cut += 1
            raise
        except ConnectionError:
            self.streams_cut += 1
            return response
        self.streams_finished += 1
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(
            request,
            "text/event-stream",
            lambda seq, ns: f'data: {{"seq": {seq}, "sent_ns": {ns}}}\n\n'.encode(),
        )

    async def ndjson(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(
            request,
            "application/x-ndjson",
            lambda seq, ns: (json.dumps({"seq": seq, "sent_ns": ns}) + "\n").encode(),
        )

    async def slow_start(self, request: web.Request) -> web.Response:
        self.slow_started += 1
        await asyncio.sleep(float(request.query.get("delay", "5")))
        return web.Response(text="late")

    async def stall(self, request: web.Request) -> web.StreamResponse:
        """Sends `chunks` chunks, then falls silent for `sleep` seconds."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for seq in range(int(request.query.get("chunks", "2"))):
            await response.write(f"data: {seq}\n\n".encode())
        await asyncio.sleep(float(request.query.get("sleep", "30")))
        return response

    async def broken(self, request: web.Request) -> web.StreamResponse:
        """Promises 1000 bytes, sends 10, then drops the connection."""
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    async def hop_headers(self, request: web.Request) -> web.Response:
        response = web.Response(text="hop")
        response.headers.add("Connection", "X-Hop-Named")
        response.headers.add("X-Hop-Named", "secret")
        response.headers.add("Keep-Alive", "timeout=5")
        response.headers.add("Proxy-Authenticate", "Basic")
        response.headers.add("Trailer", "X-Checksum")
        response.headers.add("Upgrade", "h2c")
        response.headers.add("X-End-To-End", "kept")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """A minimal chat completion echoing the model, or, with `X-Fault`, a broken answer."""
        body = await request.read()
        fault = request.headers.get("X-Fault")
        if fault is None:
            model = json.loads(body).get("model", "m")
            return web.json_response({"model": model, "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": 1}})  # fmt: skip
        payload = FAULTS[fault]
        content_type = "application/json" if fault == "malformed-json" else "text/event-stream"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for start in range(0, len(payload), 1 << 20):
            await response.write(payload[start : start + (1 << 20)])
        await response.write_eof()
        return response

    async def health(self, request: web.Request) -> web.Response:
        if self.health_delay:
            await asyncio.sleep(self.health_delay)
        if self.healthy:
            return web.Response(text="ok")
        return web.Response(status=503, text="loading")
