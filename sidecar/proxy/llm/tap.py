"""Reads response chunks, as they pass, into a GenAiCall.

One tap per model call. The proxy calls `feed` after each chunk has been
written to the client and `finish` once at the end. Each protocol's events are
read by a small function that knows where that server puts the model name,
the content, the finish reason and the token counts:

- OpenAI-compatible (vLLM, SGLang, llama.cpp, TGI Messages API, Ollama /v1):
  `choices[].delta.content` / `choices[].text`, `choices[].finish_reason`,
  `usage.prompt_tokens` / `usage.completion_tokens` (in the last chunk when the
  client asked for `stream_options.include_usage`), SSE ending in `data: [DONE]`.
- OpenAI Responses: `response.output_text.delta` events, usage in `response.completed`.
- TGI: `token.text`, `details.generated_tokens` and `details.finish_reason`.
- Ollama: NDJSON `response` / `message.content`, `prompt_eval_count`,
  `eval_count` and `done_reason` in the `done` object.
- KServe v1 `:predict`: `{"text": ...}` or `{"predictions": ...}`, `usage` if the server adds it.

Malformed JSON, invalid UTF-8, truncated streams and oversized lines are
counted and described in `parse_error`; they never raise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sidecar.exchange import GenAiCall, TokenSource, well_formed
from sidecar.proxy.llm.lines import LineSplitter
from sidecar.proxy.llm.request import RequestFacts

_SSE, _NDJSON, _JSON, _NONE = "sse", "ndjson", "json", "none"


class _Reading:
    """What the events said so far (mutable; one per tap)."""

    __slots__ = ("model", "input_tokens", "output_tokens", "finish_reasons", "content_events")

    def __init__(self) -> None:
        self.model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.finish_reasons: list[str] = []
        self.content_events = 0

    def usage(self, usage: object, input_key: str, output_key: str) -> None:
        if isinstance(usage, dict):
            value = usage.get(input_key)
            if isinstance(value, int) and not isinstance(value, bool):
                self.input_tokens = value
            value = usage.get(output_key)
            if isinstance(value, int) and not isinstance(value, bool):
                self.output_tokens = value

    def finish(self, reason: object) -> None:
        if isinstance(reason, str) and reason and len(self.finish_reasons) < 16:
            self.finish_reasons.append(well_formed(reason) or "")

    def set_model(self, model: object) -> None:
        if isinstance(model, str) and model:
            self.model = model


def _openai(event: dict[str, Any], reading: _Reading) -> bool:
    reading.set_model(event.get("model"))
    content = False
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or delta.get("tool_calls"):
                    content = True
            elif choice.get("text"):
                content = True
            reading.finish(choice.get("finish_reason"))
    reading.usage(event.get("usage"), "prompt_tokens", "completion_tokens")
    return content


def _openai_responses(event: dict[str, Any], reading: _Reading) -> bool:
    kind = event.get("type")
    if kind == "response.output_text.delta":
        return bool(event.get("delta"))
    response = event.get("response") if isinstance(event.get("response"), dict) else event
    if kind is None or kind in ("response.completed", "response.incomplete", "response.failed"):
        reading.set_model(response.get("model"))
        reading.usage(response.get("usage"), "input_tokens", "output_tokens")
        status = response.get("status")
        if kind is not None or status in ("completed", "incomplete", "failed"):
            reading.finish(status)
    return False


def _tgi(event: dict[str, Any], reading: _Reading) -> bool:
    details = event.get("details")
    if isinstance(details, dict):
        reading.finish(details.get("finish_reason"))
        generated = details.get("generated_tokens")
        if isinstance(generated, int) and not isinstance(generated, bool):
            reading.output_tokens = generated
        prefill = details.get("prefill")
        if isinstance(prefill, list) and prefill:
            reading.input_tokens = len(prefill)
    token = event.get("token")
    return isinstance(token, dict) and not token.get("special") and bool(token.get("text"))


def _ollama(event: dict[str, Any], reading: _Reading) -> bool:
    reading.set_model(event.get("model"))
    message = event.get("message")
    content = bool(event.get("response")) or (isinstance(message, dict) and bool(message.get("content")))
    if event.get("done") is True or "prompt_eval_count" in event:
        reading.usage(event, "prompt_eval_count", "eval_count")
        reading.finish(event.get("done_reason"))
    return content


def _kserve(event: dict[str, Any], reading: _Reading) -> bool:
    reading.set_model(event.get("model") or event.get("model_name"))
    reading.usage(event.get("usage"), "prompt_tokens", "completion_tokens")
    return bool(event.get("text") or event.get("predictions"))


_READERS: dict[str, Callable[[dict[str, Any], _Reading], bool]] = {
    "openai": _openai,
    "openai_responses": _openai_responses,
    "tgi": _tgi,
    "ollama": _ollama,
    "kserve": _kserve,
}


class ResponseTap:
    """Follows one model call's response body; produces its GenAiCall at the end."""

    def __init__(
        self,
        *,
        protocol: str,
        operation: str,
        path_model: str | None,
        start: float,
        max_line: int,
        max_body: int,
    ) -> None:
        self._protocol = protocol
        self._operation = operation
        self._path_model = path_model
        self._start = start
        self._max_body = max_body
        self._read = _READERS[protocol]
        self._reading = _Reading()
        self._mode = _NONE
        self._lines = LineSplitter(max_line)
        self._body: list[bytes] = []
        self._body_size = 0
        self._first_content: float | None = None
        self._last_content: float | None = None
        self._max_gap: float | None = None
        self._malformed = 0
        self._errors: list[str] = []
        self._max_line = max_line
        self._data_lines: list[bytes] = []
        self._data_size = 0

    def begin(self, status: int, content_type: str | None) -> None:
        """Decide how to read the body from the response head."""
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        if not 200 <= status < 300:
            self._mode = _NONE
        elif kind == "text/event-stream":
            self._mode = _SSE
        elif kind in ("application/x-ndjson", "application/jsonl", "application/json-seq"):
            self._mode = _NDJSON
        elif kind == "application/json" or kind.endswith("+json"):
            self._mode = _JSON
        else:
            self._mode = _NONE
            if kind:
                self._errors.append(f"response content type {kind!r} is not read")

    def feed(self, chunk: bytes, now: float) -> None:
        try:
            if self._mode == _SSE:
                self._events(self._sse_payloads(self._lines.feed(chunk)), now)
            elif self._mode == _NDJSON:
                self._events(self._lines.feed(chunk), now)
            elif self._mode == _JSON:
                self._body_size += len(chunk)
                if self._body_size <= self._max_body:
                    self._body.append(chunk)
        except Exception as exc:  # a parser bug must never reach the request path
            self._errors.append(f"response parser failed: {exc.__class__.__name__}")
            self._mode = _NONE

    def _sse_payloads(self, lines: list[bytes]) -> list[bytes]:
        """Complete events' data, as the SSE spec dispatches them: the `data:` lines of an
        event joined by newlines, at the blank line that ends it."""
        payloads = []
        for line in lines:
            if not line:
                if self._data_lines:
                    payload = b"\n".join(self._data_lines)
                    self._data_lines = []
                    self._data_size = 0
                    if payload != b"[DONE]":
                        payloads.append(payload)
            elif line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                self._data_size += len(value)
                if self._data_size > self._max_line:
                    self._lines.oversized_lines += 1
                    self._data_lines, self._data_size = [], 0
                else:
                    self._data_lines.append(value)
        return payloads

    def _events(self, payloads: list[bytes], now: float) -> None:
        content = False
        for payload in payloads:
            if not payload.strip():
                continue
            try:
                event = json.loads(payload)
            except (ValueError, RecursionError):  # includes invalid UTF-8 and absurd nesting
                self._malformed += 1
                continue
            if isinstance(event, dict) and self._read(event, self._reading):
                content = True
                self._reading.content_events += 1
        if content:
            if self._first_content is None:
                self._first_content = now
            elif self._last_content is not None:
                gap = now - self._last_content
                if self._max_gap is None or gap > self._max_gap:
                    self._max_gap = gap
            self._last_content = now

    def finish(self, end: float, request: RequestFacts) -> GenAiCall:
        """The call as read; `request` is parsed only now, after the last byte was relayed."""
        reading = self._reading
        if request.parse_error:
            self._errors.insert(0, request.parse_error)
        streamed = self._mode in (_SSE, _NDJSON)
        try:
            if self._mode == _JSON:
                self._read_whole_body()
            elif self._mode == _NDJSON:
                # A last object without its newline is still a whole object.
                tail = self._lines.flush()
                if tail is not None:
                    self._events([tail], end)
            elif self._mode == _SSE and (self._lines.flush() is not None or self._data_lines):
                # SSE discards an event that the stream ends inside; so does this reader.
                self._errors.append("stream ended inside an event")
        except Exception as exc:
            self._errors.append(f"response parser failed: {exc.__class__.__name__}")
        if self._lines.oversized_lines:
            self._errors.append(f"{self._lines.oversized_lines} stream line(s) over the parse limit were not read")
        if self._malformed:
            self._errors.append(f"{self._malformed} stream event(s) were not valid JSON")

        output_tokens, output_source = reading.output_tokens, TokenSource.REPORTED
        if output_tokens is None:
            if streamed and reading.content_events:
                output_tokens, output_source = reading.content_events, TokenSource.COUNTED
            else:
                output_source = TokenSource.UNKNOWN
        ttft = None if self._first_content is None else self._first_content - self._start
        tpot = None
        if ttft is not None and output_tokens is not None and output_tokens > 1:
            tpot = (end - self._start - ttft) / (output_tokens - 1)
        return GenAiCall(
            protocol=self._protocol,
            operation=self._operation,
            request_model=well_formed(request.model or self._path_model),
            response_model=well_formed(reading.model),
            stream=streamed,
            input_tokens=reading.input_tokens,
            output_tokens=output_tokens,
            input_token_source=TokenSource.REPORTED if reading.input_tokens is not None else TokenSource.UNKNOWN,
            output_token_source=output_source,
            finish_reasons=tuple(reading.finish_reasons),
            time_to_first_token_s=ttft,
            time_per_output_token_s=tpot,
            content_chunks=reading.content_events,
            max_chunk_gap_s=self._max_gap,
            parse_error="; ".join(self._errors) or None,
        )

    def _read_whole_body(self) -> None:
        if self._body_size > self._max_body:
            self._errors.append(f"response body of {self._body_size} bytes is over the parse limit of {self._max_body}")
            return
        if not self._body_size:
            return
        try:
            document = json.loads(b"".join(self._body))
        except (ValueError, RecursionError) as exc:
            self._errors.append(f"response body is not JSON: {exc.__class__.__name__}")
            return
        if isinstance(document, dict):
            self._read(document, self._reading)
        elif isinstance(document, list) and document and isinstance(document[0], dict):
            self._read(document[0], self._reading)  # TGI's / route answers a list
