"""Rules in a running sidecar, in real time: an error-rate alert through Debian's Alertmanager,
a restart in the middle of an incident, and the SLO report against the admin port and state file."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.exchange import Exchange, HealthResult, HealthState
from sidecar.rules.engine import RuleEngine
from sidecar.rules.spec import effective_rules
from sidecar.rules.state import StateFile
from tests.conftest import RunningSidecar, SidecarFactory, sidecar_config
from tests.support.alertmanager import alertmanager_route, start_alertmanager, wait_ready
from tests.support.tools import serve_on_loopback, wait_for
from tests.support.upstream import TestUpstream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ERROR_RULE = {
    "name": "TestErrorRate", "signal": "error_ratio", "window": "10s", "op": ">", "threshold": 0.05,
    "for": "2s", "keep_firing_for": "1s", "severity": "critical",
    "annotations": {"summary": "{{ $value | humanizePercentage }} of requests failing"},
}  # fmt: skip


class Hook:
    """A webhook receiver that keeps every payload it is sent."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    async def receive(self, request: web.Request) -> web.Response:
        self.payloads.append(await request.json())
        return web.Response()

    def with_status(self, status: str, alertname: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.payloads if p["status"] == status
                and (alertname is None or p["groupLabels"].get("alertname") == alertname)]  # fmt: skip


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.receive)
    runner, port = await serve_on_loopback(app)
    yield receiver, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


async def alerts_view(running: RunningSidecar) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.admin_url}/-/alerts") as response:
            assert response.status == 200
            return await response.json()


def alert_named(view: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((a for a in view["alerts"] if a["labels"]["alertname"] == name), None)


def audit_records(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((data_dir / "audit" / "events").glob("*.jsonl"))
            for line in path.read_text().splitlines()]  # fmt: skip


def seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def send_traffic(
    running: RunningSidecar, stop: asyncio.Event, error_every: int, errors_at: list[float] | None = None
) -> None:
    """A request every 20 ms; every `error_every`-th is answered 500 by the upstream (0: none).
    The wall-clock time each 500 arrived goes to `errors_at`."""
    sent = 0
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            sent += 1
            path = "/status/500" if error_every and sent % error_every == 0 else "/echo"
            async with client.get(f"{running.url}{path}") as response:
                await response.read()
            if response.status == 500 and errors_at is not None:
                errors_at.append(time.time())
            await asyncio.sleep(0.02)


async def test_error_rate_alert_fires_after_for_and_resolves_through_alertmanager(
    make_sidecar: SidecarFactory, upstream: TestUpstream, hook: tuple[Hook, str], tmp_path: Path
) -> None:
    receiver, hook_url = hook
    process, am_url, log = await start_alertmanager(tmp_path / "am", alertmanager_route("ops", hook_url, ["alertname"]))
    try:
        await wait_ready(process, am_url, log)
        running = await make_sidecar(upstream.url, rules__defaults=False, rules__alerts=[ERROR_RULE],
                                     rules__alertmanagers=[{"url": am_url}])  # fmt: skip
        errors_on, errors_off = asyncio.Event(), asyncio.Event()
        errors_at: list[float] = []
        traffic = asyncio.create_task(send_traffic(running, errors_on, error_every=10, errors_at=errors_at))
        try:
            # Pending first, then firing within one evaluation interval of `for` running out.
            pending: dict[str, Any] | None = None
            deadline = time.monotonic() + 20
            while (alert := alert_named(await alerts_view(running), "TestErrorRate")) is None or alert["state"] != "firing":
                if alert is not None and alert["state"] == "pending":
                    pending = alert
                assert time.monotonic() < deadline, "the alert did not fire within 20 s"
                await asyncio.sleep(0.1)
            assert pending is not None, "the alert fired without being pending first"
            # The fifth 500 (the rule's min_bad_events; the window holds 50 requests by then, over its
            # min_events) makes the ratio 10% with enough evidence: the condition holds from then on.
            enough = errors_at[4]
            late = seconds(alert["firedAt"]) - (enough + 2.0)
            print(f"fired {late * 1000:.0f} ms after `for` elapsed (pending {seconds(alert['activeAt']) - enough:.3f} s "
                  f"after the fifth error)")
            assert -0.05 <= late < 1.05, f"fired {late:.3f} s after `for` elapsed"
            assert alert["activeAt"] == pending["activeAt"]
            assert re.fullmatch(r"\d+(\.\d+)?% of requests failing", alert["annotations"]["summary"])

            await wait_for(lambda: bool(receiver.with_status("firing")), timeout=10, what="Alertmanager's firing webhook")
            (forwarded,) = receiver.with_status("firing")[0]["alerts"]
            assert forwarded["labels"] == alert["labels"]
            assert forwarded["labels"]["severity"] == "critical" and forwarded["labels"]["instance"]
            assert forwarded["annotations"]["summary"].endswith("% of requests failing")
            assert forwarded["fingerprint"] == alert["fingerprint"]
            assert forwarded["startsAt"].startswith(alert["firedAt"][:19])
        finally:
            errors_on.set()
            await traffic
        # Recovery: only successes; the errors leave the 10 s window, then keep_firing_for runs out.
        healthy = asyncio.create_task(send_traffic(running, errors_off, error_every=0))
        try:
            await wait_for(lambda: bool(receiver.with_status("resolved")), timeout=40,
                           what="Alertmanager's resolved webhook")  # fmt: skip
        finally:
            errors_off.set()
            await healthy
        resolved = alert_named(await alerts_view(running), "TestErrorRate")
        assert resolved is not None and resolved["state"] == "resolved"
        assert seconds(resolved["resolvedAt"]) > seconds(resolved["firedAt"])
    finally:
        process.terminate()
        await process.wait()

    await running.sidecar.stop()
    records = [r for r in audit_records(tmp_path / "data") if r["event"]["kind"] == "alert"]
    assert [r["event"]["action"] for r in records] == ["alert-firing", "alert-resolved"]
    assert all(r["rule"]["name"] == "TestErrorRate" and r["sidecar"]["alert"]["fingerprint"] == alert["fingerprint"]
               for r in records)  # fmt: skip


async def test_a_restart_mid_incident_keeps_the_alert_and_does_not_notify_it_again(
    make_sidecar: SidecarFactory, upstream: TestUpstream, hook: tuple[Hook, str], tmp_path: Path
) -> None:
    receiver, hook_url = hook
    rule = {**ERROR_RULE, "window": "5m", "for": "0s", "min_events": 10}  # the 10 requests below
    settings = {
        "rules__alerts": [rule],
        "rules__webhooks": [{"name": "ops", "url": hook_url, "group_wait": "0s", "group_interval": "1s"}],
    }
    first = await make_sidecar(upstream.url, **settings)
    async with aiohttp.ClientSession() as client:
        for index in range(10):
            async with client.get(f"{first.url}{'/status/500' if index % 2 else '/echo'}") as response:
                await response.read()
    await wait_for(lambda: bool(receiver.with_status("firing", "TestErrorRate")), timeout=10, what="the first notification")
    before = alert_named(await alerts_view(first), "TestErrorRate")
    assert before is not None and before["state"] == "firing"
    await first.sidecar.stop()

    second = await make_sidecar(upstream.url, **settings)
    after = alert_named(await alerts_view(second), "TestErrorRate")
    assert after is not None and after["state"] == "firing", "restored before the first evaluation"
    await asyncio.sleep(3.0)  # three evaluations and group flushes
    after = alert_named(await alerts_view(second), "TestErrorRate")
    assert after is not None
    assert (after["state"], after["activeAt"], after["firedAt"]) == ("firing", before["activeAt"], before["firedAt"])
    assert len(receiver.with_status("firing", "TestErrorRate")) == 1, "notified again as new after the restart"

    # The SLO report, live from the admin port and from the state file once stopped.
    code, out = await sidecar_command("slo", "report", "--admin", second.admin_url, "--json")
    assert code == 0, out
    (availability,) = [s for s in json.loads(out) if s["name"] == "availability"]
    assert (availability["total"], availability["bad"]) == (10, 5), "the budget survived the restart"
    await second.sidecar.stop()
    code, out = await sidecar_command("slo", "report", "--state", str(tmp_path / "data" / "rules" / "state.json"))
    assert code == 0, out
    assert "SLO availability (availability): objective 99.9% over 30d" in out and "10 requests, 5 bad" in out

    firing_records = [r for r in audit_records(tmp_path / "data")
                      if r["event"]["action"] == "alert-firing" and r["rule"]["name"] == "TestErrorRate"]  # fmt: skip
    assert len(firing_records) == 1, "the restart recorded the alert as firing anew"


async def test_requests_served_before_the_rules_runner_starts_are_counted_with_the_restored_state(
    make_sidecar: SidecarFactory, upstream: TestUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        for index in range(10):
            async with client.get(f"{first.url}{'/status/500' if index % 2 else '/echo'}") as response:
                await response.read()
    await wait_for(lambda: len(first.exchanges) == 10, what="the first sidecar's exchanges")
    await first.sidecar.stop()  # saves the rules state: 10 requests, 5 bad

    # The proxy listens before the rules runner starts: a request served in between must be counted
    # on top of the restored windows, not replaced by them.
    start_rules = Sidecar._start_rules

    async def start_rules_after_a_request(sidecar: Sidecar, engine: RuleEngine) -> None:
        served: list[Exchange] = []
        sidecar.exchanges.subscribe("early", served.append)
        assert sidecar.proxy_address is not None
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{sidecar.proxy_address.port}/status/500") as response:
                await response.read()
        await wait_for(lambda: bool(served), what="the early request's exchange")
        await start_rules(sidecar, engine)

    monkeypatch.setattr(Sidecar, "_start_rules", start_rules_after_a_request)
    second = await make_sidecar(upstream.url)
    assert second.sidecar.rule_engine is not None
    (availability,) = [s for s in second.sidecar.rule_engine.slo_status() if s.name == "availability"]
    assert (availability.total, availability.bad) == (11, 6)


async def test_a_notification_log_that_cannot_be_restored_is_reported_as_such(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {
        "rules__alerts": [{"name": "Down", "signal": "upstream_consecutive_failures", "op": ">=", "threshold": 3}],
        "rules__webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/hook"}],
    }
    config = sidecar_config(upstream.url, tmp_path / "data", {k.replace("__", "."): v for k, v in settings.items()})
    engine = RuleEngine(effective_rules(config.rules), instance="node-1")
    engine.observe_health(HealthResult(time.time(), False, None, 0.0, "refused", HealthState.DOWN, 0, 5, True))
    engine.evaluate()
    broken_log = {"version": 1, "webhooks": {"ops": {"log": {"group": {"timestamp": "not a time"}}}}}
    StateFile(tmp_path / "data" / "rules" / "state.json").save({"engine": engine.dump_state(), "notify": broken_log})

    with caplog.at_level(logging.INFO, logger="sidecar.rules.runner"):
        running = await make_sidecar(upstream.url, **settings)
    assert running.sidecar.rule_engine is not None
    [alert] = [a for a in running.sidecar.rule_engine.alerts() if a.name == "Down"]
    [saved] = [a for a in engine.alerts() if a.name == "Down"]
    assert alert.active_at == saved.active_at and alert.fired_at == saved.fired_at
    messages = [r.getMessage() for r in caplog.records if r.name == "sidecar.rules.runner"]
    assert "rules state restored" in messages
    assert "webhook notification log not restored: alerts already notified may be notified again" in messages
    assert not any("empty windows" in message for message in messages), messages


async def sidecar_command(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode()
