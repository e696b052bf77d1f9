"""Each target in its own process, pinned: load and upstream on core 0, the proxy under test on core 1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

NGINX_CONFIG = """\
worker_processes 1;
daemon off;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    upstream model {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""

BARE_AIOHTTP = "bare aiohttp proxy"

# Everything the sidecar can switch off, for the "pure proxy path" target.
MINIMAL_SIDECAR = {
    "SIDECAR_TRACING__ENABLED": "false",
    "SIDECAR_LLM__ENABLED": "false",
    "SIDECAR_UPSTREAM__HEALTH__ENABLED": "false",
    "SIDECAR_PROXY__REQUEST_ID_HEADER": "",
    "SIDECAR_PROXY__FORWARDED__ENABLED": "false",
    "SIDECAR_AUDIT__ENABLED": "false",
    "SIDECAR_GPU__NVML__ENABLED": "false",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(core: int) -> list[str]:
    """A `taskset` prefix, when there are two cores or more to separate load from proxy."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


@dataclass
class Target:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    """The process doing the proxying (for CPU and memory probes); None for direct."""
    notes: list[str] = field(default_factory=list)


def _wait_ready(url: str, process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer {url} within {timeout:g}s")
        time.sleep(0.05)


class TargetSet:
    """Starts the requested targets; stops them all on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, command: list[str], core: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            pinned(core) + command,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"process-{len(self._processes)}.log").open("wb"),
            env={**os.environ, **(env or {})},
        )
        self._processes.append(process)
        return process

    def upstream(self) -> Target:
        port = free_port()
        process = self._spawn([sys.executable, "-m", "sidecar.bench.upstream", str(port)], core=0)
        target = Target("direct", f"http://127.0.0.1:{port}")
        _wait_ready(f"{target.url}/json", process, "the bench upstream")
        return target

    def sidecar(self, name: str, upstream: Target, extra_env: dict[str, str]) -> Target:
        port, admin = free_port(), free_port()
        data = self.workdir / name.replace(" ", "-").replace(",", "")
        command = [sys.executable, "-m", "sidecar", "run", "--upstream", upstream.url,
                   "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", "--data-dir", str(data)]  # fmt: skip
        env = {"SIDECAR_LOG__LEVEL": "warning", "SIDECAR_LOG__FORMAT": "json", **extra_env}
        process = self._spawn(command, core=1, env=env)
        target = Target(name, f"http://127.0.0.1:{port}", process)
        _wait_ready(f"{target.url}/json", process, name)
        return target

    def bare_aiohttp(self, upstream: Target) -> Target:
        port = free_port()
        process = self._spawn([sys.executable, "-m", "sidecar.bench.baseline", str(port), upstream.url], core=1)
        target = Target(BARE_AIOHTTP, f"http://127.0.0.1:{port}", process)
        _wait_ready(f"{target.url}/json", process, target.name)
        return target

    def nginx(self, upstream: Target) -> Target | None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            return None
        prefix = self.workdir / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        port = free_port()
        (prefix / "nginx.conf").write_text(
            NGINX_CONFIG.format(
                prefix=prefix,
                port=port,
                upstream_port=upstream.url.rsplit(":", 1)[1],
                user="user root;" if os.geteuid() == 0 else "",
            )
        )
        process = self._spawn([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], core=1)
        target = Target("nginx", f"http://127.0.0.1:{port}", process)
        _wait_ready(f"{target.url}/json", process, "nginx")
        return target

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
