"""The benchmark run: targets up, scenarios in interleaved rounds, medians and ratios out."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from sidecar import __version__
from sidecar.bench import load
from sidecar.bench.audit import audit_throughput
from sidecar.bench.targets import BARE_AIOHTTP as BARE
from sidecar.bench.targets import MINIMAL_SIDECAR, Target, TargetSet
from sidecar.gpu.nvml import nvml_present

SCENARIOS = ("latency", "throughput", "sse", "memory", "audit", "costs")
SIDECAR = "sidecar (defaults)"
SSE_EVENTS = 100

# For the costs scenario: the parts of the defaults, switched off one after another. A part's
# cost is the CPU per request before minus after it goes. Taken one at a time from the full
# defaults instead, the parts sum to more than the whole: the export and audit threads also cost
# each other the switching between them.
COST_STEPS = {
    "span export (OTLP)": {"SIDECAR_TRACING__EXPORTER": "none"},
    "audit trail": {"SIDECAR_AUDIT__ENABLED": "false"},
    "GPU readings and attribution": {"SIDECAR_GPU__NVML__ENABLED": "false"},
}
THE_REST = "the rest (metrics, rules, request ids, forwarded headers, health checks)"
EVERYTHING_OFF = "sidecar (everything off)"

# Goals from the project's performance issue; reported, not asserted.
GOALS = {
    "added_p50_ms": 0.25,
    "added_p99_ms": 1.0,
    "throughput_vs_bare": 0.8,
    "sse_added_first_event_p50_ms": 0.5,
    "sse_reads_per_100": 99,
    "rss_growth_mb": 10.0,
    "audit_events_per_s": 20_000.0,
}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(), "event_loop": loop,
            "kernel": platform.release(), "sidecar": __version__}  # fmt: skip


async def run_bench(
    duration: float, rounds: int, scenarios: list[str], memory_duration: float, audit_events: int = 50_000
) -> dict[str, Any]:
    """Run the scenarios and return the results as plain data."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # the load generator shares core 0 with the upstream
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as scratch:
        targets = TargetSet(Path(scratch))
        try:
            direct = targets.upstream()
            sidecar_env = {
                "SIDECAR_TRACING__EXPORTER": "otlp",
                # Any 2xx satisfies the OTLP/HTTP exporter; the fast upstream is the sink.
                "SIDECAR_TRACING__ENDPOINT": f"{direct.url}/v1/traces",
            }
            if not nvml_present():
                # The GPU collector and per-request attribution cost what they cost with a GPU.
                sidecar_env["SIDECAR_GPU__NVML__SIMULATE"] = "1"
            lineup = [direct, targets.sidecar(SIDECAR, direct, sidecar_env),
                      targets.sidecar(EVERYTHING_OFF, direct, MINIMAL_SIDECAR), targets.bare_aiohttp(direct)]  # fmt: skip
            nginx = targets.nginx(direct)
            if nginx is not None:
                lineup.append(nginx)
            results: dict[str, Any] = {"machine": machine(), "targets": [t.name for t in lineup],
                                       "settings": {"duration_s": duration, "rounds": rounds}}  # fmt: skip
            if "latency" in scenarios:
                results["latency"] = await _latency(lineup, duration, rounds)
            if "throughput" in scenarios:
                results["throughput"] = await _throughput(lineup, duration, rounds)
            if "sse" in scenarios:
                results["sse"] = await _sse(lineup, rounds, streams=max(3, int(duration * 2)))
            if "memory" in scenarios:
                results["memory"] = await _memory(lineup[1], memory_duration)
            if "costs" in scenarios:
                variants, env = [], dict(sidecar_env)
                for number, switch_off in enumerate(COST_STEPS.values(), start=1):
                    env.update(switch_off)
                    variants.append(targets.sidecar(f"defaults, parts 1-{number} off", direct, dict(env)))
                results["costs"] = await _costs(lineup, variants, duration, rounds)
            if "audit" in scenarios:
                results["audit"] = [
                    await audit_throughput(audit_events, fsync, Path(scratch)) for fsync in ("interval", "always")
                ]
        finally:
            targets.stop()
    results["ratios"] = ratios(results)
    results["goals"] = goals(results)
    return results


async def _latency(lineup: list[Target], duration: float, rounds: int) -> dict[str, Any]:
    per_round: dict[str, list[tuple[float, float]]] = {t.name: [] for t in lineup}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as client:
        for target in lineup:
            await load.sequential(client, f"{target.url}/json", 0.2)  # warm up
        for _ in range(rounds):
            for target in lineup:
                latencies = await load.sequential(client, f"{target.url}/json", duration)
                per_round[target.name].append((_quantile(latencies, 0.5), _quantile(latencies, 0.99)))
    out = {name: {"p50_ms": _median([r[0] for r in rows]) * 1e3, "p99_ms": _median([r[1] for r in rows]) * 1e3}
           for name, rows in per_round.items()}  # fmt: skip
    base = out["direct"]
    for row in out.values():
        row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]
        row["added_p99_ms"] = row["p99_ms"] - base["p99_ms"]
    return out


async def _throughput(lineup: list[Target], duration: float, rounds: int) -> dict[str, Any]:
    per_round: dict[str, list[tuple[float, float, float | None]]] = {t.name: [] for t in lineup}
    tool = "wrk" if load.wrk_available() else "built-in"
    for _ in range(rounds):
        for target in lineup:
            before = load.cpu_seconds(target.process.pid) if target.process else None
            if tool == "wrk":
                result = await asyncio.to_thread(load.run_wrk, f"{target.url}/json", 32, duration)
            else:
                result = await load.closed_loop(f"{target.url}/json", 32, duration)
            cpu_per_request = None
            if target.process and before is not None:
                used = load.cpu_seconds(target.process.pid) - before
                cpu_per_request = used / max(1.0, result.requests_per_second * duration)
            per_round[target.name].append((result.requests_per_second, result.p99_s, cpu_per_request))
    out: dict[str, Any] = {"tool": tool, "connections": 32}
    for name, rows in per_round.items():
        cpu = [r[2] for r in rows if r[2] is not None]
        out[name] = {
            "requests_per_s": _median([r[0] for r in rows]),
            "p99_ms": _median([r[1] for r in rows]) * 1e3,
            "cpu_us_per_request": _median(cpu) * 1e6 if cpu else None,
        }
    return out


async def _costs(lineup: list[Target], variants: list[Target], duration: float, rounds: int) -> dict[str, Any]:
    """CPU per request of the defaults, of the defaults with each part off, of everything off and the bare proxy."""
    by_name = {target.name: target for target in lineup}
    measured = [by_name[SIDECAR], *variants, by_name[EVERYTHING_OFF], by_name[BARE]]
    rows = await _throughput(measured, duration, rounds)
    cpu = {target.name: rows[target.name]["cpu_us_per_request"] for target in measured}
    steps = [cpu[target.name] for target in measured[:-1]]  # defaults, each step, everything off
    drops = [before - after for before, after in zip(steps, steps[1:])]
    parts = dict(zip([*COST_STEPS, THE_REST], drops, strict=True))
    return {"connections": rows["connections"], "tool": rows["tool"], "cpu_us_per_request": cpu, "parts_us": parts,
            "beyond_bare_us": cpu[EVERYTHING_OFF] - cpu[BARE]}  # fmt: skip


async def _sse(lineup: list[Target], rounds: int, streams: int) -> dict[str, Any]:
    per_round: dict[str, list[dict[str, float]]] = {t.name: [] for t in lineup}
    path = f"/sse?events={SSE_EVENTS}&interval_ms=1"
    async with aiohttp.ClientSession() as client:
        for target in lineup:
            await load.read_stream(client, f"{target.url}{path}")
        for _ in range(rounds):
            for target in lineup:
                readings = [await load.read_stream(client, f"{target.url}{path}") for _ in range(streams)]
                delays = [d for r in readings for d in r.delays_s]
                per_round[target.name].append({
                    "first_event_p50_ms": _quantile([r.first_event_s for r in readings], 0.5) * 1e3,
                    "first_event_p99_ms": _quantile([r.first_event_s for r in readings], 0.99) * 1e3,
                    "chunk_delay_p50_ms": _quantile(delays, 0.5) * 1e3,
                    "chunk_delay_p99_ms": _quantile(delays, 0.99) * 1e3,
                    "reads_per_100_events": _median([r.reads * 100 / max(1, r.events) for r in readings]),
                })  # fmt: skip
    out = {name: {key: _median([row[key] for row in rows]) for key in rows[0]} for name, rows in per_round.items()}
    base = out["direct"]
    for row in out.values():
        row["added_first_event_p50_ms"] = row["first_event_p50_ms"] - base["first_event_p50_ms"]
        row["added_chunk_delay_p50_ms"] = row["chunk_delay_p50_ms"] - base["chunk_delay_p50_ms"]
    return out


async def _memory(target: Target, duration: float, rate: float = 500.0) -> dict[str, Any]:
    assert target.process is not None
    url = f"{target.url}/json"
    await load.steady_rate(url, rate, min(5.0, duration / 4))  # warm-up: pools, caches, first series
    start = load.rss_bytes(target.process.pid)
    started = time.perf_counter()
    done = await load.steady_rate(url, rate, duration)
    end = load.rss_bytes(target.process.pid)
    return {"target": target.name, "rate_per_s": rate, "duration_s": round(time.perf_counter() - started, 1),
            "requests": done, "rss_start_mb": start / 2**20, "rss_end_mb": end / 2**20,
            "growth_mb": (end - start) / 2**20}  # fmt: skip


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for other in ("direct", BARE, "nginx"):
        row: dict[str, float] = {}
        if "latency" in results and other in results["latency"]:
            row["latency_p50"] = results["latency"][SIDECAR]["p50_ms"] / results["latency"][other]["p50_ms"]
            row["latency_p99"] = results["latency"][SIDECAR]["p99_ms"] / results["latency"][other]["p99_ms"]
        if "throughput" in results and other in results["throughput"]:
            row["throughput"] = results["throughput"][SIDECAR]["requests_per_s"] / results["throughput"][other]["requests_per_s"]
        if row:
            out[f"sidecar/{other}"] = row
    return out


def goals(results: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    if "latency" in results:
        row = results["latency"][SIDECAR]
        checks["added_p50_ms"] = (row["added_p50_ms"], row["added_p50_ms"] <= GOALS["added_p50_ms"])
        checks["added_p99_ms"] = (row["added_p99_ms"], row["added_p99_ms"] <= GOALS["added_p99_ms"])
    if "throughput" in results and "sidecar/bare aiohttp proxy" in results.get("ratios", {}):
        ratio = results["ratios"]["sidecar/bare aiohttp proxy"]["throughput"]
        checks["throughput_vs_bare"] = (ratio, ratio >= GOALS["throughput_vs_bare"])
    if "sse" in results:
        row = results["sse"][SIDECAR]
        checks["sse_added_first_event_p50_ms"] = (row["added_first_event_p50_ms"], row["added_first_event_p50_ms"] <= GOALS["sse_added_first_event_p50_ms"])
        checks["sse_reads_per_100"] = (row["reads_per_100_events"], row["reads_per_100_events"] >= GOALS["sse_reads_per_100"])
    if "memory" in results:
        growth = results["memory"]["growth_mb"]
        checks["rss_growth_mb"] = (growth, growth <= GOALS["rss_growth_mb"])
    for row in results.get("audit", []):
        if row["fsync"] == "interval":
            rate = row["delivered_events_per_s"]
            checks["audit_events_per_s"] = (rate, rate >= GOALS["audit_events_per_s"])
    return {name: {"value": value, "goal": GOALS[name], "met": met} for name, (value, met) in checks.items()}


def format_table(results: dict[str, Any]) -> str:
    lines = []
    m = results["machine"]
    lines.append(f"machine: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['event_loop']}, Linux {m['kernel']}")
    lines.append(f"settings: {results['settings']['rounds']} interleaved rounds of {results['settings']['duration_s']:g} s; medians of rounds")
    if "latency" in results:
        lines += ["", "(a) 1 connection, ~200-byte JSON          p50 ms   p99 ms   +p50 ms  +p99 ms"]
        for name, row in results["latency"].items():
            lines.append(f"    {name:<36} {row['p50_ms']:7.3f}  {row['p99_ms']:7.3f}  {row['added_p50_ms']:7.3f}  {row['added_p99_ms']:7.3f}")
    if "throughput" in results:
        t = results["throughput"]
        lines += ["", f"(b) {t['connections']} connections ({t['tool']})               req/s    p99 ms   CPU us/req (proxy)"]
        for name in results["targets"]:
            row = t[name]
            cpu = f"{row['cpu_us_per_request']:8.1f}" if row["cpu_us_per_request"] is not None else "       -"
            lines.append(f"    {name:<36} {row['requests_per_s']:8.0f}  {row['p99_ms']:7.3f}  {cpu}")
    if "sse" in results:
        lines += ["", f"(c) SSE {SSE_EVENTS} events x 1 ms               1st ev p50  +p50   chunk p50  chunk p99  reads/100"]
        for name, row in results["sse"].items():
            lines.append(f"    {name:<36} {row['first_event_p50_ms']:8.3f} {row['added_first_event_p50_ms']:6.3f} "
                         f"{row['chunk_delay_p50_ms']:9.3f} {row['chunk_delay_p99_ms']:9.3f} {row['reads_per_100_events']:8.1f}")  # fmt: skip
    if "memory" in results:
        r = results["memory"]
        lines += ["", f"(d) {r['rate_per_s']:g} req/s for {r['duration_s']:g} s against {r['target']}: RSS {r['rss_start_mb']:.1f} -> "
                      f"{r['rss_end_mb']:.1f} MB ({r['growth_mb']:+.1f} MB), {r['requests']} requests"]  # fmt: skip
    for row in results.get("audit", []):
        lines += [f"(e) audit, fsync {row['fsync']:<8}: {row['spool_events_per_s']:9,.0f} events/s into the spool, "
                  f"{row['delivered_events_per_s']:9,.0f} events/s stored in Elasticsearch (stand-in, bulk of "
                  f"{row['batch_size']}), {row['events']} events"]  # fmt: skip
    if "costs" in results:
        c = results["costs"]
        cpu = c["cpu_us_per_request"]
        lines += ["", f"(f) where a request's CPU goes, {c['connections']} connections ({c['tool']}), "
                      "us per request; parts switched off in this order"]  # fmt: skip
        lines.append(f"    {SIDECAR:<72} {cpu[SIDECAR]:7.1f}")
        lines += [f"      {part:<70} {value:7.1f}" for part, value in c["parts_us"].items()]
        lines.append(f"    {EVERYTHING_OFF:<72} {cpu[EVERYTHING_OFF]:7.1f}")
        lines.append(f"      {'beyond the bare aiohttp proxy (limits, header rules, the Exchange)':<70} {c['beyond_bare_us']:7.1f}")
        lines.append(f"    {BARE:<72} {cpu[BARE]:7.1f}")
    if results.get("ratios"):
        lines += ["", "ratios (sidecar with defaults vs ...)"]
        for name, row in results["ratios"].items():
            lines.append("    " + name + ": " + ", ".join(f"{key} {value:.2f}x" for key, value in row.items()))
    if results.get("goals"):
        lines += ["", "goals"]
        for name, row in results["goals"].items():
            lines.append(f"    {name:<30} {row['value']:8.3f}  goal {row['goal']:g}  {'met' if row['met'] else 'MISSED'}")
    return "\n".join(lines)
