"""The demo model server in a subprocess, shared by a test module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.tools import free_port


class DemoProcess:
    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def first_token_sent_at(self, request_id: str) -> float:
        with urllib.request.urlopen(f"{self.url}/debug/timings/{request_id}", timeout=5) as response:
            return json.load(response)["first_token_sent_at"]


def start_demo(*args: str) -> Iterator[DemoProcess]:
    pytest.importorskip("torch") if not os.environ.get("CI") else None
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo-server", "--listen", f"127.0.0.1:{port}", "--device", "cpu", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"demo server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError("demo server did not start within 60 s") from None
            time.sleep(0.1)
    try:
        yield DemoProcess(port, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
