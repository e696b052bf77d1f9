"""A real Alertmanager (Debian's prometheus-alertmanager) receives the sidecar's alerts and forwards
them to a webhook served here; the sidecar's own webhook mode must produce the same payload.

This is the check on the parts that imitate Alertmanager: the FNV fingerprint, the group key, the
receiver name, the time formats, the keys of the webhook message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.config import RulesConfig
from sidecar.rules.alert import Alert, AlertState
from sidecar.rules.notify import Notifier
from tests.support.alertmanager import alertmanager_route, start_alertmanager, wait_ready
from tests.support.tools import serve_on_loopback

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RECEIVER = "sidecar.test-hook"
"""With a dot: Alertmanager passes receiver names through regexp.QuoteMeta."""
EXTERNAL_URL = "http://127.0.0.1:9180"
GROUP_BY = ["alertname", "instance"]


class Hook:
    """Collects webhook payloads by path: /alertmanager (forwarded by Alertmanager), /sidecar (ours)."""

    def __init__(self) -> None:
        self.payloads: dict[str, list[dict[str, Any]]] = {"alertmanager": [], "sidecar": []}
        self.arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        self.payloads[request.match_info["source"]].append(await request.json())
        self.arrived.set()
        return web.Response()

    def first(self, source: str, status: str) -> dict[str, Any] | None:
        return next((p for p in self.payloads[source] if p["status"] == status), None)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, int]]:
    collector = Hook()
    app = web.Application()
    app.router.add_post("/{source}", collector.receive)
    runner, port = await serve_on_loopback(app)
    yield collector, port
    await runner.cleanup()


async def drive_until(
    notifier: Notifier, alerts: list[Alert], hook: Hook, done: Callable[[], bool], timeout: float = 10.0
) -> None:
    """Evaluate every 0.2 s, as the engine would, until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; payloads so far: {json.dumps(hook.payloads, indent=1)}")
        notifier.notify(alerts, time.time(), 0.2)
        hook.arrived.clear()
        try:
            await asyncio.wait_for(hook.arrived.wait(), 0.2)
        except TimeoutError:
            pass


def both_have(hook: Hook, status: str) -> bool:
    return hook.first("alertmanager", status) is not None and hook.first("sidecar", status) is not None


def assert_same_shape(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Same keys, same values, but for externalURL (Alertmanager's own URL in its payload)."""
    assert list(ours) == list(theirs)
    for key in ours:
        if key == "externalURL":
            continue
        if key == "alerts":
            assert len(ours["alerts"]) == len(theirs["alerts"])
            for mine, real in zip(ours["alerts"], theirs["alerts"], strict=True):
                assert list(mine) == list(real)
                assert mine == real
        else:
            assert ours[key] == theirs[key], key


async def test_alertmanager_forwards_firing_and_resolved_alerts_as_our_webhook_mode_does(
    tmp_path: Path, hook: tuple[Hook, int]
):
    collector, hook_port = hook
    route = alertmanager_route(RECEIVER, f"http://127.0.0.1:{hook_port}/alertmanager", GROUP_BY)
    process, am_url, log = await start_alertmanager(tmp_path, route)
    notifier: Notifier | None = None
    try:
        async with asyncio.timeout(30):
            await wait_ready(process, am_url, log)
            config = RulesConfig.model_validate({
                "alertmanagers": [{"url": am_url, "timeout": 2}],
                "webhooks": [{"name": RECEIVER, "url": f"http://127.0.0.1:{hook_port}/sidecar", "group_by": GROUP_BY,
                              "group_wait": 0, "group_interval": 1, "repeat_interval": 3600, "timeout": 2}],
                "resend_delay": 60,
            })  # fmt: skip
            notifier = Notifier(config, external_url=EXTERNAL_URL)
            await notifier.start()

            fired_at = time.time() - 3.21
            firing = Alert(
                name="SidecarIntegrationTest",
                labels={"alertname": "SidecarIntegrationTest", "severity": "critical",
                        "instance": 'gpu-node "7" ü:9180', "gpu": "0", "UUID": "GPU-3b4f6e2a"},  # fmt: skip
                annotations={"summary": "GPU 0 is at 91 C (over 85 C for 1m)",
                             "description": "Ünïcode, \"quotes\" and\nnewlines survive."},  # fmt: skip
                state=AlertState.FIRING,
                value=91.0,
                active_at=fired_at - 60,
                fired_at=fired_at,
            )
            await drive_until(notifier, [firing], collector, lambda: both_have(collector, "firing"))
            theirs = collector.first("alertmanager", "firing")
            ours = collector.first("sidecar", "firing")
            assert theirs is not None and ours is not None
            print("Alertmanager 0.25 forwarded (firing):", json.dumps(theirs, indent=2, ensure_ascii=False))

            (forwarded,) = theirs["alerts"]
            assert forwarded["status"] == "firing"
            assert forwarded["labels"] == dict(firing.labels)
            assert forwarded["annotations"] == dict(firing.annotations)
            assert forwarded["fingerprint"] == firing.fingerprint  # our FNV-1a is Alertmanager's
            assert forwarded["generatorURL"] == f"{EXTERNAL_URL}/?alert=SidecarIntegrationTest"
            assert theirs["receiver"] == "sidecar\\.test-hook"
            assert_same_shape(ours, theirs)

            # Resolved at an evaluation after the last send, as the engine resolves.
            resolved = replace(firing, state=AlertState.RESOLVED, resolved_at=time.time())
            await drive_until(notifier, [resolved], collector, lambda: both_have(collector, "resolved"))
            theirs = collector.first("alertmanager", "resolved")
            ours = collector.first("sidecar", "resolved")
            assert theirs is not None and ours is not None
            print("Alertmanager 0.25 forwarded (resolved):", json.dumps(theirs, indent=2, ensure_ascii=False))

            (forwarded,) = theirs["alerts"]
            assert forwarded["status"] == "resolved"
            assert forwarded["labels"] == dict(firing.labels)
            assert forwarded["annotations"] == dict(firing.annotations)
            assert forwarded["fingerprint"] == firing.fingerprint
            assert_same_shape(ours, theirs)
            assert notifier.stats[0].failed == 0
    finally:
        if notifier is not None:
            await notifier.stop(timeout=1.0)
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
