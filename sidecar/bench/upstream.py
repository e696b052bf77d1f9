"""The fast upstream: as little work per request as aiohttp allows, so the proxies show."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

from sidecar.bench.serving import run, serve_forever

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


if __name__ == "__main__":
    run(serve_forever(handle, int(sys.argv[1])))
