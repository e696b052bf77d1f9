"""A few-second run of `sidecar bench`, so the harness keeps working; the figures are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.tools import require_tool

pytestmark = pytest.mark.integration


def _bench(*args: str) -> tuple[dict, str]:
    """`sidecar bench --json` with `args`: (the results, what went to standard error)."""
    result = subprocess.run([sys.executable, "-m", "sidecar", "bench", "--json", *args],
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_bench_runs_every_scenario_against_every_target():
    require_tool("wrk")
    require_tool("nginx")
    results, stderr = _bench("--duration", "0.5", "--rounds", "1", "--memory-duration", "1")
    expected = ["direct", "sidecar (defaults)", "sidecar (everything off)", "bare aiohttp proxy", "nginx"]
    assert results["targets"] == expected
    assert results["throughput"]["tool"] == "wrk"
    for name in expected:
        assert results["latency"][name]["p50_ms"] > 0
        assert results["throughput"][name]["requests_per_s"] > 0
        assert results["sse"][name]["reads_per_100_events"] > 50
    assert results["memory"]["requests"] > 0
    assert set(results["ratios"]) == {"sidecar/direct", "sidecar/bare aiohttp proxy", "sidecar/nginx"}
    assert {"added_p50_ms", "throughput_vs_bare", "sse_reads_per_100", "rss_growth_mb"} <= results["goals"].keys()
    # The table still reaches the terminal, on standard error.
    assert "(b) 32 connections (wrk)" in stderr and "goals" in stderr


def test_bench_rejects_unknown_scenarios():
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "bench", "--scenarios", "latency,speed"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "unknown speed" in result.stderr


def test_bench_costs_splits_the_defaults_cpu_into_its_parts():
    require_tool("wrk")
    results, _ = _bench("--scenarios", "costs", "--duration", "0.5", "--rounds", "1")
    costs = results["costs"]
    cpu = costs["cpu_us_per_request"]
    assert set(cpu) == {"sidecar (defaults)", "defaults, parts 1-1 off", "defaults, parts 1-2 off",
                        "defaults, parts 1-3 off", "sidecar (everything off)", "bare aiohttp proxy"}  # fmt: skip
    assert all(value > 0 for value in cpu.values())
    parts = costs["parts_us"]
    assert list(parts) == ["span export (OTLP)", "audit trail", "GPU readings and attribution",
                           "the rest (metrics, rules, request ids, forwarded headers, health checks)"]  # fmt: skip
    assert parts["span export (OTLP)"] == pytest.approx(cpu["sidecar (defaults)"] - cpu["defaults, parts 1-1 off"])
    assert parts["audit trail"] == pytest.approx(cpu["defaults, parts 1-1 off"] - cpu["defaults, parts 1-2 off"])
    assert sum(parts.values()) + cpu["sidecar (everything off)"] == pytest.approx(cpu["sidecar (defaults)"])
    assert costs["beyond_bare_us"] == pytest.approx(cpu["sidecar (everything off)"] - cpu["bare aiohttp proxy"])
