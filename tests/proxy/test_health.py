"""The active health prober's state machine, and readiness following it."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sidecar.exchange import HealthState
from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.tools import closed_port, wait_for
from tests.support.upstream import TestUpstream


async def ready(sidecar: RunningSidecar) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.admin_url}/-/ready") as response:
            return response.status, await response.json()


async def health_state_metric(sidecar: RunningSidecar) -> str:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.admin_url}/metrics") as response:
            text = await response.text()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "sidecar_upstream_health"]
    (state,) = [s.labels["sidecar_upstream_health"] for s in family.samples if s.value == 1]
    return state


async def manual_prober_sidecar(make_sidecar: SidecarFactory, url: str, down_after: int = 3, up_after: int = 2) -> RunningSidecar:
    """Health checks on, but probing only when the test says (the interval is an hour)."""
    sidecar = await make_sidecar(
        url,
        upstream__health__enabled=True,
        upstream__health__interval="1h",
        upstream__health__unhealthy_threshold=down_after,
        upstream__health__healthy_threshold=up_after,
    )
    await wait_for(lambda: len(sidecar.health) == 1, what="the probe made at start")
    return sidecar


async def test_down_after_n_failures_up_after_m_successes_and_ready_follows(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await manual_prober_sidecar(make_sidecar, upstream.url, down_after=3, up_after=2)
    prober = sidecar.sidecar.prober
    assert prober.state is HealthState.UP
    assert (await ready(sidecar))[0] == 200
    assert await health_state_metric(sidecar) == "up"

    upstream.healthy = False
    for expected in (HealthState.UP, HealthState.UP, HealthState.DOWN):
        result = await prober.probe()
        assert (result.ok, result.status, result.state) == (False, 503, expected)
    assert result.changed and result.consecutive_failures == 3
    status, body = await ready(sidecar)
    assert status == 503
    assert "upstream down" in body["checks"]["upstream"] and "503" in body["checks"]["upstream"]
    assert await health_state_metric(sidecar) == "down"

    upstream.healthy = True
    assert (await prober.probe()).state is HealthState.DOWN  # one success is not enough
    result = await prober.probe()
    assert (result.state, result.changed) == (HealthState.UP, True)
    assert (await ready(sidecar))[0] == 200
    assert await health_state_metric(sidecar) == "up"


async def test_a_failure_streak_broken_by_a_success_starts_over(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await manual_prober_sidecar(make_sidecar, upstream.url, down_after=3)
    prober = sidecar.sidecar.prober
    upstream.healthy = False
    await prober.probe()
    await prober.probe()
    upstream.healthy = True
    await prober.probe()
    upstream.healthy = False
    await prober.probe()
    result = await prober.probe()
    assert (result.state, result.consecutive_failures) == (HealthState.UP, 2)


async def test_unreachable_upstream_is_not_ready_from_the_start(make_sidecar: SidecarFactory):
    sidecar = await manual_prober_sidecar(make_sidecar, f"http://127.0.0.1:{closed_port()}", down_after=1)
    (result,) = sidecar.health
    assert (result.ok, result.state) == (False, HealthState.DOWN)
    assert result.error.startswith("connect failed")
    status, body = await ready(sidecar)
    assert status == 503 and "connect failed" in body["checks"]["upstream"]


async def test_probe_timeout_counts_as_failure(upstream: TestUpstream, make_sidecar: SidecarFactory):
    upstream.health_delay = 1.0
    sidecar = await make_sidecar(
        upstream.url,
        upstream__health__enabled=True,
        upstream__health__interval="1h",
        upstream__health__timeout="200ms",
        upstream__health__unhealthy_threshold=1,
    )
    await wait_for(lambda: len(sidecar.health) == 1, what="the first probe")
    assert sidecar.health[0].error == "timed out after 0.2s"
    assert sidecar.health[0].state is HealthState.DOWN


async def test_prober_runs_on_its_interval(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(
        upstream.url,
        upstream__health__enabled=True,
        upstream__health__interval="50ms",
        upstream__health__timeout="50ms",
        upstream__health__unhealthy_threshold=2,
        upstream__health__healthy_threshold=2,
    )
    await wait_for(lambda: sidecar.sidecar.prober.state is HealthState.UP, what="up")
    upstream.healthy = False
    await wait_for(lambda: sidecar.sidecar.prober.state is HealthState.DOWN, timeout=2, what="down")
    assert (await ready(sidecar))[0] == 503
    upstream.healthy = True
    await wait_for(lambda: sidecar.sidecar.prober.state is HealthState.UP, timeout=2, what="up again")
    assert (await ready(sidecar))[0] == 200


async def test_health_checks_disabled_leave_readiness_to_the_other_checks(upstream: TestUpstream, make_sidecar: SidecarFactory):
    upstream.healthy = False
    sidecar = await make_sidecar(upstream.url)  # tests default to health checks off
    status, body = await ready(sidecar)
    assert status == 200
    assert body["checks"] == {"upstream": "ok", "data_dir": "ok", "shutdown": "ok", "audit": "ok"}
