"""The official openai SDK, pointed at the sidecar, streams from the demo server unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from sidecar.demo.server import DEFAULT_MODEL_NAME as MODEL
from tests.conftest import SidecarFactory
from tests.support.demo import DemoProcess, start_demo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoProcess]:
    yield from start_demo()


async def stream_chat(base_url: str) -> tuple[str, list[str], object]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="not-checked", max_retries=0)
    pieces: list[str] = []
    finish: list[str] = []
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=20,
        temperature=0,
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    await client.close()
    return "".join(pieces), finish, usage


async def test_openai_sdk_streams_through_the_sidecar_unchanged(demo: DemoProcess, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(demo.url)
    direct_text, direct_finish, direct_usage = await stream_chat(demo.url)
    text, finish, usage = await stream_chat(sidecar.url)
    assert text == direct_text and len(text) == 20
    assert finish == direct_finish == ["length"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (direct_usage.prompt_tokens, 20)
    call = sidecar.exchanges[-1].gen_ai
    assert (call.request_model, call.output_tokens, call.input_tokens) == (MODEL, 20, usage.prompt_tokens)


async def test_openai_sdk_sees_a_readable_error_from_the_sidecar(make_sidecar: SidecarFactory):
    from tests.support.tools import closed_port

    sidecar = await make_sidecar(f"http://127.0.0.1:{closed_port()}")
    client = openai.AsyncOpenAI(base_url=f"{sidecar.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    await client.close()
    assert caught.value.status_code == 502
    assert "cannot connect to the upstream" in caught.value.message
