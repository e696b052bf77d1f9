"""A short burst of mixed model-server traffic, in every protocol the sidecar reads.

    sent = await send_burst("http://127.0.0.1:8080", "sidecar-demo-tiny", api_key=key)
    sent[0].trace_id   # each call carries a W3C traceparent of a fresh trace
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Call:
    label: str
    method: str
    path: str
    body: dict | None


@dataclass(frozen=True, order=True)
class Sent:
    """One call as it went: what the client saw, and the trace it started."""

    label: str
    status: int
    seconds: float
    size: int
    trace_id: str


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


def try_it_call(model: str) -> Call:
    """The request the tour invites a user to send: a streamed chat of the server's default length."""
    return Call("chat, streamed, default length", "POST", "/v1/chat/completions",
                {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


def new_traceparent() -> tuple[str, str]:
    """(trace id, traceparent header) of a new sampled trace, as an instrumented client starts one."""
    trace_id = os.urandom(16).hex()
    return trace_id, f"00-{trace_id}-{os.urandom(8).hex()}-01"


async def send_calls(base_url: str, calls: list[Call], *, api_key: str | None = None) -> list[Sent]:
    """Send `calls` concurrently, each in a trace of its own and with `api_key` as a Bearer token."""
    async with aiohttp.ClientSession() as client:

        async def one(call: Call) -> Sent:
            trace_id, traceparent = new_traceparent()
            headers = {"traceparent": traceparent}
            if api_key:
                headers["Authorization"] = f"Bearer {api_key}"
            started = time.perf_counter()
            async with client.request(call.method, base_url + call.path, json=call.body, headers=headers) as response:
                size = len(await response.read())
            return Sent(call.label, response.status, time.perf_counter() - started, size, trace_id)

        return list(await asyncio.gather(*(one(call) for call in calls)))


async def send_burst(base_url: str, model: str, rounds: int = 1, *, api_key: str | None = None) -> list[Sent]:
    """Send the mixed calls `rounds` times, each round concurrently."""
    sent: list[Sent] = []
    for _ in range(rounds):
        sent.extend(await send_calls(base_url, mixed_calls(model), api_key=api_key))
    return sent
