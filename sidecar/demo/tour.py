"""`sidecar demo`: the demo model server with the sidecar in front, on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from sidecar.app import Sidecar
from sidecar.buckets import HTTP_DURATION_BUCKETS
from sidecar.config import AlertRuleConfig, Config, format_duration, load_config
from sidecar.demo.server import DEFAULT_MODEL_NAME
from sidecar.demo.traffic import mixed_calls, send_burst, send_calls, try_it_call
from sidecar.gpu.nvml import nvml_present
from sidecar.proxy.auth.keys import digest, new_key
from sidecar.rules.spec import default_rules

LATENCY_RULE = "SidecarHighLatencyP99"
API_KEY_FILE = "api-keys.yaml"


@dataclass(frozen=True)
class DemoCaller:
    """The demo tenant's API key, which the tour's traffic and printed commands present."""

    key: str
    key_id: str = "demo-key"
    tenant: str = "demo"
    user: str = "demo-user"

    def write_key_file(self, path: Path) -> None:
        entry = {"id": self.key_id, "sha256": digest(self.key), "tenant": self.tenant, "user": self.user}
        path.write_text(yaml.safe_dump({"keys": [entry]}, sort_keys=False), encoding="utf-8")


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


def sidecar_command() -> str:
    """How the user's shell runs this installation's `sidecar`: by name when PATH finds it, else by path."""
    # A virtualenv's scripts sit beside its interpreter; sys.executable is not resolved, so it stays in the venv.
    script = Path(sys.executable).parent / "sidecar"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m sidecar"
    found = shutil.which("sidecar")
    if found and Path(found).resolve() == script.resolve():
        return "sidecar"
    with contextlib.suppress(ValueError):
        relative = script.relative_to(Path.cwd())
        if len(relative.parts) <= 3:  # the virtualenv is in the current directory: .venv/bin/sidecar
            return shlex.quote(str(relative))
    return shlex.quote(str(script))


def fitted_latency_threshold(slowest_s: float) -> float:
    """A P99 threshold the demo's own traffic stays under: twice its slowest answer, at least 1 s,
    raised to a histogram bucket bound (the rule's quantile is estimated within a bucket)."""
    wanted = max(1.0, 2 * slowest_s)
    return next((bound for bound in HTTP_DURATION_BUCKETS if bound >= wanted), HTTP_DURATION_BUCKETS[-1])


def shipped_latency_rule() -> AlertRuleConfig:
    return next(rule for rule in default_rules() if rule.name == LATENCY_RULE)


def fitted_latency_rule(threshold_s: float) -> dict[str, Any]:
    """The shipped P99 latency rule with `threshold_s` in place of its threshold, as a config entry."""
    shipped = shipped_latency_rule()
    over = f"over {format_duration(threshold_s)} for {format_duration(shipped.for_)}"
    summary = "P99 request latency is {{ $value | humanizeDuration }} (" + over + ")"
    annotations = {**shipped.annotations, "summary": summary}
    return shipped.model_copy(update={"threshold": threshold_s, "annotations": annotations}).model_dump(
        mode="json", by_alias=True
    )


def demo_config(
    model_port: int,
    data_dir: str | None,
    listen: str | None,
    admin_listen: str | None,
    *,
    simulate_gpu: bool,
    run_dir: Path,
    latency_threshold_s: float,
) -> Config:
    """The sidecar's config for the tour; `run_dir` holds what lasts only for this run (API keys, rule state)."""
    flags: dict[tuple[str | int, ...], object] = {
        ("upstream", "url"): f"http://127.0.0.1:{model_port}",
        ("proxy", "listen"): listen or f"127.0.0.1:{_free_port()}",
        ("admin", "listen"): admin_listen or f"127.0.0.1:{_free_port()}",
        ("upstream", "health", "interval"): "2s",
        ("upstream", "health", "timeout"): "1s",
        # Who calls: every request presents the demo tenant's key, so audit records name the caller.
        ("auth", "enabled"): True,
        ("auth", "api_keys", "file"): str(run_dir / API_KEY_FILE),
        # The shipped 500 ms P99 suits a production server, not a paced CPU model: fit it to what
        # this model was measured to take, so the only alerts are the ones the user causes.
        ("rules", "alerts"): [fitted_latency_rule(latency_threshold_s)],
        # Fresh windows each run: a restored outage from an earlier tour would alert again.
        ("rules", "state_file"): str(run_dir / "rules-state.json"),
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
        with tempfile.TemporaryDirectory(prefix="sidecar-demo-") as run_dir:
            model_url = f"http://127.0.0.1:{model_port}"
            await _wait_healthy(f"{model_url}/health", model_server)
            # The demo's own traffic, plus the request the tour suggests, straight to the model server.
            measured = await send_calls(model_url, [*mixed_calls(DEFAULT_MODEL_NAME), try_it_call(DEFAULT_MODEL_NAME)])
            slowest = max(sent.seconds for sent in measured)
            threshold = fitted_latency_threshold(slowest)
            caller = DemoCaller(new_key())
            caller.write_key_file(Path(run_dir) / API_KEY_FILE)
            simulate_gpu = not await asyncio.to_thread(nvml_present)
            config = demo_config(
                model_port, data_dir, listen, admin_listen,
                simulate_gpu=simulate_gpu, run_dir=Path(run_dir), latency_threshold_s=threshold,
            )  # fmt: skip
            sidecar = Sidecar(config)
            await sidecar.start()
            _print_addresses(sidecar, model_url, model_server.pid, caller, simulate_gpu)
            if sidecar.rule_engine is not None:
                shipped = shipped_latency_rule()
                print(f"latency rule       {LATENCY_RULE} fires at P99 > {format_duration(threshold)} for "
                      f"{format_duration(shipped.for_)} here, not the shipped {format_duration(shipped.threshold)}: "
                      f"this model's slowest answer took {slowest * 1000:.0f} ms")  # fmt: skip
            print("\nsending a burst of mixed traffic through the sidecar, each call in a trace of its own:")
            for sent in sorted(await send_burst(f"http://{sidecar.proxy_address}", DEFAULT_MODEL_NAME, api_key=caller.key)):
                print(f"  {sent.label:<24} {sent.status}  {sent.seconds * 1000:7.1f} ms  {sent.size:6d} bytes  "
                      f"trace {sent.trace_id}")  # fmt: skip
            _print_try_it(sidecar, model_server.pid, caller)
            print("\nserving" + (f" for {duration:g}s" if duration else " until Ctrl-C"), flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration):
                    await stop.wait()
            await sidecar.stop()
            sidecar = None
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


def _print_addresses(sidecar: Sidecar, model_url: str, model_pid: int, caller: DemoCaller, simulate_gpu: bool) -> None:
    admin_url = f"http://{sidecar.admin_address}"
    audit = sidecar.config.data_dir / "audit"
    print(f"\ndemo model server  {model_url}  (model {DEFAULT_MODEL_NAME!r}, pid {model_pid})")
    print(f"sidecar proxy      http://{sidecar.proxy_address}")
    print(f"API key            {caller.key}  (tenant {caller.tenant!r}, user {caller.user!r}; the proxy requires a key)")
    print(f"status page        {admin_url}/  (open in a browser)")
    print(f"metrics            {admin_url}/metrics")
    print(f"readiness          {admin_url}/-/ready")
    if sidecar.rule_engine is not None:
        print(f"alerts, SLOs       {admin_url}/-/alerts  {admin_url}/-/slo")
    if simulate_gpu:
        print("GPU readings       simulated: no NVIDIA driver here (gpu.nvml.simulate)")
    print(f"audit trail        {audit / 'events'}  (JSON Lines, one record per request)")


def _print_try_it(sidecar: Sidecar, model_pid: int, caller: DemoCaller) -> None:
    proxy_url, admin_url = f"http://{sidecar.proxy_address}", f"http://{sidecar.admin_address}"
    audit = sidecar.config.data_dir / "audit"
    auth = shlex.quote(f"Authorization: Bearer {caller.key}")
    call = try_it_call(DEFAULT_MODEL_NAME)
    sidecar_cmd = sidecar_command()
    print("\ntry it:")
    print(f"  curl -N {proxy_url}{call.path} -H {auth} -H 'Content-Type: application/json' \\")
    print(f"    -d {shlex.quote(json.dumps(call.body))}")
    print(f"  curl -s {admin_url}/metrics | grep -E 'gen_ai_|DCGM_FI_DEV_POWER|sidecar_cost'")
    print(f"  tail -n 3 {shlex.quote(str(audit / 'events'))}/*.jsonl")
    print(f"  {sidecar_cmd} audit verify --file {shlex.quote(str(audit / 'events'))} "
          f"--public-key {shlex.quote(str(audit / 'checkpoint.pub'))}")  # fmt: skip
    print("\nan alert: stop the model server, then send 20 requests through the sidecar (each gets a 502):")
    print(f"  kill {model_pid}")
    print(f"  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' {proxy_url}/v1/models -H {auth}; done; echo")
    print(f"  curl -s {admin_url}/-/alerts    # SidecarUpstreamDown at once; SidecarHighErrorRate pending, firing 2m later")


def default_demo_data_dir() -> str:
    return str(Path.cwd() / "sidecar-data")
