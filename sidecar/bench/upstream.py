"""The fast upstream: as little work per request as aiohttp allows, so the proxies show."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

BODY = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "model": "bench",
        "choices": [{"index": 0, "text": "The quick brown fox jumps over the lazy dog.", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 10},
    },
    separators=(",", ":"),
).encode()


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/sse":
        events = int(request.query.get("events", "100"))
        interval = float(request.query.get("interval_ms", "1")) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for seq in range(events):
            await response.write(f'data: {{"seq":{seq},"sent_ns":{time.monotonic_ns()}}}\n\n'.encode())
            await asyncio.sleep(interval)
        await response.write_eof()
        return response
    if request.can_read_body:
        await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def serve(port: int) -> None:
    server = web.Server(handle, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(serve(int(sys.argv[1])))
    except ImportError:
        asyncio.run(serve(int(sys.argv[1])))
