"""Running one handler on aiohttp's low-level server, as the bench's helper processes do."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web


async def serve_forever(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], port: int) -> None:
    """Serve `handler` on 127.0.0.1:`port`, say "ready" on stdout, and run until killed."""
    runner = web.ServerRunner(web.Server(handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when installed, as the sidecar does."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
