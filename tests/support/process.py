"""The real `sidecar run` in a subprocess, for timing, signal and lifecycle tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from tests.support.tools import free_port


class SidecarProcess:
    def __init__(self, upstream_url: str, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.upstream_url = upstream_url
        self.workdir = workdir
        self.args = args
        self.env = env or {}
        self.port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / "sidecar.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def start(self, timeout: float = 20.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        # NVML off: the same behaviour on a GPU host as in CI.
        env.update({"SIDECAR_LOG__FORMAT": "json", "SIDECAR_UPSTREAM__HEALTH__ENABLED": "false",
                    "SIDECAR_GPU__NVML__ENABLED": "false"})
        env.update(self.env)
        command = [
            sys.executable, "-m", "sidecar", "run",
            "--upstream", self.upstream_url,
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--data-dir", str(self.workdir / "data"),
            *self.args,
        ]  # fmt: skip
        log = self.log_path.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as client:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"sidecar exited with {self.process.returncode}:\n{self.log}")
                try:
                    async with client.get(f"{self.admin_url}/-/healthy") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"sidecar did not come up within {timeout}s:\n{self.log}")
                await asyncio.sleep(0.05)

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def send_term(self) -> None:
        self.send(signal.SIGTERM)

    def send_kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or clean up."""
        self.send(signal.SIGKILL)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
