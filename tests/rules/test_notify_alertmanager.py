"""Alerts to Alertmanager's API v2: what Prometheus would send and when, queueing, delivery, metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import RulesConfig
from sidecar.rules.alert import Alert, AlertState
from sidecar.rules.notify import Notifier
from sidecar.rules.notify.payload import fingerprinted, rfc3339_millis
from sidecar.rules.notify.resend import ResendSchedule
from sidecar.rules.notify_metrics import NotifierCollector
from tests.support.clock import Clock
from tests.support.tools import closed_port, serve_on_loopback, wait_for

EXTERNAL_URL = "http://sidecar.example:9180"
RESEND = 60.0


def alert(
    name: str = "GpuTemperatureHigh",
    *,
    state: AlertState = AlertState.FIRING,
    active_at: float = 1_700_000_000.0,
    fired_at: float | None = 1_700_000_060.0,
    resolved_at: float | None = None,
    **labels: str,
) -> Alert:
    return Alert(
        name=name,
        labels={"alertname": name, "severity": "warning", "instance": "node-7:8080", **labels},
        annotations={"summary": f"{name} on {labels.get('gpu', 'all GPUs')}"},
        state=state,
        value=91.0,
        active_at=active_at,
        fired_at=None if state is AlertState.PENDING else fired_at,
        resolved_at=resolved_at,
    )


def rules_config(*urls: str, timeout: float = 2.0, **settings: Any) -> RulesConfig:
    return RulesConfig.model_validate(
        {"alertmanagers": [{"url": url, "timeout": timeout} for url in urls], "resend_delay": RESEND, **settings}
    )


class FakeAlertmanager:
    """An Alertmanager stand-in on 127.0.0.1: records every POST to /api/v2/alerts."""

    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.status = 200
        self.delay = 0.0
        self.hang = False
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [item for post in self.posts for item in post]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self.receive)
        self._runner, self.port = await serve_on_loopback(app)

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        body = await request.json()
        if self.hang:
            await self._release.wait()
        await asyncio.sleep(self.delay)
        self.posts.append(body)
        if self.status != 200:
            return web.json_response({"code": self.status, "message": "start time must be before end time"},
                                     status=self.status)  # fmt: skip
        return web.Response(status=200)


@pytest.fixture
async def alertmanager() -> AsyncIterator[FakeAlertmanager]:
    server = FakeAlertmanager()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def second_alertmanager() -> AsyncIterator[FakeAlertmanager]:
    server = FakeAlertmanager()
    await server.start()
    yield server
    await server.stop()


NotifierFactory = Callable[..., Awaitable[Notifier]]


@pytest.fixture
async def make_notifier() -> AsyncIterator[NotifierFactory]:
    started: list[Notifier] = []

    async def factory(config: RulesConfig, *, start: bool = True, clock: Clock | None = None) -> Notifier:
        notifier = Notifier(config, external_url=EXTERNAL_URL, clock=clock or Clock())
        if start:
            await notifier.start()
        started.append(notifier)
        return notifier

    yield factory
    for notifier in started:
        await notifier.stop(timeout=0.5)


# --- what is sent, and when (Prometheus's needsSending / sendAlerts) ------------------------------


def test_pending_alerts_are_never_sent():
    schedule = ResendSchedule(RESEND, EXTERNAL_URL)
    assert schedule.due(fingerprinted([alert(state=AlertState.PENDING)]), now=1_700_000_030.0, interval_s=1.0) == []


def test_firing_alert_is_sent_as_prometheus_sends_it():
    schedule = ResendSchedule(RESEND, EXTERNAL_URL)
    now = 1_700_000_061.5
    (sent,) = schedule.due(fingerprinted([alert(fired_at=1_700_000_060.123)]), now=now, interval_s=1.0)

    assert sent == {
        "labels": {"alertname": "GpuTemperatureHigh", "instance": "node-7:8080", "severity": "warning"},
        "annotations": {"summary": "GpuTemperatureHigh on all GPUs"},
        "startsAt": "2023-11-14T22:14:20.123Z",  # FiredAt, milliseconds, UTC
        "endsAt": rfc3339_millis(now + 4 * RESEND),  # ValidUntil: 4 x max(resend_delay, interval)
        "generatorURL": "http://sidecar.example:9180/?alert=GpuTemperatureHigh",
    }
    assert sent["endsAt"] == "2023-11-14T22:18:21.500Z"


def test_valid_until_follows_the_evaluation_interval_when_it_is_longer():
    schedule = ResendSchedule(RESEND, EXTERNAL_URL)
    now = 1_700_000_100.0
    (sent,) = schedule.due(fingerprinted([alert()]), now=now, interval_s=90.0)
    assert sent["endsAt"] == rfc3339_millis(now + 4 * 90.0)


def test_generator_url_encodes_the_alertname():
    schedule = ResendSchedule(RESEND, "http://h:9180/status/")
    (sent,) = schedule.due(fingerprinted([alert("Slo burn/page & more")]), now=1_700_000_100.0, interval_s=1.0)
    assert sent["generatorURL"] == "http://h:9180/status/?alert=Slo%20burn%2Fpage%20%26%20more"


def test_firing_alert_is_resent_once_resend_delay_has_passed_strictly():
    schedule = ResendSchedule(RESEND, EXTERNAL_URL)
    firing = [alert()]
    t0 = 1_700_000_100.0
    assert len(schedule.due(fingerprinted(firing), t0, 1.0)) == 1
    assert schedule.due(fingerprinted(firing), t0 + 1, 1.0) == []
    assert schedule.due(fingerprinted(firing), t0 + 59, 1.0) == []
    # Prometheus: LastSentAt.Add(resendDelay).Before(ts), so not at exactly resend_delay.
    assert schedule.due(fingerprinted(firing), t0 + RESEND, 1.0) == []
    assert len(schedule.due(fingerprinted(firing), t0 + RESEND + 1, 1.0)) == 1
    assert schedule.due(fingerprinted(firing), t0 + RESEND + 2, 1.0) == []


def test_resolution_is_sent_at_once_then_resent_while_the_engine_keeps_the_alert():
    schedule = ResendSchedule(RESEND, EXTERNAL_URL)
    t0 = 1_700_000_100.0
    assert len(schedule.due(fingerprinted([alert()]), t0, 1.0)) == 1
    resolved = [alert(state=AlertState.RESOLVED, resolved_at=t0 + 10)]

    (sent,) = schedule.due(fingerprinted(resolved), t0 + 10, 1.0)
    assert sent["endsAt"] == rfc3339_millis(t0 + 10)  # ResolvedAt, not ValidUntil
    assert sent["startsAt"] == rfc3339_millis(1_700_000_060.0)
    assert schedule.due(fingerprinted(resolved), t0 + 11, 1.0) == []
    assert schedule.due(fingerprinted(resolved), t0 + 70, 1.0) == []
    (again,) = schedule.due(fingerprinted(resolved), t0 + 71, 1.0)
    assert again["endsAt"] == rfc3339_millis(t0 + 10)


def test_alert_that_fires_again_after_resolving_is_sent_at_once():
    schedule = ResendSchedule(RESEND, EXTERNAL_URL)
    t0 = 1_700_000_100.0
    schedule.due(fingerprinted([alert()]), t0, 1.0)
    schedule.due(fingerprinted([alert(state=AlertState.RESOLVED, resolved_at=t0 + 5)]), t0 + 5, 1.0)
    again = alert(active_at=t0 + 10, fired_at=t0 + 10)
    (sent,) = schedule.due(fingerprinted([again]), t0 + 10, 1.0)
    assert sent["startsAt"] == rfc3339_millis(t0 + 10)


def test_schedule_survives_a_restart_through_the_notifier_state():
    first = Notifier(rules_config("http://127.0.0.1:9"), external_url=EXTERNAL_URL)
    t0 = 1_700_000_100.0
    first.notify([alert()], t0, 1.0)
    saved = json.loads(json.dumps(first.dump_state()))

    second = Notifier(rules_config("http://127.0.0.1:9"), external_url=EXTERNAL_URL)
    second.load_state(saved)
    second.notify([alert()], t0 + 30, 1.0)
    assert second.stats[0].queue_length == 0
    second.notify([alert()], t0 + RESEND + 1, 1.0)
    assert second.stats[0].queue_length == 1


def test_bad_state_is_refused_with_the_key_named():
    notifier = Notifier(rules_config("http://127.0.0.1:9"), external_url=EXTERNAL_URL)
    t0 = 1_700_000_100.0
    notifier.notify([alert()], t0, 1.0)
    good = notifier.dump_state()
    fingerprint = next(iter(good["alertmanager"]["sent"]))

    bad = json.loads(json.dumps(good))
    bad["alertmanager"]["sent"][fingerprint]["last_sent_at"] = "yesterday"
    with pytest.raises(ValueError, match=rf"alertmanager\.sent\.{fingerprint}\.last_sent_at.*'yesterday'"):
        notifier.load_state(bad)
    with pytest.raises(ValueError, match="expected version 1"):
        notifier.load_state({"version": 99})
    # Nothing was half loaded: the schedule still knows the alert was just sent.
    notifier.notify([alert()], t0 + 1, 1.0)
    assert notifier.stats[0].queue_length == 1


# --- delivery -------------------------------------------------------------------------------------


async def test_alerts_are_posted_to_api_v2(alertmanager: FakeAlertmanager, make_notifier: NotifierFactory):
    notifier = await make_notifier(rules_config(alertmanager.url))
    t0 = 1_700_000_100.0
    notifier.notify([alert(gpu="0"), alert(gpu="1"), alert("Other", state=AlertState.PENDING)], t0, 1.0)
    await wait_for(lambda: notifier.stats[0].sent == 1, what="two alerts at the Alertmanager")

    assert [a["labels"]["gpu"] for a in alertmanager.alerts] == ["0", "1"]
    assert len(alertmanager.posts) == 1
    stats = notifier.stats[0]
    assert (stats.receiver, stats.sent, stats.failed, stats.alerts_sent) == (
        f"alertmanager:{alertmanager.url}", 1, 0, 2)  # fmt: skip


async def test_batches_hold_at_most_64_alerts(alertmanager: FakeAlertmanager, make_notifier: NotifierFactory):
    notifier = await make_notifier(rules_config(alertmanager.url), start=False)
    notifier.notify([alert(gpu=str(i)) for i in range(130)], 1_700_000_100.0, 1.0)
    await notifier.start()
    await wait_for(lambda: len(alertmanager.alerts) == 130, what="130 alerts")
    assert [len(post) for post in alertmanager.posts] == [64, 64, 2]


async def test_full_queue_drops_the_oldest_and_counts_them(
    alertmanager: FakeAlertmanager, make_notifier: NotifierFactory
):
    notifier = await make_notifier(rules_config(alertmanager.url, queue_size=10), start=False)
    t0 = 1_700_000_100.0
    notifier.notify([alert(gpu=str(i)) for i in range(15)], t0, 1.0)  # a batch over capacity keeps its newest
    assert (notifier.stats[0].queue_length, notifier.stats[0].dropped) == (10, 5)
    notifier.notify([alert(gpu=str(i)) for i in range(15, 18)], t0 + 1, 1.0)
    assert (notifier.stats[0].queue_length, notifier.stats[0].dropped) == (10, 8)

    await notifier.start()
    await wait_for(lambda: len(alertmanager.alerts) == 10, what="the ten queued alerts")
    assert [a["labels"]["gpu"] for a in alertmanager.alerts] == [str(i) for i in range(8, 18)]


async def test_failed_post_is_counted_and_not_retried(alertmanager: FakeAlertmanager, make_notifier: NotifierFactory):
    alertmanager.status = 400
    notifier = await make_notifier(rules_config(alertmanager.url))
    t0 = 1_700_000_100.0
    notifier.notify([alert()], t0, 1.0)
    await wait_for(lambda: notifier.stats[0].failed == 1, what="a failed POST")
    await asyncio.sleep(0.2)
    assert len(alertmanager.posts) == 1

    alertmanager.status = 200
    notifier.notify([alert()], t0 + RESEND + 1, 1.0)  # the next resend carries it
    await wait_for(lambda: notifier.stats[0].sent == 1, what="the resend")
    assert len(alertmanager.posts) == 2


async def test_every_alertmanager_gets_every_alert_in_parallel(
    alertmanager: FakeAlertmanager, second_alertmanager: FakeAlertmanager, make_notifier: NotifierFactory
):
    alertmanager.delay = 1.5
    notifier = await make_notifier(rules_config(alertmanager.url, second_alertmanager.url))
    notifier.notify([alert(gpu="0"), alert(gpu="1")], 1_700_000_100.0, 1.0)

    # The fast one is not held back by the slow one.
    await wait_for(lambda: len(second_alertmanager.alerts) == 2, timeout=1.0, what="the fast Alertmanager")
    assert alertmanager.posts == []
    await wait_for(lambda: len(alertmanager.alerts) == 2, what="the slow Alertmanager")
    assert alertmanager.posts == second_alertmanager.posts


@pytest.mark.parametrize("failure", ["hangs", "is down"])
async def test_a_receiver_that_fails_never_blocks_notify(
    failure: str, alertmanager: FakeAlertmanager, second_alertmanager: FakeAlertmanager,
    make_notifier: NotifierFactory,
):  # fmt: skip
    if failure == "hangs":
        alertmanager.hang = True
        bad_url = alertmanager.url
    else:
        bad_url = f"http://127.0.0.1:{closed_port()}"
    # A notify() that waited on the receiver would take the whole timeout.
    notifier = await make_notifier(rules_config(bad_url, second_alertmanager.url, timeout=30.0))
    alerts = [alert(gpu=str(i)) for i in range(200)]
    t0 = 1_700_000_100.0

    slowest = 0.0
    for tick in range(5):
        started = time.perf_counter()
        notifier.notify(alerts, t0 + tick * (RESEND + 1), 1.0)
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0.01)
    assert slowest < 0.5, f"notify() took {slowest * 1000:.1f} ms"

    await wait_for(lambda: len(second_alertmanager.alerts) == 1000, what="the healthy Alertmanager's alerts")
    if failure == "hangs":
        assert notifier.stats[0].queue_length == 1000 - 64  # waiting behind the POST that hangs
    else:
        await wait_for(lambda: notifier.stats[0].failed >= 16 and notifier.stats[0].queue_length == 0,
                       what="a failure per batch, at least 1000 / 64")  # fmt: skip
    assert notifier.stats[0].sent == 0


async def test_stop_gives_up_on_a_hanging_receiver_within_its_timeout(
    alertmanager: FakeAlertmanager, make_notifier: NotifierFactory
):
    alertmanager.hang = True
    notifier = await make_notifier(rules_config(alertmanager.url, timeout=30.0))
    notifier.notify([alert(gpu=str(i)) for i in range(100)], 1_700_000_100.0, 1.0)
    await asyncio.sleep(0.05)

    started = time.perf_counter()
    await notifier.stop(timeout=0.2)
    assert time.perf_counter() - started < 2.0
    # The batch in flight counts as a failed POST, the rest as dropped alerts.
    assert (notifier.stats[0].failed, notifier.stats[0].dropped) == (1, 100 - 64)


async def test_stop_flushes_what_is_queued(alertmanager: FakeAlertmanager, make_notifier: NotifierFactory):
    notifier = await make_notifier(rules_config(alertmanager.url))
    notifier.notify([alert(gpu=str(i)) for i in range(100)], 1_700_000_100.0, 1.0)
    await notifier.stop(timeout=2.0)
    assert len(alertmanager.alerts) == 100
    assert notifier.stats[0].dropped == 0


# --- metrics -------------------------------------------------------------------------------------


async def test_metrics_per_receiver(
    alertmanager: FakeAlertmanager, second_alertmanager: FakeAlertmanager, make_notifier: NotifierFactory
):
    second_alertmanager.status = 500
    notifier = await make_notifier(rules_config(alertmanager.url, second_alertmanager.url, queue_size=10))
    registry = CollectorRegistry()
    registry.register(NotifierCollector(notifier))
    notifier.notify([alert(gpu=str(i)) for i in range(12)], 1_700_000_100.0, 1.0)
    await wait_for(lambda: notifier.stats[1].failed == 1 and notifier.stats[0].sent == 1, what="both POSTs")

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    good, bad = f"alertmanager:{alertmanager.url}", f"alertmanager:{second_alertmanager.url}"

    def value(family: str, sample: str, **labels: str) -> float:
        (match,) = [s.value for s in families[family].samples if s.name == sample and s.labels == labels]
        return match

    assert value("sidecar_notifications", "sidecar_notifications_total", receiver=good, result="sent") == 1
    assert value("sidecar_notifications", "sidecar_notifications_total", receiver=good, result="dropped") == 2
    assert value("sidecar_notifications", "sidecar_notifications_total", receiver=bad, result="failed") == 1
    assert value("sidecar_notification_alerts_sent", "sidecar_notification_alerts_sent_total", receiver=good) == 10
    assert value("sidecar_notification_alerts_sent", "sidecar_notification_alerts_sent_total", receiver=bad) == 0
    assert value("sidecar_notification_queue_length", "sidecar_notification_queue_length", receiver=good) == 0
    assert value("sidecar_notification_latency_seconds", "sidecar_notification_latency_seconds_count",
                 receiver=bad) == 1  # fmt: skip
    assert value("sidecar_notification_latency_seconds", "sidecar_notification_latency_seconds_bucket",
                 receiver=good, le="+Inf") == 1  # fmt: skip
