"""limits.tiers.*.concurrent_streams on a running sidecar, for every model-call route it recognises.

Whether a request streams depends on its protocol: OpenAI-style routes stream when the body
says `"stream": true`, Ollama's chat and generate stream unless it says `"stream": false`, and
TGI's /generate_stream always streams. The routes come from the sidecar's own table, so a route
added there is covered here without a change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.proxy.llm.routes import Route, match_route, model_routes
from tests.conftest import SidecarFactory
from tests.support.tools import serve_on_loopback, wait_for

_ROUTES = model_routes()
_HOLD = "X-Test-Hold"
"""The stand-in holds its answer open until released when a request carries this header."""


def _path(route: Route) -> str:
    return route.template.replace("{model}", "m")


def _streaming_bodies(route: Route) -> list[dict[str, Any]]:
    """Bodies whose answer streams on this route."""
    if route.always_streams:
        return [{"inputs": "hi"}, {"inputs": "hi", "stream": False}, {"inputs": "hi", "stream": True}]
    if route.streams_by_default:
        return [{"model": "m"}, {"model": "m", "stream": True}]
    return [{"model": "m", "stream": True}]


def _plain_bodies(route: Route) -> list[dict[str, Any]]:
    """Bodies whose answer does not stream on this route."""
    if route.always_streams:
        return []
    if route.streams_by_default:
        return [{"model": "m", "stream": False}]
    return [{"model": "m"}, {"model": "m", "stream": False}]


@pytest.fixture
async def holding_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """Answers every POST with two NDJSON lines; holds between them when asked to."""
    release = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"response": "a"}\n')
        if request.headers.get(_HOLD):
            await release.wait()
        await response.write(b'{"done": true}\n')
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner, port = await serve_on_loopback(app)
    try:
        yield f"http://127.0.0.1:{port}", release
    finally:
        release.set()
        await runner.cleanup()


def test_the_route_table_declares_which_protocols_stream_without_asking():
    assert {route.template for route in _ROUTES if route.always_streams} == {"/generate_stream"}
    assert {route.template for route in _ROUTES if route.streams_by_default} == {"/api/chat", "/api/generate"}
    for route in _ROUTES:
        assert match_route("POST", _path(route))[0] == route, route.template


@pytest.mark.parametrize(
    "requested, by_default, always, streams",
    [
        (None, False, False, False),  # OpenAI without "stream"
        (True, False, False, True),
        (False, False, False, False),
        (None, True, False, True),  # Ollama without "stream"
        (True, True, False, True),
        (False, True, False, False),  # Ollama with "stream": false
        (None, False, True, True),  # TGI /generate_stream
        (False, False, True, True),
    ],
)
def test_a_route_decides_from_the_body_flag_and_its_own_behaviour(requested, by_default, always, streams):
    route = Route("/x", "p", "o", streams_by_default=by_default, always_streams=always)
    assert route.streams(requested) is streams


@pytest.mark.parametrize("llm_enabled", [True, False], ids=["llm-on", "llm-off"])
@pytest.mark.parametrize("route", _ROUTES, ids=[route.template for route in _ROUTES])
async def test_a_stream_cap_of_one_refuses_a_second_stream_on_every_model_route(
    make_sidecar: SidecarFactory, holding_upstream: tuple[str, asyncio.Event], route: Route, llm_enabled: bool
) -> None:
    url, release = holding_upstream
    running = await make_sidecar(
        url,
        llm__enabled=llm_enabled,
        limits__enabled=True,
        limits__tiers={"anonymous": {"concurrent_streams": 1}},
        limits__default_tier="anonymous",
    )
    target = f"{running.url}{_path(route)}"
    streaming = _streaming_bodies(route)
    async with aiohttp.ClientSession() as client:
        first = await client.post(target, json=streaming[0], headers={_HOLD: "1"})
        try:
            assert first.status == 200
            await first.content.readline()  # the slot is taken and the answer is open
            for body in streaming:
                async with client.post(target, json=body) as second:
                    assert second.status == 429, body
                    assert "streamed answers open" in (await second.json())["error"]["message"]
            for body in _plain_bodies(route):
                async with client.post(target, json=body) as plain:
                    assert plain.status == 200, body  # only streams count against the cap
                    await plain.read()
            release.set()
            await first.read()
        finally:
            first.release()
        await wait_for(lambda: running.sidecar.proxy.active_requests == 0, what="the stream to finish")
        async with client.post(target, json=streaming[0]) as again:
            assert again.status == 200  # the slot was given back
            await again.read()
