"""The demo model server: the tiny model behind the protocols real servers speak.

- OpenAI-compatible `/v1/chat/completions` and `/v1/completions`, streamed
  (SSE ending in `data: [DONE]`, usage in a last chunk when asked with
  `stream_options.include_usage`) or not, and `/v1/models`;
- KServe v1 `POST /v1/models/{name}:predict` with `{"prompt", "image_url"}` -> `{"text"}`;
- TGI `/generate` and `/generate_stream`; Ollama `/api/generate` and `/api/chat` (NDJSON);
- `/health`, and `/metrics` with vLLM's metric names for queue depth, KV-cache
  use and token counts.

The OpenAI endpoints honour `max_completion_tokens` and `max_tokens` (the first
wins when both are given, as in vLLM; default 64; exactly that many tokens
unless a stop sequence ends the answer first), `stop` (a string or up to 4; the
text ends before it, finish_reason "stop", streamed too), `seed` (same seed,
same text; none: random), `temperature` (0 to 2, default 0.8; 0 is greedy) and
`n` (1 only). A wrong type or range is answered 400 in vLLM's error body,
`{"error": {"message", "type": "BadRequestError", "param", "code": 400}}`,
naming the parameter; other fields are ignored, as vLLM ignores fields it does
not know. One token is one byte, so `usage` counts bytes.

Forward passes run on one worker thread, one token at a time, interleaving the
requests in flight (so concurrent requests share the model as with continuous
batching, without batching). For tests it records, per `X-Request-Id`, the
wall-clock time it wrote each request's first token (`/debug/timings/{id}`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from sidecar.demo.model import Generation, TinyDecoder, encode
from sidecar.demo.sampling import BadRequest, openai_sampling

DEFAULT_MODEL_NAME = "sidecar-demo-tiny"
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass
class DemoSettings:
    model_name: str = DEFAULT_MODEL_NAME
    device: str = "auto"
    tokens_per_second: float = 0.0
    """Pace generation to this rate (0: as fast as the device goes)."""
    default_max_tokens: int = 64
    seed: int = 1234
    threads: int = 1
    """torch intra-op threads on the CPU: one is plenty for a model this small, and leaves
    the other cores to the sidecar and clients sharing the machine."""


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to torch")
    return torch.device(choice)


class DemoModelServer:
    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        torch.set_num_threads(max(1, settings.threads))
        self.model = TinyDecoder(seed=settings.seed).to(self.device).eval()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-model")
        self.first_token_sent: OrderedDict[str, float] = OrderedDict()
        self._running = 0
        self._waiting = 0
        self._cache_tokens = 0
        self.registry = CollectorRegistry()
        self._prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", ["model_name"], registry=self.registry)
        self._generation_tokens = Counter("vllm:generation_tokens", "Generation tokens processed.", ["model_name"], registry=self.registry)
        self._ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", ["model_name"], buckets=_TTFT_BUCKETS, registry=self.registry)
        Gauge("vllm:num_requests_running", "Requests generating now.", ["model_name"], registry=self.registry).labels(settings.model_name).set_function(lambda: self._running)
        Gauge("vllm:num_requests_waiting", "Requests waiting for the model.", ["model_name"], registry=self.registry).labels(settings.model_name).set_function(lambda: self._waiting)
        Gauge("vllm:gpu_cache_usage_perc", "KV-cache use, 0 to 1 (of 64 full contexts).", ["model_name"], registry=self.registry).labels(settings.model_name).set_function(
            lambda: min(1.0, self._cache_tokens / (64 * self.model.shape.context))
        )

    # --- application ---------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._errors])
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/models/{name}:predict", self.predict)
        app.router.add_post("/generate", self.tgi_generate)
        app.router.add_post("/generate_stream", self.tgi_generate_stream)
        app.router.add_post("/api/generate", self.ollama_generate)
        app.router.add_post("/api/chat", self.ollama_chat)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/debug/timings/{request_id}", self.timings)
        app.on_cleanup.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConnectionError:
            # The client left mid-answer: nothing to send, nothing to log.
            return web.Response(status=499)
        except BadRequest as exc:
            # vLLM's error body: OpenAI's {"error": {...}} with vLLM's type and a numeric code.
            return web.json_response({"error": {"message": str(exc), "type": "BadRequestError", "param": exc.param, "code": 400}}, status=400)

    # --- generation ------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _check_model(self, name: object) -> None:
        if name is not None and name != self.settings.model_name:
            raise web.HTTPNotFound(
                text=json.dumps({"error": {"message": f"The model `{name}` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}}),
                content_type="application/json",
            )

    def _generation(self, prompt: str, body: dict[str, Any], max_key: str = "max_tokens") -> Generation:
        """A generation for the KServe, TGI and Ollama endpoints, from their looser parameters."""
        max_tokens = body.get(max_key, self.settings.default_max_tokens)
        temperature = body.get("temperature", 0.8)
        seed = body.get("seed")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise BadRequest(f"{max_key} must be a non-negative integer", max_key)
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise BadRequest("temperature must be a number", "temperature")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise BadRequest("seed must be an integer", "seed")
        return Generation(self.model, encode(prompt, self.model.shape.context // 2), max_tokens, float(temperature), seed, self.device)

    def _openai_generation(self, prompt: str, body: dict[str, Any]) -> Generation:
        sampling = openai_sampling(body, self.settings.default_max_tokens)
        tokens = encode(prompt, self.model.shape.context // 2)
        context = self.model.shape.context
        if len(tokens) + sampling.max_tokens > context:
            # vLLM refuses rather than shortens, so `usage.completion_tokens` never falls short of the request silently.
            raise BadRequest(f"'max_tokens' or 'max_completion_tokens' is too large: {sampling.max_tokens}. This model's maximum context length is "
                             f"{context} tokens and your request has {len(tokens)} input tokens ({sampling.max_tokens} > {context} - {len(tokens)}).",
                             sampling.max_tokens_param)  # fmt: skip
        return Generation(self.model, tokens, sampling.max_tokens, sampling.temperature, sampling.seed, self.device, stop=sampling.stop)

    async def _tokens(self, generation: Generation, request: web.Request) -> AsyncIterator[str]:
        """Each generated token's text, paced and recorded; one forward pass per token."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.settings.tokens_per_second if self.settings.tokens_per_second else 0.0
        started = loop.time()
        first = True
        cached = 0  # KV-cache tokens this request added to the gauge; exactly these come off again
        self._prompt_tokens.labels(self.settings.model_name).inc(generation.prompt_tokens)
        self._waiting += 1
        try:
            while generation.finish_reason is None:
                text = await loop.run_in_executor(self._worker, generation.step)
                if first:
                    self._waiting -= 1
                    self._running += 1
                    self._ttft.labels(self.settings.model_name).observe(loop.time() - started)
                growth = generation.kv_cache_tokens - cached
                self._cache_tokens += growth
                cached += growth
                self._generation_tokens.labels(self.settings.model_name).inc()
                if interval:
                    await asyncio.sleep(max(0.0, started + generation.generated * interval - loop.time()))
                yield text
                if first:
                    self._record_first_token(request)
                    first = False
        finally:
            if first:
                self._waiting -= 1
            else:
                self._running -= 1
            self._cache_tokens -= cached

    def _record_first_token(self, request: web.Request) -> None:
        request_id = request.headers.get("X-Request-Id")
        if request_id:
            self.first_token_sent[request_id] = time.time()
            while len(self.first_token_sent) > 10_000:
                self.first_token_sent.popitem(last=False)

    async def _complete(self, generation: Generation, request: web.Request) -> str:
        return "".join([text async for text in self._tokens(generation, request)])

    @staticmethod
    async def _sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, event: object) -> None:
        await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")

    # --- OpenAI ---------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        self._check_model(body.get("model"))
        prompt = _chat_prompt(body.get("messages")) + "assistant: "
        return await self._openai(request, body, prompt, "chat.completion")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        self._check_model(body.get("model"))
        return await self._openai(request, body, _string(body, "prompt"), "text_completion")

    async def _openai(self, request: web.Request, body: dict[str, Any], prompt: str, kind: str) -> web.StreamResponse:
        generation = self._openai_generation(prompt, body)
        call_id = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        model = self.settings.model_name
        chat = kind == "chat.completion"

        def usage() -> dict[str, int]:
            return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.generated,
                    "total_tokens": generation.prompt_tokens + generation.generated}  # fmt: skip

        if not body.get("stream"):
            text = await self._complete(generation, request)
            choice: dict[str, Any] = {"index": 0, "finish_reason": generation.finish_reason, "logprobs": None}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return web.json_response({"id": call_id, "object": kind, "created": created, "model": model,
                                      "choices": [choice], "usage": usage()})  # fmt: skip

        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        response = await self._sse(request)

        def chunk(content: dict[str, Any]) -> dict[str, Any]:
            return {"id": call_id, "object": chunk_kind, "created": created, "model": model, "choices": [content]}

        if chat:
            await self._send(response, chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
        async for text in self._tokens(generation, request):
            delta = {"delta": {"content": text}} if chat else {"text": text}
            await self._send(response, chunk({"index": 0, **delta, "finish_reason": None}))
        final = {"delta": {}} if chat else {"text": ""}
        await self._send(response, chunk({"index": 0, **final, "finish_reason": generation.finish_reason}))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await self._send(response, {"id": call_id, "object": chunk_kind, "created": created, "model": model, "choices": [], "usage": usage()})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.settings.model_name, "object": "model", "created": 0, "owned_by": "inference-sidecar",
             "max_model_len": self.model.shape.context}]})  # fmt: skip

    # --- KServe v1 -------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.Response:
        self._check_model(request.match_info["name"])
        body = await self._json(request)
        prompt = _string(body, "prompt")
        image = body.get("image_url")
        if image is not None and not isinstance(image, str):
            raise BadRequest("image_url must be a string", "image_url")
        # The tiny model has no vision tower; the image only conditions the prompt.
        conditioned = f"[image: {image[:64]}]\n{prompt}" if image else prompt
        text = await self._complete(self._generation(conditioned, body), request)
        return web.json_response({"text": text})

    # --- TGI -------------------------------------------------------------------

    def _tgi_generation(self, body: dict[str, Any]) -> Generation:
        inputs = _string(body, "inputs")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest("parameters must be an object", "parameters")
        return self._generation(inputs, {**parameters, "temperature": parameters.get("temperature", 0.8)}, "max_new_tokens")

    async def tgi_generate(self, request: web.Request) -> web.Response:
        generation = self._tgi_generation(await self._json(request))
        text = await self._complete(generation, request)
        return web.json_response({"generated_text": text, "details": {
            "finish_reason": generation.finish_reason, "generated_tokens": generation.generated, "seed": None}})  # fmt: skip

    async def tgi_generate_stream(self, request: web.Request) -> web.StreamResponse:
        generation = self._tgi_generation(await self._json(request))
        response = await self._sse(request)
        index = 0
        produced = ""
        async for text in self._tokens(generation, request):
            produced += text
            done = generation.finish_reason is not None
            await self._send(response, {
                "index": index, "token": {"id": index, "text": text, "logprob": 0.0, "special": False},
                "generated_text": produced if done else None,
                "details": {"finish_reason": generation.finish_reason, "generated_tokens": generation.generated, "seed": None} if done else None,
            })  # fmt: skip
            index += 1
        await response.write_eof()
        return response

    # --- Ollama ----------------------------------------------------------------

    async def ollama_generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        self._check_model(body.get("model"))
        return await self._ollama(request, body, _string(body, "prompt"), lambda text: {"response": text})

    async def ollama_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        self._check_model(body.get("model"))
        prompt = _chat_prompt(body.get("messages"))
        return await self._ollama(request, body, prompt, lambda text: {"message": {"role": "assistant", "content": text}})

    async def _ollama(self, request: web.Request, body: dict[str, Any], prompt: str, content: Callable[[str], dict[str, Any]]) -> web.StreamResponse:
        options = body.get("options") or {}
        generation = self._generation(prompt, {**options, "max_tokens": options.get("num_predict", self.settings.default_max_tokens)})
        started = time.perf_counter_ns()

        def final(text: str) -> dict[str, Any]:
            return {"model": self.settings.model_name, "created_at": _now_iso(), **content(text), "done": True,
                    "done_reason": generation.finish_reason, "total_duration": time.perf_counter_ns() - started,
                    "prompt_eval_count": generation.prompt_tokens, "eval_count": generation.generated}  # fmt: skip

        if body.get("stream") is False:
            return web.json_response(final(await self._complete(generation, request)))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async for text in self._tokens(generation, request):
            event = {"model": self.settings.model_name, "created_at": _now_iso(), **content(text), "done": False}
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write(json.dumps(final("")).encode() + b"\n")
        await response.write_eof()
        return response

    # --- operations ------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(self.registry))
        response.headers["Content-Type"] = content_type
        return response

    async def timings(self, request: web.Request) -> web.Response:
        sent = self.first_token_sent.get(request.match_info["request_id"])
        if sent is None:
            raise web.HTTPNotFound()
        return web.json_response({"first_token_sent_at": sent})


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string", key)
    return value


def _chat_prompt(messages: object) -> str:
    """Messages as `role: text` lines, the prompt the tiny model continues."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    return "".join(f"{m.get('role', 'user')}: {_text_of(m.get('content'))}\n" for m in messages if isinstance(m, dict))


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def serve_demo_model(settings: DemoSettings, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the demo model server; returns its runner and the bound port."""
    server = DemoModelServer(settings)
    # A client that leaves cancels its request, so the model stops generating
    # for nobody, as vLLM does when the connection closes.
    runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]
