"""Debian's Alertmanager (prometheus-alertmanager), started on loopback for a test."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.tools import free_port, require_tool


def alertmanager_route(receiver: str, webhook_url: str, group_by: list[str]) -> dict[str, Any]:
    """A config that sends every alert to one webhook at once (group_wait 0s) and repeats hourly."""
    return {
        "route": {"receiver": receiver, "group_by": group_by, "group_wait": "0s", "group_interval": "1s",
                  "repeat_interval": "1h"},  # fmt: skip
        "receivers": [{"name": receiver, "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }


async def start_alertmanager(
    tmp_path: Path, route: dict[str, Any]
) -> tuple[asyncio.subprocess.Process, str, Path]:
    """Starts Alertmanager with `route` as its config; returns the process, its URL and its log file."""
    binary = require_tool("prometheus-alertmanager")
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "alertmanager.yml"
    config.write_text(json.dumps(route))  # YAML is a superset of JSON
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}", log


async def wait_ready(process: asyncio.subprocess.Process, url: str, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as client:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"alertmanager exited with {process.returncode}:\n{log.read_text()}")
            try:
                async with client.get(f"{url}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"alertmanager not ready within {timeout}s:\n{log.read_text()}")
            await asyncio.sleep(0.1)
