"""Webhook receivers with Alertmanager's payload: grouping, timing, deduplication, retries, the JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.config import RulesConfig
from sidecar.rules.alert import Alert, AlertState
from sidecar.rules.notify import Notifier
from sidecar.rules.notify.payload import (
    fingerprinted,
    go_quote,
    group_key,
    label_set_string,
    rfc3339_go,
    rfc3339_millis,
    sorted_as_alertmanager,
)
from sidecar.rules.notify_metrics import NotifierCollector
from tests.support.clock import Clock, T0
from tests.support.tools import closed_port, serve_on_loopback, wait_for

EXTERNAL_URL = "http://sidecar.example:9180"


def alert(
    name: str = "GpuTemperatureHigh",
    *,
    state: AlertState = AlertState.FIRING,
    fired_at: float = T0,
    resolved_at: float | None = None,
    summary: str | None = None,
    **labels: str,
) -> Alert:
    return Alert(
        name=name,
        labels={"alertname": name, "severity": "warning", "instance": "node-7:8080", **labels},
        annotations={"summary": summary or f"{name} is on", "runbook_url": f"https://runbooks/{name}"},
        state=state,
        value=1.0,
        active_at=fired_at - 60,
        fired_at=None if state is AlertState.PENDING else fired_at,
        resolved_at=resolved_at,
    )


def resolved(firing: Alert, at: float) -> Alert:
    return Alert(firing.name, firing.labels, firing.annotations, AlertState.RESOLVED, firing.value,
                 firing.active_at, firing.fired_at, at)  # fmt: skip


class FakeReceiver:
    """A webhook receiver on 127.0.0.1: records each payload; answers `statuses` in turn, then 200."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.attempts: list[float] = []
        self.statuses: list[int] = []
        self.hang = False
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self.receive)
        self._runner, self.port = await serve_on_loopback(app)

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def receive(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.attempts.append(time.monotonic())
        if self.hang:
            await self._release.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.payloads.append(payload)
            return web.Response(status=200)
        return web.Response(status=status, text=f"receiver says no ({status})")


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    server = FakeReceiver()
    await server.start()
    yield server
    await server.stop()


def rules_config(url: str, **hook: Any) -> RulesConfig:
    settings = {"name": "oncall", "url": url, "group_wait": 0, "group_interval": 10, "repeat_interval": 3600,
                "timeout": 2, **hook}  # fmt: skip
    queue_size = settings.pop("queue_size", 100)
    return RulesConfig.model_validate({"webhooks": [settings], "queue_size": queue_size})


NotifierFactory = Callable[..., Awaitable[Notifier]]


@pytest.fixture
async def make_notifier() -> AsyncIterator[NotifierFactory]:
    started: list[Notifier] = []

    async def factory(config: RulesConfig, clock: Clock, *, start: bool = True) -> Notifier:
        notifier = Notifier(config, external_url=EXTERNAL_URL, clock=clock, initial_backoff=0.02, max_backoff=0.1)
        if start:
            await notifier.start()
        started.append(notifier)
        return notifier

    yield factory
    for notifier in started:
        await notifier.stop(timeout=0.5)


async def tick(notifier: Notifier, clock: Clock, alerts: list[Alert], at: float) -> None:
    """One evaluation at `at`, then wait until every delivery it started is over."""
    clock.now = at
    notifier.notify(alerts, at, 1.0)
    assert await notifier.wait_idle(timeout=5.0), "deliveries did not finish"


# --- the payload --------------------------------------------------------------------------------


async def test_payload_is_alertmanagers_webhook_message(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url()), clock)
    firing = alert(fired_at=T0 + 0.25, gpu="0")
    await tick(notifier, clock, [firing], T0 + 1)

    assert receiver.payloads == [
        {
            "receiver": "oncall",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "GpuTemperatureHigh", "gpu": "0", "instance": "node-7:8080",
                               "severity": "warning"},  # fmt: skip
                    "annotations": {"runbook_url": "https://runbooks/GpuTemperatureHigh",
                                    "summary": "GpuTemperatureHigh is on"},  # fmt: skip
                    "startsAt": "2023-11-14T22:13:20.25Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://sidecar.example:9180/?alert=GpuTemperatureHigh",
                    "fingerprint": firing.fingerprint,
                }
            ],
            "groupLabels": {"alertname": "GpuTemperatureHigh"},
            "commonLabels": {"alertname": "GpuTemperatureHigh", "gpu": "0", "instance": "node-7:8080",
                             "severity": "warning"},  # fmt: skip
            "commonAnnotations": {"runbook_url": "https://runbooks/GpuTemperatureHigh",
                                  "summary": "GpuTemperatureHigh is on"},  # fmt: skip
            "externalURL": EXTERNAL_URL,
            "version": "4",
            "groupKey": '{}:{alertname="GpuTemperatureHigh"}',
            "truncatedAlerts": 0,
        }
    ]


def test_time_formats_are_prometheus_and_go():
    assert rfc3339_millis(T0) == "2023-11-14T22:13:20.000Z"
    assert rfc3339_millis(T0 + 0.1239) == "2023-11-14T22:13:20.123Z"  # truncated, as Go formats
    assert rfc3339_go(T0) == "2023-11-14T22:13:20Z"
    assert rfc3339_go(T0 + 0.120) == "2023-11-14T22:13:20.12Z"
    assert rfc3339_go(T0 + 0.123) == "2023-11-14T22:13:20.123Z"


def test_group_key_is_alertmanagers():
    assert group_key({"severity": "page", "alertname": "X"}) == '{}:{alertname="X", severity="page"}'
    assert label_set_string({}) == "{}"
    assert go_quote('a"b\\c\nd\x01é\u200b') == '"a\\"b\\\\c\\nd\\x01é\\u200b"'


def test_alerts_are_in_alertmanagers_order():
    alerts = [
        alert("B", instance="b"),
        alert("A", instance="b"),
        alert("C", instance="a"),
        alert("D", job="x", instance="z"),
        Alert("E", {"alertname": "E"}, {}, AlertState.FIRING, 1.0, T0, T0),
    ]
    assert [a.name for _, a in sorted_as_alertmanager(fingerprinted(alerts))] == ["D", "C", "A", "B", "E"]


async def test_common_labels_and_annotations_are_those_all_alerts_share(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url()), clock)
    await tick(notifier, clock, [alert(gpu="0", summary="hot"), alert(gpu="1", summary="hot"),
                                 alert(gpu="2", summary="hotter")], T0 + 1)  # fmt: skip

    (payload,) = receiver.payloads
    assert payload["commonLabels"] == {"alertname": "GpuTemperatureHigh", "instance": "node-7:8080",
                                       "severity": "warning"}  # fmt: skip
    assert payload["commonAnnotations"] == {"runbook_url": "https://runbooks/GpuTemperatureHigh"}
    assert [a["labels"]["gpu"] for a in payload["alerts"]] == ["0", "1", "2"]


async def test_max_alerts_truncates_and_counts(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), max_alerts=2), clock)
    await tick(notifier, clock, [alert(gpu=str(i)) for i in range(5)], T0 + 1)

    (payload,) = receiver.payloads
    assert [a["labels"]["gpu"] for a in payload["alerts"]] == ["0", "1"]
    assert payload["truncatedAlerts"] == 3
    assert notifier.stats[0].alerts_sent == 2


async def test_receiver_name_goes_through_quote_meta(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), name="team.gpu-oncall"), clock)
    await tick(notifier, clock, [alert()], T0 + 1)
    assert receiver.payloads[0]["receiver"] == "team\\.gpu-oncall"


# --- grouping -----------------------------------------------------------------------------------


async def test_two_alertnames_make_two_groups(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url()), clock)
    await tick(notifier, clock, [alert("GpuLost", gpu="0"), alert("GpuXidError", gpu="0"),
                                 alert("GpuXidError", gpu="1")], T0 + 1)  # fmt: skip

    by_key = {p["groupKey"]: p for p in receiver.payloads}
    assert set(by_key) == {'{}:{alertname="GpuLost"}', '{}:{alertname="GpuXidError"}'}
    assert len(by_key['{}:{alertname="GpuXidError"}']["alerts"]) == 2
    assert by_key['{}:{alertname="GpuLost"}']["groupLabels"] == {"alertname": "GpuLost"}


async def test_group_by_all_labels_makes_one_group_per_alert(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_by=["..."]), clock)
    await tick(notifier, clock, [alert(gpu="0"), alert(gpu="1")], T0 + 1)

    assert sorted(p["groupKey"] for p in receiver.payloads) == [
        '{}:{alertname="GpuTemperatureHigh", gpu="0", instance="node-7:8080", severity="warning"}',
        '{}:{alertname="GpuTemperatureHigh", gpu="1", instance="node-7:8080", severity="warning"}',
    ]
    assert all(p["groupLabels"] == p["commonLabels"] for p in receiver.payloads)


async def test_group_by_a_label_an_alert_lacks(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_by=["alertname", "gpu"]), clock)
    await tick(notifier, clock, [alert("SidecarHighErrorRate")], T0 + 1)
    assert receiver.payloads[0]["groupKey"] == '{}:{alertname="SidecarHighErrorRate"}'


async def test_pending_alerts_are_not_notified(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url()), clock)
    await tick(notifier, clock, [alert(state=AlertState.PENDING)], T0 + 1)
    await tick(notifier, clock, [alert(state=AlertState.PENDING)], T0 + 100)
    assert receiver.payloads == []
    assert notifier.dispatcher("oncall").group_keys == []


# --- timing -------------------------------------------------------------------------------------


async def test_new_group_waits_group_wait_and_gathers_what_arrives_meanwhile(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=30), clock)
    first, second = alert(fired_at=T0, gpu="0"), alert(fired_at=T0 + 10, gpu="1")
    await tick(notifier, clock, [first], T0)
    await tick(notifier, clock, [first, second], T0 + 10)
    await tick(notifier, clock, [first, second], T0 + 29)
    assert receiver.payloads == []

    await tick(notifier, clock, [first, second], T0 + 30)
    (payload,) = receiver.payloads
    assert [a["labels"]["gpu"] for a in payload["alerts"]] == ["0", "1"]


async def test_an_alert_older_than_group_wait_is_notified_at_once(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=30), clock)
    await tick(notifier, clock, [alert(fired_at=T0 - 300)], T0)
    assert len(receiver.payloads) == 1


async def test_changes_wait_for_group_interval(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=0, group_interval=60), clock)
    first, second = alert(gpu="0"), alert(fired_at=T0 + 5, gpu="1")
    await tick(notifier, clock, [first], T0)
    assert len(receiver.payloads) == 1

    await tick(notifier, clock, [first, second], T0 + 5)
    await tick(notifier, clock, [first, second], T0 + 59)
    assert len(receiver.payloads) == 1
    await tick(notifier, clock, [first, second], T0 + 60)
    assert len(receiver.payloads) == 2
    assert len(receiver.payloads[1]["alerts"]) == 2


async def test_unchanged_group_is_repeated_after_repeat_interval_only(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    config = rules_config(receiver.url(), group_wait=0, group_interval=10, repeat_interval=30)
    notifier = await make_notifier(config, clock)
    firing = [alert()]
    for at in range(0, 40, 10):
        await tick(notifier, clock, firing, T0 + at)
    # Alertmanager: entry.Timestamp.Before(now - repeat) is strict, so the flush at exactly
    # repeat_interval (t=30) does not repeat; the next one (t=40) does.
    assert len(receiver.payloads) == 1
    await tick(notifier, clock, firing, T0 + 40)
    assert len(receiver.payloads) == 2
    assert receiver.payloads[0] == receiver.payloads[1]


async def test_resolution_is_notified_and_the_group_deleted(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=0, group_interval=10), clock)
    firing = alert(fired_at=T0)
    await tick(notifier, clock, [firing], T0)
    done = resolved(firing, T0 + 3.5)
    await tick(notifier, clock, [done], T0 + 4)
    assert len(receiver.payloads) == 1
    await tick(notifier, clock, [done], T0 + 10)

    payload = receiver.payloads[1]
    assert payload["status"] == "resolved"
    assert payload["alerts"][0]["status"] == "resolved"
    assert payload["alerts"][0]["endsAt"] == "2023-11-14T22:13:23.5Z"
    assert notifier.dispatcher("oncall").group_keys == []

    # The engine keeps listing the resolved alert for a while: it is not notified again.
    for at in (20, 30, 100, 4000):
        await tick(notifier, clock, [done], T0 + at)
    assert len(receiver.payloads) == 2


async def test_without_send_resolved_resolutions_are_not_notified(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    config = rules_config(receiver.url(), group_wait=0, group_interval=10, send_resolved=False)
    notifier = await make_notifier(config, clock)
    first, second = alert(gpu="0"), alert(gpu="1")
    await tick(notifier, clock, [first, second], T0)
    await tick(notifier, clock, [first, resolved(second, T0 + 5)], T0 + 10)
    await tick(notifier, clock, [resolved(first, T0 + 15), resolved(second, T0 + 5)], T0 + 20)
    assert len(receiver.payloads) == 1
    assert notifier.dispatcher("oncall").group_keys == []
    entry = notifier.dispatcher("oncall").entry('{}:{alertname="GpuTemperatureHigh"}')
    assert entry is not None and entry.firing == frozenset()  # logged, so a new firing is news


async def test_partial_resolution_with_send_resolved(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=0, group_interval=10), clock)
    first, second = alert(gpu="0"), alert(gpu="1")
    await tick(notifier, clock, [first, second], T0)
    await tick(notifier, clock, [first, resolved(second, T0 + 5)], T0 + 10)
    await tick(notifier, clock, [first, resolved(second, T0 + 5)], T0 + 20)  # deduplicated

    assert len(receiver.payloads) == 2
    payload = receiver.payloads[1]
    assert payload["status"] == "firing"
    assert [(a["labels"]["gpu"], a["status"]) for a in payload["alerts"]] == [("0", "firing"), ("1", "resolved")]


async def test_identical_notification_is_not_sent_twice(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=0, group_interval=10), clock)
    firing = [alert(gpu="0"), alert(gpu="1")]
    for at in range(0, 200, 10):
        # Annotations change with the value; they do not make a notification new.
        await tick(notifier, clock, [alert(gpu=a.labels["gpu"], summary=f"at {at}") for a in firing], T0 + at)
    assert len(receiver.payloads) == 1


async def test_a_firing_alert_that_disappears_is_resolved(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=0, group_interval=10), clock)
    await tick(notifier, clock, [alert()], T0)
    await tick(notifier, clock, [], T0 + 5)  # its rule was removed by a reload
    await tick(notifier, clock, [], T0 + 10)

    assert [p["status"] for p in receiver.payloads] == ["firing", "resolved"]
    assert receiver.payloads[1]["alerts"][0]["endsAt"] == rfc3339_go(T0 + 5)
    assert notifier.dispatcher("oncall").group_keys == []


async def test_alert_that_fires_again_is_news(receiver: FakeReceiver, make_notifier: NotifierFactory):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_wait=5, group_interval=10), clock)
    firing = alert(fired_at=T0)
    await tick(notifier, clock, [firing], T0)
    await tick(notifier, clock, [firing], T0 + 5)
    await tick(notifier, clock, [resolved(firing, T0 + 8)], T0 + 15)
    again = alert(fired_at=T0 + 20)
    await tick(notifier, clock, [again], T0 + 20)  # a new group: waits group_wait again
    assert len(receiver.payloads) == 2
    await tick(notifier, clock, [again], T0 + 25)
    assert [p["status"] for p in receiver.payloads] == ["firing", "resolved", "firing"]


async def test_an_alert_resolved_before_its_first_delivery_is_never_notified(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_interval=10), clock, start=False)
    firing = alert()
    clock.now = T0
    notifier.notify([firing], T0, 1.0)
    assert notifier.stats[0].queue_length == 1
    clock.now = T0 + 10
    notifier.notify([resolved(firing, T0 + 5)], T0 + 10, 1.0)  # the next flush supersedes the first
    assert notifier.stats[0].queue_length == 0
    assert await notifier.wait_idle(timeout=1.0)

    await notifier.start()
    await tick(notifier, clock, [resolved(firing, T0 + 5)], T0 + 20)
    assert receiver.payloads == []
    assert notifier.dispatcher("oncall").group_keys == []


# --- delivery -----------------------------------------------------------------------------------


async def test_5xx_and_429_are_retried_with_backoff_until_delivered(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    receiver.statuses = [503, 429, 502]
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url()), clock)
    await tick(notifier, clock, [alert()], T0)

    assert len(receiver.payloads) == 1
    assert len(receiver.attempts) == 4
    gaps = [later - earlier for earlier, later in zip(receiver.attempts, receiver.attempts[1:], strict=False)]
    # initial 0.02 s, doubling, capped at 0.1 s, full jitter in [ceiling/2, ceiling]
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02 and gaps[2] >= 0.04
    stats = notifier.stats[0]
    assert (stats.sent, stats.failed, stats.alerts_sent) == (1, 3, 1)
    entry = notifier.dispatcher("oncall").entry('{}:{alertname="GpuTemperatureHigh"}')
    assert entry is not None and entry.timestamp == T0


async def test_4xx_is_not_retried_and_is_logged_with_the_body(
    receiver: FakeReceiver, make_notifier: NotifierFactory, caplog: pytest.LogCaptureFixture
):
    receiver.statuses = [400]
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url()), clock)
    with caplog.at_level(logging.ERROR, logger="sidecar.rules.notify.webhook"):
        await tick(notifier, clock, [alert()], T0)
    await asyncio.sleep(0.2)

    assert len(receiver.attempts) == 1
    assert (notifier.stats[0].failed, notifier.stats[0].sent) == (1, 0)
    (record,) = [r for r in caplog.records if r.name == "sidecar.rules.notify.webhook"]
    assert "HTTP 400: receiver says no (400)" in record.error  # type: ignore[attr-defined]
    # Not logged, so the group's next flush tries again.
    await tick(notifier, clock, [alert()], T0 + 10)
    assert len(receiver.payloads) == 1


async def test_the_next_flush_supersedes_a_delivery_still_retrying(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    receiver.statuses = [503] * 1000
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), group_interval=10), clock)
    first = alert(gpu="0")
    clock.now = T0
    notifier.notify([first], T0, 1.0)
    await wait_for(lambda: len(receiver.attempts) >= 3, what="retries")

    receiver.statuses = []
    await tick(notifier, clock, [first, alert(gpu="1")], T0 + 10)
    (payload,) = receiver.payloads
    assert [a["labels"]["gpu"] for a in payload["alerts"]] == ["0", "1"]


async def test_a_receiver_down_or_hanging_does_not_block_notify(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    receiver.hang = True
    config = RulesConfig.model_validate({"webhooks": [
        {"name": "hangs", "url": receiver.url(), "group_wait": 0, "group_interval": 1, "timeout": 30},
        {"name": "down", "url": f"http://127.0.0.1:{closed_port()}/", "group_wait": 0, "group_interval": 1},
    ]})  # fmt: skip
    clock = Clock()
    notifier = await make_notifier(config, clock)
    alerts = [alert(f"Alert{i}", gpu=str(i)) for i in range(50)]

    slowest = 0.0
    for step in range(5):
        clock.now = T0 + step
        started = time.perf_counter()
        notifier.notify(alerts, T0 + step, 1.0)
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0.02)
    assert slowest < 0.5, f"notify() took {slowest * 1000:.1f} ms"  # waiting on a receiver would take 30 s
    await wait_for(lambda: notifier.stats[1].failed > 0, what="failures against the receiver that is down")

    started = time.perf_counter()
    await notifier.stop(timeout=0.2)
    assert time.perf_counter() - started < 2.0
    assert notifier.stats[0].dropped > 0


async def test_full_queue_drops_the_oldest_group_notification(
    receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url(), queue_size=10), clock, start=False)
    clock.now = T0
    notifier.notify([alert(f"Alert{i:02d}") for i in range(12)], T0, 1.0)
    assert (notifier.stats[0].queue_length, notifier.stats[0].dropped) == (10, 2)

    await notifier.start()
    assert await notifier.wait_idle(timeout=5.0)
    assert len(receiver.payloads) == 10


# --- restart ------------------------------------------------------------------------------------


@pytest.mark.parametrize("restored", [True, False])
async def test_after_load_state_a_notified_group_is_not_notified_again(
    restored: bool, receiver: FakeReceiver, make_notifier: NotifierFactory
):
    clock = Clock()
    config = rules_config(receiver.url(), group_wait=30, group_interval=10, repeat_interval=3600)
    before = await make_notifier(config, clock)
    firing = alert(fired_at=T0)
    await tick(before, clock, [firing], T0)
    await tick(before, clock, [firing], T0 + 30)
    assert len(receiver.payloads) == 1
    saved = json.loads(json.dumps(before.dump_state()))
    await before.stop()

    after = await make_notifier(config, clock)
    if restored:
        after.load_state(saved)
    await tick(after, clock, [firing], T0 + 100)
    await tick(after, clock, [firing], T0 + 110)
    assert len(receiver.payloads) == (1 if restored else 2)

    if restored:  # and news still is news
        await tick(after, clock, [firing, alert(fired_at=T0 + 115, gpu="1")], T0 + 120)
        assert len(receiver.payloads) == 2


def test_bad_webhook_state_names_the_key():
    notifier = Notifier(rules_config("http://127.0.0.1:9/"), external_url=EXTERNAL_URL)
    state = {"version": 1, "webhooks": {"oncall": {"log": {'{}:{alertname="X"}': {"timestamp": 1.0, "firing": "abc"}}}}}
    with pytest.raises(ValueError, match=r"""webhooks\.oncall\.log\['\{\}:\{alertname="X"\}'\]\.firing"""):
        notifier.load_state(state)


# --- metrics ------------------------------------------------------------------------------------


async def test_webhook_metrics(receiver: FakeReceiver, make_notifier: NotifierFactory):
    receiver.statuses = [503]
    clock = Clock()
    notifier = await make_notifier(rules_config(receiver.url()), clock)
    registry = CollectorRegistry()
    registry.register(NotifierCollector(notifier))
    await tick(notifier, clock, [alert(gpu="0"), alert(gpu="1")], T0)

    text = generate_latest(registry).decode()
    assert 'sidecar_notifications_total{receiver="webhook:oncall",result="sent"} 1.0' in text
    assert 'sidecar_notifications_total{receiver="webhook:oncall",result="failed"} 1.0' in text
    assert 'sidecar_notifications_total{receiver="webhook:oncall",result="dropped"} 0.0' in text
    assert 'sidecar_notification_alerts_sent_total{receiver="webhook:oncall"} 2.0' in text
    assert 'sidecar_notification_queue_length{receiver="webhook:oncall"} 0.0' in text
    assert 'sidecar_notification_latency_seconds_count{receiver="webhook:oncall"} 2.0' in text
