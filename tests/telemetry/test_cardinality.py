"""Random paths and model names cannot grow the number of series without bound."""

from __future__ import annotations

import asyncio
import random
import string

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SidecarFactory
from tests.support.upstream import TestUpstream

REQUESTS = 1000
MAX_MODELS = 5


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))


async def test_random_paths_and_models_stay_within_the_caps(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url, metrics__max_models=MAX_MODELS)
    rng = random.Random(42)
    calls = [
        ("POST", "/v1/chat/completions", {"model": _word(rng)}) if index % 2 else ("GET", f"/{_word(rng)}/{_word(rng)}", None)
        for index in range(REQUESTS)
    ]
    async with aiohttp.ClientSession() as client:

        async def send(method: str, path: str, body: dict | None) -> None:
            async with client.request(method, f"{sidecar.url}{path}", json=body) as response:
                await response.read()

        for start in range(0, REQUESTS, 50):
            await asyncio.gather(*(send(*call) for call in calls[start : start + 50]))
        async with client.get(f"{sidecar.admin_url}/metrics") as response:
            families = list(text_string_to_metric_families(await response.text()))

    assert len(sidecar.exchanges) == REQUESTS
    routes = {s.labels["http_route"] for f in families for s in f.samples if "http_route" in s.labels}
    assert routes == {"/v1/chat/completions", "other"}
    models = {s.labels["gen_ai_request_model"] for f in families for s in f.samples if "gen_ai_request_model" in s.labels}
    assert len(models) == MAX_MODELS + 1 and "other" in models
    total = sum(len(f.samples) for f in families)
    # Without caps, 1,000 distinct paths and 500 models would make tens of thousands of series.
    assert total < 1000, total
