"""The demo model server's HTTP surface, in process."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch")

import aiohttp  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sidecar.demo.server import DEFAULT_MODEL_NAME, DemoSettings, serve_demo_model  # noqa: E402


@pytest.fixture
async def demo_url():
    runner, port = await serve_demo_model(DemoSettings(), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_models_errors_and_vllm_metrics(demo_url):
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{demo_url}/v1/models") as response:
            assert (await response.json())["data"][0]["id"] == DEFAULT_MODEL_NAME
        async with client.post(f"{demo_url}/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}) as response:
            assert response.status == 404
            assert "does not exist" in (await response.json())["error"]["message"]
        async with client.post(f"{demo_url}/v1/chat/completions", data=b"{oops") as response:
            assert response.status == 400
        async with client.post(f"{demo_url}/v1/completions", json={"model": DEFAULT_MODEL_NAME, "prompt": "a", "max_tokens": "many"}) as response:
            assert response.status == 400 and "max_tokens" in (await response.json())["error"]["message"]
        async with client.post(f"{demo_url}/v1/completions", json={"model": DEFAULT_MODEL_NAME, "prompt": "abc", "max_tokens": 5}) as response:
            body = await response.json()
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        async with client.get(f"{demo_url}/metrics") as response:
            families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
                 "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:time_to_first_token_seconds"):  # fmt: skip
        assert name in families, name
    generated = [s.value for s in families["vllm:generation_tokens"].samples if s.name.endswith("_total")]
    assert generated == [5]
    running = [s.value for s in families["vllm:num_requests_running"].samples]
    assert running == [0]  # nothing left counted after the request ended


async def test_a_client_that_leaves_stops_generation():
    runner, port = await serve_demo_model(DemoSettings(tokens_per_second=20), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"

    async def gauges() -> tuple[float, float, float]:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{url}/metrics") as response:
                found = {f.name: f for f in text_string_to_metric_families(await response.text())}
        value = lambda name: [s.value for s in found[name].samples if not s.name.endswith("_created")][0]  # noqa: E731
        return value("vllm:num_requests_running"), value("vllm:generation_tokens"), value("vllm:gpu_cache_usage_perc")

    try:
        for stream in (False, True):
            async with aiohttp.ClientSession() as client:
                request = asyncio.create_task(client.post(f"{url}/v1/completions", json={
                    "model": DEFAULT_MODEL_NAME, "prompt": "hello", "max_tokens": 60, "stream": stream}))  # fmt: skip
                await asyncio.sleep(0.5)
                request.cancel()  # closes the connection mid-generation (60 tokens at 20/s would take 3 s)
            await asyncio.sleep(0.3)
            running, generated, cache = await gauges()
            await asyncio.sleep(0.5)
            assert (running, cache) == (0, 0), stream
            assert (await gauges())[1] == generated, f"still generating (stream={stream})"
    finally:
        await runner.cleanup()
