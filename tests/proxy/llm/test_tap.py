"""Reading model-call responses of each protocol, whole and chunked anywhere."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.exchange import TokenSource
from sidecar.proxy.llm.lines import LineSplitter
from sidecar.proxy.llm.request import RequestFacts, read_request
from sidecar.proxy.llm.routes import match_route
from sidecar.proxy.llm.tap import ResponseTap

NO_REQUEST = RequestFacts(None, None, None)


def sse(*events: object, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def ndjson(*events: object) -> bytes:
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


def chat_chunk(content: str | None, finish: str | None = None, model: str = "qwen2.5-7b") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content} if content is not None else {}, "finish_reason": finish}],
    }


def run_tap(protocol: str, operation: str, content_type: str, chunks: list[bytes], request=NO_REQUEST, path_model=None, status=200):
    tap = ResponseTap(protocol=protocol, operation=operation, path_model=path_model, start=0.0, max_line=1 << 20, max_body=1 << 20)
    tap.begin(status, content_type)
    for index, chunk in enumerate(chunks):
        tap.feed(chunk, 0.1 + index * 0.01)
    return tap.finish(0.1 + len(chunks) * 0.01, request)


OPENAI_STREAM = [
    sse(chat_chunk(""), done=False),  # role-only first chunk: not content
    sse(chat_chunk("Hel"), done=False),
    sse(chat_chunk("lo"), done=False),
    sse(chat_chunk(None, "stop"), done=False),
    sse({"id": "chatcmpl-1", "model": "qwen2.5-7b", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}),
]


def test_openai_chat_stream_with_usage():
    call = run_tap("openai", "chat", "text/event-stream; charset=utf-8", OPENAI_STREAM, RequestFacts("qwen", True, None))
    assert (call.request_model, call.response_model, call.stream) == ("qwen", "qwen2.5-7b", True)
    assert (call.input_tokens, call.output_tokens) == (12, 2)
    assert (call.input_token_source, call.output_token_source) == (TokenSource.REPORTED, TokenSource.REPORTED)
    assert call.finish_reasons == ("stop",)
    assert call.time_to_first_token_s == pytest.approx(0.11)  # the second chunk: first with content
    assert call.time_per_output_token_s == pytest.approx((0.15 - 0.11) / 1)
    assert call.content_chunks == 2
    assert call.max_chunk_gap_s == pytest.approx(0.01)
    assert call.parse_error is None


def test_openai_stream_without_usage_counts_chunks():
    call = run_tap("openai", "chat", "text/event-stream", OPENAI_STREAM[:4] + [b"data: [DONE]\n\n"])
    assert (call.output_tokens, call.output_token_source) == (2, TokenSource.COUNTED)
    assert (call.input_tokens, call.input_token_source) == (None, TokenSource.UNKNOWN)


def test_openai_completions_and_embeddings_non_streamed():
    body = json.dumps({"model": "m", "choices": [{"text": "hi", "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 16}}).encode()
    call = run_tap("openai", "text_completion", "application/json", [body[:10], body[10:]])
    assert (call.stream, call.input_tokens, call.output_tokens, call.finish_reasons) == (False, 3, 16, ("length",))
    assert call.time_to_first_token_s is None
    body = json.dumps({"object": "list", "data": [{"embedding": [0.1]}], "model": "e5", "usage": {"prompt_tokens": 8, "total_tokens": 8}}).encode()
    call = run_tap("openai", "embeddings", "application/json", [body])
    assert (call.response_model, call.input_tokens, call.output_tokens) == ("e5", 8, None)


def test_openai_responses_stream():
    chunks = [
        b"event: response.created\ndata: " + json.dumps({"type": "response.created", "response": {"model": "gpt-x", "status": "in_progress"}}).encode() + b"\n\n",
        b"event: response.output_text.delta\ndata: " + json.dumps({"type": "response.output_text.delta", "delta": "Hi"}).encode() + b"\n\n",
        b"event: response.completed\ndata: " + json.dumps({"type": "response.completed", "response": {"model": "gpt-x", "status": "completed", "usage": {"input_tokens": 5, "output_tokens": 1}}}).encode() + b"\n\n",
    ]
    call = run_tap("openai_responses", "chat", "text/event-stream", chunks)
    assert (call.response_model, call.input_tokens, call.output_tokens, call.finish_reasons) == ("gpt-x", 5, 1, ("completed",))
    assert call.time_to_first_token_s == pytest.approx(0.11)


def test_tgi_generate_stream_and_generate():
    tokens = [{"token": {"id": i, "text": t, "special": False}, "generated_text": None, "details": None} for i, t in enumerate(["a", "b", "c"])]
    final = {"token": {"id": 2, "text": "</s>", "special": True}, "generated_text": "abc", "details": {"finish_reason": "eos_token", "generated_tokens": 4, "seed": None}}
    call = run_tap("tgi", "text_completion", "text/event-stream", [sse(t, done=False) for t in tokens] + [sse(final, done=False)])
    assert (call.output_tokens, call.output_token_source, call.finish_reasons, call.content_chunks) == (4, TokenSource.REPORTED, ("eos_token",), 3)
    body = json.dumps({"generated_text": "abc", "details": {"finish_reason": "length", "generated_tokens": 20, "prefill": [{"id": 1}, {"id": 2}]}}).encode()
    call = run_tap("tgi", "text_completion", "application/json", [body])
    assert (call.input_tokens, call.output_tokens, call.finish_reasons) == (2, 20, ("length",))


def test_ollama_chat_ndjson_and_generate_json():
    events = [
        {"model": "llama3.2", "message": {"role": "assistant", "content": "Hi"}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": "!"}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 2},
    ]
    call = run_tap("ollama", "chat", "application/x-ndjson", [ndjson(e) for e in events], RequestFacts("llama3.2", None, None))
    assert (call.stream, call.input_tokens, call.output_tokens, call.finish_reasons) == (True, 26, 2, ("stop",))
    assert call.content_chunks == 2
    body = json.dumps({"model": "llama3.2", "response": "Hi!", "done": True, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 3}).encode()
    call = run_tap("ollama", "text_completion", "application/json; charset=utf-8", [body])
    assert (call.stream, call.input_tokens, call.output_tokens) == (False, 5, 3)


def test_kserve_predict_takes_the_model_from_the_path():
    route, model = match_route("POST", "/v1/models/glm-4.6v-flash:predict")
    assert (route.template, route.protocol, route.operation, model) == ("/v1/models/{model}:predict", "kserve", "predict", "glm-4.6v-flash")
    call = run_tap("kserve", "predict", "application/json", [b'{"text": "a cat"}'], path_model=model)
    assert (call.request_model, call.response_model, call.output_tokens) == ("glm-4.6v-flash", None, None)


def test_error_responses_are_not_read_as_usage():
    call = run_tap("openai", "chat", "application/json", [b'{"error": {"message": "no"}, "usage": {"prompt_tokens": 1}}'], status=400)
    assert call.input_tokens is None and call.parse_error is None


@pytest.mark.parametrize(
    "chunks, expected",
    [
        ([b'{"model": "m", "choices": ['], "response body is not JSON: JSONDecodeError"),
        ([b"data: {not json}\n\n", sse(chat_chunk("x"))], "1 stream event(s) were not valid JSON"),
        ([b'data: {"model": "\xff\xfe"}\n\n'], "1 stream event(s) were not valid JSON"),
        ([sse(chat_chunk("x"), done=False)[:-5]], "stream ended inside an event"),
    ],
)
def test_malformed_bodies_are_described_not_raised(chunks, expected):
    content_type = "application/json" if chunks[0].startswith(b"{") else "text/event-stream"
    call = run_tap("openai", "chat", content_type, chunks)
    assert expected in call.parse_error


def test_ten_megabyte_single_line_is_skipped_within_the_line_limit():
    tap = ResponseTap(protocol="openai", operation="chat", path_model=None, start=0.0, max_line=1 << 20, max_body=1 << 20)
    tap.begin(200, "text/event-stream")
    tap.feed(b"data: " + b"x" * (10 << 20), 0.1)
    tap.feed(b"\n\n" + sse(chat_chunk("ok")), 0.2)
    assert len(tap._lines._tail) == 0  # nothing of the long line was held
    call = tap.finish(0.3, NO_REQUEST)
    assert "1 stream line(s) over the parse limit" in call.parse_error
    assert call.content_chunks == 1 and call.time_to_first_token_s == pytest.approx(0.2)


def test_request_facts_from_whole_bodies_and_prefixes():
    assert read_request(b'{"model": "a", "stream": true, "messages": []}', True) == RequestFacts("a", True, None)
    assert read_request(b'{"messages": [], "model": "b\\u00e9"', False) == RequestFacts("b\u00e9", None, None)
    assert read_request(b'{"stream": false, "model": "c", "messages": [{"content": "xxxx', False) == RequestFacts("c", False, None)
    assert read_request(b"[1, 2]", True).parse_error == "request body is not a JSON object"
    assert read_request(b"\xff", True).parse_error.startswith("request body is not JSON")


@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(min_value=1, max_value=50))
@settings(max_examples=300, deadline=None)
def test_line_splitter_reads_the_same_however_the_stream_is_cut(parts, max_line):
    data = b"".join(parts)
    whole = LineSplitter(max_line)
    expected = whole.feed(data)
    cut = LineSplitter(max_line)
    got = [line for part in parts for line in cut.feed(part)]
    assert got == expected
    assert whole.flush() == cut.flush()
    assert all(len(line) <= max_line for line in got)


@given(st.binary(max_size=2000), st.sampled_from(["openai", "openai_responses", "tgi", "ollama", "kserve"]),
       st.sampled_from(["text/event-stream", "application/x-ndjson", "application/json", "text/plain", None]),
       st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
@settings(max_examples=400, deadline=None)
def test_tap_never_raises_on_arbitrary_bytes(data, protocol, content_type, cuts):
    tap = ResponseTap(protocol=protocol, operation="chat", path_model=None, start=0.0, max_line=256, max_body=512)
    tap.begin(200, content_type)
    previous = 0
    for cut in sorted(cuts) + [len(data)]:
        tap.feed(data[previous:cut], 0.1)
        previous = max(previous, cut)
    call = tap.finish(0.2, read_request(data[:100], False))
    assert call.protocol == protocol


@given(st.lists(st.sampled_from([chat_chunk("a"), chat_chunk("bc"), chat_chunk(None, "stop"), {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}]), max_size=20),
       st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
@settings(max_examples=200, deadline=None)
def test_openai_stream_reads_the_same_however_it_is_chunked(events, cuts):
    data = sse(*events)
    whole = run_tap("openai", "chat", "text/event-stream", [data])
    pieces, previous = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        pieces.append(data[previous:cut])
        previous = max(previous, cut)
    chunked = run_tap("openai", "chat", "text/event-stream", pieces)
    assert (chunked.output_tokens, chunked.input_tokens, chunked.finish_reasons, chunked.content_chunks) == (
        whole.output_tokens, whole.input_tokens, whole.finish_reasons, whole.content_chunks)
    assert chunked.parse_error is None


def test_ndjson_last_object_without_its_newline_is_still_read():
    events = [{"model": "m", "response": "a", "done": False},
              {"model": "m", "response": "", "done": True, "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 42}]  # fmt: skip
    body = ndjson(*events).rstrip(b"\n")
    call = run_tap("ollama", "text_completion", "application/x-ndjson", [body[:30], body[30:]])
    assert (call.input_tokens, call.output_tokens, call.finish_reasons, call.parse_error) == (7, 42, ("stop",), None)


def test_sse_data_split_over_several_lines_is_one_event():
    event = json.dumps(chat_chunk("hi", "stop"), indent=1).encode()  # a pretty-printed event: several data lines
    body = b"".join(b"data: " + line + b"\n" for line in event.split(b"\n")) + b"\n" + b"data: [DONE]\n\n"
    call = run_tap("openai", "chat", "text/event-stream", [body[:17], body[17:]])
    assert (call.content_chunks, call.finish_reasons, call.parse_error) == (1, ("stop",), None)


def test_an_event_the_stream_ends_inside_is_discarded_as_sse_says():
    call = run_tap("openai", "chat", "text/event-stream", [b"data: " + json.dumps(chat_chunk("x")).encode() + b"\n"])
    assert call.content_chunks == 0 and "stream ended inside an event" in call.parse_error


def test_absurdly_nested_json_is_described_not_raised():
    nested = b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert read_request(nested, True).parse_error == "request body is not JSON: RecursionError"
    call = run_tap("openai", "chat", "text/event-stream", [b"data: " + nested + b"\n\n"])
    assert "1 stream event(s) were not valid JSON" in call.parse_error
    call = run_tap("openai", "chat", "application/json", [nested])
    assert "response body is not JSON: RecursionError" in call.parse_error
