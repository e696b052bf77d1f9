"""A short burst of mixed model-server traffic, in every protocol the sidecar reads."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Call:
    label: str
    method: str
    path: str
    body: dict | None


def mixed_calls(model: str) -> list[Call]:
    chat = [{"role": "user", "content": "Tell me about GPUs."}]
    return [
        Call("chat, streamed", "POST", "/v1/chat/completions",
             {"model": model, "messages": chat, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 32}),
        Call("chat", "POST", "/v1/chat/completions", {"model": model, "messages": chat, "max_tokens": 24}),
        Call("completion, streamed", "POST", "/v1/completions", {"model": model, "prompt": "Once upon a time", "stream": True, "max_tokens": 24}),
        Call("KServe predict", "POST", f"/v1/models/{model}:predict",
             {"prompt": "Describe the image.", "image_url": "https://example.com/cat.png", "max_tokens": 16}),
        Call("TGI generate_stream", "POST", "/generate_stream", {"inputs": "Hello", "parameters": {"max_new_tokens": 16}}),
        Call("Ollama chat", "POST", "/api/chat", {"model": model, "messages": chat, "options": {"num_predict": 16}}),
        Call("models", "GET", "/v1/models", None),
        Call("unknown model (404)", "POST", "/v1/chat/completions", {"model": "no-such-model", "messages": chat}),
    ]  # fmt: skip


async def send_burst(base_url: str, model: str, rounds: int = 1) -> list[tuple[str, int, float, int]]:
    """Send the mixed calls `rounds` times, concurrently; (label, status, seconds, bytes) for each."""
    results: list[tuple[str, int, float, int]] = []
    async with aiohttp.ClientSession() as client:

        async def one(call: Call) -> None:
            started = time.perf_counter()
            async with client.request(call.method, base_url + call.path, json=call.body) as response:
                size = len(await response.read())
            results.append((call.label, response.status, time.perf_counter() - started, size))

        for _ in range(rounds):
            await asyncio.gather(*(one(call) for call in mixed_calls(model)))
    return results
