"""`sidecar demo`: the demo model server with the sidecar in front, on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from sidecar.app import Sidecar
from sidecar.config import Config, load_config
from sidecar.demo.server import DEFAULT_MODEL_NAME
from sidecar.demo.traffic import send_burst
from sidecar.gpu.nvml import nvml_present


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_healthy(url: str, process: asyncio.subprocess.Process, timeout: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as client:
        while True:
            if process.returncode is not None:
                raise SystemExit(f"the demo model server exited with status {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(url) as response:
                    if response.status == 200:
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"the demo model server did not become healthy within {timeout:g}s")
            await asyncio.sleep(0.1)


def demo_config(
    model_port: int, data_dir: str | None, listen: str | None, admin_listen: str | None, *, simulate_gpu: bool
) -> Config:
    flags: dict[tuple[str | int, ...], object] = {
        ("upstream", "url"): f"http://127.0.0.1:{model_port}",
        ("proxy", "listen"): listen or f"127.0.0.1:{_free_port()}",
        ("admin", "listen"): admin_listen or f"127.0.0.1:{_free_port()}",
        ("upstream", "health", "interval"): "2s",
        ("upstream", "health", "timeout"): "1s",
    }
    if data_dir:
        flags[("data_dir",)] = data_dir
    if simulate_gpu:
        # Without a GPU the tour still shows the GPU series, time, energy and cost per request.
        flags[("gpu", "nvml", "simulate")] = 1
        flags[("gpu", "cost", "cloud_prices", "default")] = {"input_per_1k": 0.015, "output_per_1k": 0.025,
                                                              "per_request": 0.001}  # fmt: skip
    return load_config(None, env={k: v for k, v in os.environ.items() if k.startswith("SIDECAR_")}, flags=flags)


async def run_demo(
    *,
    duration: float | None,
    device: str,
    tokens_per_second: float,
    data_dir: str | None,
    listen: str | None,
    admin_listen: str | None,
) -> int:
    model_port = _free_port()
    model_server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "demo-server", "--listen", f"127.0.0.1:{model_port}",
        "--device", device, "--tokens-per-second", str(tokens_per_second),
    )  # fmt: skip
    sidecar: Sidecar | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _wait_healthy(f"http://127.0.0.1:{model_port}/health", model_server)
        simulate_gpu = not await asyncio.to_thread(nvml_present)
        sidecar = Sidecar(demo_config(model_port, data_dir, listen, admin_listen, simulate_gpu=simulate_gpu))
        await sidecar.start()
        proxy_url = f"http://{sidecar.proxy_address}"
        admin_url = f"http://{sidecar.admin_address}"
        print(f"\ndemo model server  http://127.0.0.1:{model_port}  (model {DEFAULT_MODEL_NAME!r})")
        print(f"sidecar proxy      {proxy_url}")
        print(f"status page        {admin_url}/  (open in a browser)")
        print(f"metrics            {admin_url}/metrics")
        print(f"readiness          {admin_url}/-/ready")
        if sidecar.rule_engine is not None:
            print(f"alerts, SLOs       {admin_url}/-/alerts  {admin_url}/-/slo")
        if simulate_gpu:
            print("GPU readings       simulated: no NVIDIA driver here (gpu.nvml.simulate)")
        audit = sidecar.config.data_dir / "audit"
        print(f"audit trail        {audit / 'events'}  (JSON Lines, one record per request)\n")
        print("sending a burst of mixed traffic through the sidecar:")
        for label, status, seconds, size in sorted(await send_burst(proxy_url, DEFAULT_MODEL_NAME)):
            print(f"  {label:<24} {status}  {seconds * 1000:7.1f} ms  {size:6d} bytes")
        print("\ntry it:")
        print(f"  curl -N {proxy_url}/v1/chat/completions -H 'Content-Type: application/json' \\")
        print(f"    -d '{{\"model\": \"{DEFAULT_MODEL_NAME}\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'")
        print(f"  curl -s {admin_url}/metrics | grep -E 'gen_ai_|DCGM_FI_DEV_POWER|sidecar_cost'")
        print(f"  sidecar audit verify --file {audit / 'events'} --public-key {audit / 'checkpoint.pub'}")
        print("\nserving" + (f" for {duration:g}s" if duration else " until Ctrl-C"), flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if sidecar is not None:
            await sidecar.stop()
        if model_server.returncode is None:
            model_server.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await model_server.wait()
            if model_server.returncode is None:
                model_server.kill()
    return 0


def default_demo_data_dir() -> str:
    return str(Path.cwd() / "sidecar-data")
