"""A real Prometheus (Debian's `prometheus` package) on loopback, scraping one target every second."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiohttp

from tests.support.tools import free_port, require_tool


def start_prometheus(tmp_path: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    """Starts Prometheus scraping `target` (host:port, path /metrics) as job `sidecar` every 1 s, with
    exemplar storage on; returns the process and its base URL. Its log is `tmp_path / "prometheus.log"`.
    Skips (locally) or fails (CI) when the binary is missing. Stop it with `stop_prometheus`."""
    binary = require_tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: sidecar\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def stop_prometheus(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def prometheus_log(tmp_path: Path, tail: int = 2000) -> str:
    path = tmp_path / "prometheus.log"
    return path.read_text(errors="replace")[-tail:] if path.exists() else ""


async def query(client: aiohttp.ClientSession, prometheus: str, promql: str) -> list[dict]:
    """The result of an instant query; asserts that Prometheus answered `success`."""
    body = await query_response(client, prometheus, promql)
    assert body["status"] == "success", body
    return body["data"]["result"]


async def query_response(client: aiohttp.ClientSession, prometheus: str, promql: str) -> dict:
    """Prometheus's whole answer to an instant query (`status`, `data` or `error`), whatever the status."""
    async with client.get(f"{prometheus}/api/v1/query", params={"query": promql}) as response:
        return await response.json(content_type=None)


async def query_exemplars(client: aiohttp.ClientSession, prometheus: str, promql: str, start: float, end: float) -> list[dict]:
    """The exemplars of the series `promql` selects between `start` and `end` (Unix seconds), as Grafana asks
    for them: one entry per series, each with `seriesLabels` and `exemplars` (`labels`, `value`, `timestamp`)."""
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}"}
    async with client.get(f"{prometheus}/api/v1/query_exemplars", params=params) as response:
        body = await response.json(content_type=None)
    assert body["status"] == "success", body
    return body["data"] or []
