"""Load generators and probes of the process under test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

import aiohttp

from sidecar.bench.targets import pinned

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by a process and its children (nginx's workers)."""
    total = 0.0
    for member in _process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def _process_tree(pid: int) -> list[int]:
    members, pending = [], [pid]
    while pending:
        current = pending.pop()
        members.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending.extend(int(child) for child in children.read().split())
        except OSError:
            pass
    return members


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def sequential(client: aiohttp.ClientSession, url: str, duration: float) -> list[float]:
    """Latencies of back-to-back requests on one connection for `duration` seconds."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        async with client.get(url) as response:
            await response.read()
        latencies.append(time.perf_counter() - started)
    return latencies


@dataclass
class Throughput:
    requests_per_second: float
    p50_s: float
    p99_s: float
    tool: str


_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, connections: int, duration: float) -> Throughput:
    """wrk with one thread, pinned beside the upstream, so the proxy has its own core."""
    output = subprocess.run(
        pinned(0) + ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = {q: float(v) * _UNIT[unit] for q, v, unit in _WRK_LATENCY.findall(output)}
    return Throughput(rps, latency.get("50", float("nan")), latency.get("99", float("nan")), "wrk")


async def closed_loop(url: str, connections: int, duration: float) -> Throughput:
    """The built-in generator: `connections` clients each sending back to back."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as client:
        started = time.perf_counter()
        await asyncio.gather(*(_loop(client, url, started + duration, latencies) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Throughput(len(latencies) / elapsed, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], "built-in")


async def _loop(client: aiohttp.ClientSession, url: str, deadline: float, latencies: list[float]) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        async with client.get(url) as response:
            await response.read()
        latencies.append(time.perf_counter() - started)


@dataclass
class StreamReading:
    first_event_s: float
    delays_s: list[float]
    reads: int
    events: int


async def read_stream(client: aiohttp.ClientSession, url: str) -> StreamReading:
    """One SSE answer: time to first event, each event's delay from its write, and reads taken."""
    started = time.perf_counter()
    first: float | None = None
    buffer = b""
    reads = 0
    delays: list[float] = []
    async with client.get(url) as response:
        async for chunk in response.content.iter_any():
            received = time.monotonic_ns()
            reads += 1
            if first is None:
                first = time.perf_counter() - started
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                delays.append((received - json.loads(event[6:])["sent_ns"]) / 1e9)
    return StreamReading(first or 0.0, delays, reads, len(delays))


async def steady_rate(url: str, rate: float, duration: float) -> int:
    """Send `rate` requests a second for `duration` seconds (open loop); returns how many succeeded."""
    done = 0
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> None:
            nonlocal done
            async with client.get(url) as response:
                await response.read()
                done += response.status == 200

        tasks = []
        started = time.perf_counter()
        for index in range(int(rate * duration)):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks, return_exceptions=True)
    return done
