"""A real Prometheus scrapes the sidecar and answers queries over its GenAI histograms."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from sidecar.demo.server import DEFAULT_MODEL_NAME as MODEL
from tests.conftest import SidecarFactory
from tests.support.demo import DemoProcess, start_demo
from tests.support.prometheus import query, start_prometheus, stop_prometheus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoProcess]:
    yield from start_demo()


async def test_prometheus_answers_a_ttft_quantile(demo: DemoProcess, make_sidecar: SidecarFactory, tmp_path):
    sidecar = await make_sidecar(demo.url)
    prometheus, prometheus_url = start_prometheus(tmp_path, sidecar.admin_url.removeprefix("http://"))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 8}
    try:
        async with aiohttp.ClientSession() as client:
            result: list[dict] = []
            for _ in range(60):  # bounded: about 15 s
                async with client.post(f"{sidecar.url}/v1/chat/completions", json=body) as response:
                    await response.read()
                await asyncio.sleep(0.2)
                try:
                    result = await query(
                        client, prometheus_url,
                        "histogram_quantile(0.9, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket[10s])))",
                    )  # fmt: skip
                except aiohttp.ClientConnectionError:
                    continue  # Prometheus still starting
                if result and result[0]["value"][1] not in ("NaN", "+Inf"):
                    break
            assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
            ttft_p90 = float(result[0]["value"][1])
            assert 0 < ttft_p90 < 10
            (up,) = await query(client, prometheus_url, 'up{job="sidecar"}')
            assert up["value"][1] == "1"
            models = await query(client, prometheus_url, "sum by (gen_ai_request_model, gen_ai_operation_name) (gen_ai_server_request_duration_seconds_count)")
            assert {(m["metric"]["gen_ai_request_model"], m["metric"]["gen_ai_operation_name"]) for m in models} == {(MODEL, "chat")}
    finally:
        stop_prometheus(prometheus)
