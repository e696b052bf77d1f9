"""Scenario (e): audit events per second through redaction, the chain and the spool into Elasticsearch.

The pipeline runs as in the sidecar (writer thread, spool on disk, bulk
delivery with the official client) and is fed model-call Exchanges as fast
as it takes them; the Elasticsearch stand-in runs in its own process so
that its parsing does not share this process's GIL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from sidecar import __version__
from sidecar.audit.build import build_pipeline, build_redactor
from sidecar.audit.events import AuditIdentity
from sidecar.config import load_config
from sidecar.exchange import Exchange, GenAiCall, Outcome, TokenSource


def _exchange(number: int) -> Exchange:
    return Exchange(
        request_id=f"{number:032x}", started_at=time.time(), method="POST", path="/v1/chat/completions",
        query="", scheme="http", host="127.0.0.1:8080", http_version="1.1", client_address="10.0.0.7",
        user_agent="OpenAI/Python 1.54.0", request_content_type="application/json", request_body_bytes=412,
        status=200, response_content_type="text/event-stream", response_body_bytes=5120, response_chunks=64,
        outcome=Outcome.COMPLETED, error_type=None, error_message=None, duration_s=1.2,
        upstream_response_start_s=0.05, first_byte_s=0.0502, proxy_overhead_s=0.0003,
        upstream="http://127.0.0.1:8000", upstream_status=200, route="/v1/chat/completions",
        gen_ai=GenAiCall(protocol="openai", operation="chat", request_model="llama-3.1-8b", response_model="llama-3.1-8b",
                         stream=True, input_tokens=120, output_tokens=60, input_token_source=TokenSource.REPORTED,
                         output_token_source=TokenSource.REPORTED, finish_reasons=("stop",), time_to_first_token_s=0.08,
                         time_per_output_token_s=0.019, content_chunks=60, max_chunk_gap_s=0.03, parse_error=None),
        trace_id=os.urandom(16).hex(), span_id=os.urandom(8).hex(), trace_sampled=True,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_stand_in(check_mappings: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.testing.elastic", "--port", str(port)]
        + ([] if check_mappings else ["--no-mapping-checks"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(process.pid, {1})  # off the core the pipeline runs on
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as client:
        while True:
            try:
                async with client.get(url) as response:
                    if response.status == 200:
                        return process, url
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the Elasticsearch stand-in did not start")
            await asyncio.sleep(0.05)


async def audit_throughput(events: int, fsync: str, scratch: Path, check_mappings: bool = False) -> dict[str, Any]:
    """Feed `events` Exchanges; time until all are in the spool and until all are in the index.

    The stand-in's mapper is Python and caps ingest near 3,500 documents a
    second, so by default it stores without mapping checks: the figure is then
    the pipeline's, not the stand-in's.
    """
    process, url = await _start_stand_in(check_mappings)
    try:
        config = load_config(
            None,
            env={},
            flags={
                ("data_dir",): str(scratch / f"audit-{fsync}-{int(check_mappings)}"),
                ("audit", "elasticsearch", "url"): url,
                ("audit", "spool", "fsync"): fsync,
            },
        )
        identity = AuditIdentity("inference-sidecar", "bench", __version__, socket.gethostname(), "sidecar.audit", "default")
        pipeline = build_pipeline(config, identity, build_redactor(config.audit.redaction, scratch / "keys"))
        await pipeline.start()
        exchanges = [_exchange(number) for number in range(1000)]
        baseline = pipeline.stats.accepted
        started = time.perf_counter()
        for number in range(events):
            pipeline(exchanges[number % 1000])
            if number % 500 == 499:
                # Let the writer and the delivery task run; back off when the queue is deep.
                await asyncio.sleep(0 if pipeline.queue_length < 20_000 else 0.005)
        while pipeline.stats.accepted - baseline < events:
            await asyncio.sleep(0.001)
        spooled = time.perf_counter() - started
        while pipeline.spool.committed_offset < pipeline.spool.next_offset:
            await asyncio.sleep(0.005)
        delivered = time.perf_counter() - started
        stored = pipeline.sink.stored
        await pipeline.stop()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
    return {
        "events": events,
        "fsync": fsync,
        "spool_events_per_s": events / spooled,
        "delivered_events_per_s": events / delivered,
        "stored": stored,
        "batch_size": config.audit.elasticsearch.batch_size,
        "mapping_checks": check_mappings,
    }
