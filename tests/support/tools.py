"""Helpers shared by the tests: free ports, external tools, bounded waits."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Callable

import pytest
from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A loopback port with nothing listening on it (connections are refused)."""
    return free_port()


def require_tool(name: str) -> str:
    """The path of an external program; skips locally when missing, fails in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/test.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def serve_on_loopback(app: web.Application, **runner_options: object) -> tuple[web.AppRunner, int]:
    """Start `app` on 127.0.0.1 on a free port; returns its runner and the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, **runner_options)  # type: ignore[arg-type]
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]
