"""What the shipped rules count as bad in a running sidecar, in real time: requests the sidecar
refuses because of the request, and a lone failure just after start, page nobody; an outage
under steady traffic pages."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from sidecar.exchange import Exchange, Outcome
from sidecar.rules.alert import AlertState
from sidecar.rules.engine import RuleEngine
from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.tools import closed_port, wait_for
from tests.support.upstream import TestUpstream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

GZIP_THEN_CHUNKED = (
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)
PAGE_WITHIN_S = 60.0
"""docs/rules.md: a total outage under steady traffic pages within a minute."""
MIN_BAD_EVENTS = 5
"""The shipped availability SLO's min_bad_events."""


def engine_of(running: RunningSidecar) -> RuleEngine:
    engine = running.sidecar.rule_engine
    assert engine is not None
    return engine


def active_alerts(engine: RuleEngine) -> list[tuple[str, str, str]]:
    return [(a.name, a.labels.get("severity", ""), a.state.value) for a in engine.alerts()]


async def evaluations_pass(engine: RuleEngine, count: int) -> None:
    """Wait for `count` more evaluations: every observation made before is in them."""
    target = engine.evaluations + count
    await wait_for(lambda: engine.evaluations >= target, timeout=30, what=f"{count} rule evaluations")


async def refused_by_the_sidecar(port: int) -> bytes:
    """Send a request with a transfer coding the sidecar refuses; its answer (it closes the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(GZIP_THEN_CHUNKED)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_300_requests_the_sidecar_answers_501_fire_nothing(
    make_sidecar: SidecarFactory, upstream: TestUpstream
) -> None:
    running = await make_sidecar(upstream.url)
    engine = engine_of(running)
    assert running.sidecar.proxy_address is not None
    for _ in range(300):
        reply = await refused_by_the_sidecar(running.sidecar.proxy_address.port)
        assert reply.startswith(b"HTTP/1.1 501 "), reply[:80]
    await wait_for(lambda: len(running.exchanges) == 300, timeout=30, what="300 exchanges")
    assert {(e.status, e.outcome, e.error_type) for e in running.exchanges} == {
        (501, Outcome.REJECTED, "unsupported_transfer_coding")
    }
    await evaluations_pass(engine, 3)

    assert active_alerts(engine) == []
    (availability,) = [s for s in engine.slo_status() if s.name == "availability"]
    assert (availability.total, availability.bad) == (300, 0), "refusals are requests, none of them bad"
    (error_rate,) = [r for r in engine.rule_states() if r.name == "SidecarHighErrorRate"]
    assert [value for _, value in error_rate.values] == [0.0]


async def test_a_single_failure_right_after_start_fires_nothing(make_sidecar: SidecarFactory) -> None:
    running = await make_sidecar(f"http://127.0.0.1:{closed_port()}")
    engine = engine_of(running)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.url}/v1/models") as response:
            assert response.status == 502
    await wait_for(lambda: len(running.exchanges) == 1, what="the failed request's exchange")
    await evaluations_pass(engine, 3)

    assert active_alerts(engine) == []
    (availability,) = [s for s in engine.slo_status() if s.name == "availability"]
    assert (availability.total, availability.bad) == (1, 1), "the failure counts against the budget"
    assert availability.burn_rates[300.0] == pytest.approx(1000.0), "a 1000x burn, from one request"


async def steady_traffic(url: str, stop: asyncio.Event) -> None:
    """A request every 20 ms until `stop`, whatever the answers."""
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(f"{url}/echo") as response:
                    await response.read()
            await asyncio.sleep(0.02)


def is_failure(exchange: Exchange) -> bool:
    return exchange.status >= 500


async def test_an_outage_under_steady_traffic_pages_within_the_documented_time(make_sidecar: SidecarFactory) -> None:
    model_server = TestUpstream()
    await model_server.start()
    running = await make_sidecar(model_server.url)
    engine = engine_of(running)
    stop = asyncio.Event()
    traffic = asyncio.create_task(steady_traffic(running.url, stop))
    try:
        await wait_for(lambda: len(running.exchanges) >= 100, timeout=30, what="100 answered requests")
        await evaluations_pass(engine, 2)
        assert active_alerts(engine) == [], "healthy traffic alerts nobody"
        await model_server.stop()  # the model server is gone: every request fails from here on

        def paged() -> bool:
            return any(a.name == "SloAvailabilityErrorBudgetBurn" and a.labels["severity"] == "page"
                       and a.state is AlertState.FIRING for a in engine.alerts())  # fmt: skip

        await wait_for(paged, timeout=PAGE_WITHIN_S + 5, what="the page alert")
    finally:
        stop.set()
        await traffic
        await model_server.stop()

    (page,) = [a for a in engine.alerts() if a.labels.get("severity") == "page"]
    assert page.fired_at is not None
    failures = sorted(e.started_at for e in running.exchanges if is_failure(e))
    assert page.fired_at - failures[0] <= PAGE_WITHIN_S + 1.0  # + one evaluation interval
    before = sum(1 for at in failures if at <= page.fired_at)
    assert before >= MIN_BAD_EVENTS, f"paged after {before} failures"
