"""Records built in memory for tests of the parts that consume them."""

from __future__ import annotations

import dataclasses
from typing import Any

from sidecar.exchange import Exchange, GenAiCall, Outcome, TokenSource

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def make_exchange(**changes: Any) -> Exchange:
    """A streamed chat completion that went well; `changes` override any field."""
    base = Exchange(
        request_id="r", started_at=1_763_900_000.25, method="POST", path="/v1/chat/completions", query="",
        scheme="http", host="h", http_version="1.1", client_address="127.0.0.1", user_agent=None,
        request_content_type=None, request_body_bytes=10, status=200, response_content_type="text/event-stream",
        response_body_bytes=100, response_chunks=5, outcome=Outcome.COMPLETED, error_type=None, error_message=None,
        duration_s=1.5, upstream_response_start_s=0.1, first_byte_s=0.1, proxy_overhead_s=0.0002,
        upstream="http://u", upstream_status=200, route="/v1/chat/completions", trace_id=TRACE_ID,
        trace_sampled=True,
        gen_ai=GenAiCall(protocol="openai", operation="chat", request_model="llama", response_model="llama-3",
                         stream=True, input_tokens=30, output_tokens=50, input_token_source=TokenSource.REPORTED,
                         output_token_source=TokenSource.REPORTED, finish_reasons=("stop",), time_to_first_token_s=0.25,
                         time_per_output_token_s=0.025, content_chunks=50, max_chunk_gap_s=0.05, parse_error=None),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)
