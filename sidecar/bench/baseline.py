"""The bare aiohttp proxy: what any aiohttp-based design costs before it does anything useful.

No limits, no header rules, no records: stream the request in, stream the
response out, on the same server and client classes the sidecar uses.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

from sidecar.bench.serving import run, serve_forever

HOP = {"connection", "keep-alive", "transfer-encoding", "host", "te", "upgrade", "proxy-connection"}


async def serve(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read() if request.can_read_body else None
        async with session.request(request.method, upstream + request.raw_path, headers=headers, data=body) as up:
            response = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    await serve_forever(handle, port)


if __name__ == "__main__":
    run(serve(int(sys.argv[1]), sys.argv[2]))
