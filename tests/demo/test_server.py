"""The demo model server's HTTP surface, in process."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch")

import aiohttp  # noqa: E402
import openai  # noqa: E402
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


@pytest.fixture
async def client(demo_url):
    client = openai.AsyncOpenAI(base_url=f"{demo_url}/v1", api_key="not-checked", max_retries=0)
    yield client
    await client.close()


CHAT = [{"role": "user", "content": "hi"}]


async def chat_stream(client: openai.AsyncOpenAI, **params) -> tuple[list[str], list[str], int]:
    """The streamed content pieces, finish reasons and usage.completion_tokens of one chat answer."""
    stream = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, stream=True, stream_options={"include_usage": True}, **params)
    pieces, finishes, completion_tokens = [], [], -1
    async for chunk in stream:
        completion_tokens = chunk.usage.completion_tokens if chunk.usage else completion_tokens
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finishes += [choice.finish_reason] if choice.finish_reason else []
    return pieces, finishes, completion_tokens


async def completion_stream(client: openai.AsyncOpenAI, **params) -> tuple[list[str], list[str], int]:
    stream = await client.completions.create(model=DEFAULT_MODEL_NAME, prompt="Once", stream=True, stream_options={"include_usage": True}, **params)
    pieces, finishes, completion_tokens = [], [], -1
    async for chunk in stream:
        completion_tokens = chunk.usage.completion_tokens if chunk.usage else completion_tokens
        for choice in chunk.choices:
            pieces.append(choice.text)
            finishes += [choice.finish_reason] if choice.finish_reason else []
    return pieces, finishes, completion_tokens


async def test_openai_client_max_completion_tokens_caps_the_answer(client):
    answer = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, max_completion_tokens=40)
    assert (answer.usage.completion_tokens, answer.choices[0].finish_reason) == (40, "length")
    assert len(answer.choices[0].message.content) == 40
    pieces, finishes, completion_tokens = await chat_stream(client, max_completion_tokens=12)
    assert (len("".join(pieces)), finishes, completion_tokens) == (12, ["length"], 12)


async def test_max_completion_tokens_wins_over_max_tokens_and_completions_take_max_tokens(client):
    answer = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, max_tokens=30, max_completion_tokens=7)
    assert answer.usage.completion_tokens == 7
    text = await client.completions.create(model=DEFAULT_MODEL_NAME, prompt="Once", max_tokens=9)
    assert (text.usage.completion_tokens, len(text.choices[0].text), text.choices[0].finish_reason) == (9, 9, "length")
    pieces, finishes, completion_tokens = await completion_stream(client, max_tokens=5)
    assert (len("".join(pieces)), finishes, completion_tokens) == (5, ["length"], 5)


async def test_stop_ends_the_text_before_the_stop_sequence_streamed_or_not(client):
    greedy = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, max_completion_tokens=20, temperature=0)
    full = greedy.choices[0].message.content
    stop = full[8:11]
    expected = full[: full.index(stop)]
    generated = len(expected) + len(stop)  # the tokens that wrote the stop sequence were generated, and count
    answer = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, max_completion_tokens=20, temperature=0, stop=["\u2603 never", stop])
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason, answer.usage.completion_tokens) == (expected, "stop", generated)
    pieces, finishes, completion_tokens = await chat_stream(client, max_completion_tokens=20, temperature=0, stop=stop)
    assert ("".join(pieces), finishes, completion_tokens) == (expected, ["stop"], generated)

    greedy_text = (await client.completions.create(model=DEFAULT_MODEL_NAME, prompt="Once", max_tokens=20, temperature=0)).choices[0].text
    stop = greedy_text[5:7]
    expected = greedy_text[: greedy_text.index(stop)]
    text = await client.completions.create(model=DEFAULT_MODEL_NAME, prompt="Once", max_tokens=20, temperature=0, stop=stop)
    assert (text.choices[0].text, text.choices[0].finish_reason) == (expected, "stop")
    pieces, finishes, _ = await completion_stream(client, max_tokens=20, temperature=0, stop=[stop])
    assert ("".join(pieces), finishes) == (expected, ["stop"])


async def test_seed_makes_sampling_repeatable_and_no_seed_does_not(client):
    async def sample(**params) -> str:
        answer = await client.completions.create(model=DEFAULT_MODEL_NAME, prompt="Once", max_tokens=16, temperature=1.0, **params)
        return answer.choices[0].text

    assert await sample(seed=7) == await sample(seed=7)
    assert await sample(seed=7) != await sample(seed=8)
    assert await sample() != await sample()  # a fresh seed each time: 16 bytes from about 95 each do not repeat
    pieces, _, _ = await chat_stream(client, max_completion_tokens=16, temperature=1.0, seed=3)
    again = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, max_completion_tokens=16, temperature=1.0, seed=3)
    assert "".join(pieces) == again.choices[0].message.content


async def test_n_above_one_and_an_invalid_temperature_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, n=2)
    assert (refused.value.status_code, refused.value.param, refused.value.type) == (400, "n", "BadRequestError")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.completions.create(model=DEFAULT_MODEL_NAME, prompt="Once", temperature=2.5, stream=True)
    assert (refused.value.param, refused.value.body["message"]) == ("temperature", "temperature must be in [0, 2], got 2.5.")
    answer = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CHAT, n=1, max_completion_tokens=3)
    assert len(answer.choices) == 1


async def test_invalid_parameters_get_vllms_error_body_and_unknown_ones_are_ignored(demo_url):
    async with aiohttp.ClientSession() as session:
        url = f"{demo_url}/v1/chat/completions"
        async with session.post(url, json={"model": DEFAULT_MODEL_NAME, "messages": CHAT, "max_completion_tokens": "40"}) as response:
            assert response.status == 400
            assert await response.json() == {"error": {"message": "max_completion_tokens must be an integer, got a string.",
                                                       "type": "BadRequestError", "param": "max_completion_tokens", "code": 400}}  # fmt: skip
        async with session.post(url, json={"model": DEFAULT_MODEL_NAME, "messages": CHAT, "max_completion_tokens": 2000}) as response:
            assert (response.status, (await response.json())["error"]["param"]) == (400, "max_completion_tokens")
        async with session.post(url, json={"model": DEFAULT_MODEL_NAME, "messages": CHAT, "max_tokens": 3, "top_p": 0.5, "frobnicate": {"x": 1}}) as response:
            assert (response.status, (await response.json())["usage"]["completion_tokens"]) == (200, 3)
