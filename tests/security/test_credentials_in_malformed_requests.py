"""Credentials in requests (and responses) that a parser refuses never reach a record, log, span or metric.

Every credential-bearing header is sent with a byte the HTTP parser refuses (or an
obs-fold, a bare CR or LF) before, inside and after its secret, and in well-formed
requests the secrets sit in paths, query strings and header names. The upstream
answers some requests with a malformed response that echoes the caller's
credential, so the client library's parse errors are covered too. Afterwards every
byte the sidecar wrote (log with spans and access lines, spool, Elasticsearch
documents, /metrics) is searched for every 8-character piece of every secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.testing.elastic import ElasticsearchStandIn
from tests.audit.test_no_secret_leaves import WRITE_EVERYTHING
from tests.security.test_hostile_input import send_raw
from tests.support.process import SidecarProcess
from tests.support.tools import wait_for

pytestmark = pytest.mark.integration

CREDENTIAL_HEADERS = [
    ("Authorization", "Bearer {}"),
    ("Authorization", "Basic {}"),
    ("Proxy-Authorization", "Bearer {}"),
    ("Cookie", "theme=dark; session={}"),
    ("X-Api-Key", "{}"),
    ("Api-Key", "{}"),
    ("X-Auth-Token", "{}"),
]
# Each refused by aiohttp's parser when it sits inside a header line.
HOSTILE_BYTES = [b"\x7f", b"\x00", b"\x01", b"\r\n ", b"\r", b"\n\x0b"]


def _secret(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(40))


def fragments(secret: str, size: int = 8) -> set[str]:
    return {secret[start : start + size] for start in range(len(secret) - size + 1)}


async def _malformed_upstream(port_holder: list[int]) -> asyncio.Server:
    """A model server that echoes the caller's Authorization into a response aiohttp must refuse."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            target = lines[0].split(b" ")[1]
            auth = next((line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"authorization:")), b"")
            if target.startswith(b"/bad-header"):
                writer.write(b"HTTP/1.1 200 OK\r\nX-Echo: " + auth + b"\x01\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            elif target.startswith(b"/bad-chunk"):
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                             b"2\r\nok\r\n" + auth + b"\x01\r\n\r\n")  # fmt: skip
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\n{}")  # fmt: skip
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port_holder.append(server.sockets[0].getsockname()[1])
    return server


@pytest.fixture
async def malformed_upstream() -> AsyncIterator[str]:
    port: list[int] = []
    server = await _malformed_upstream(port)
    yield f"http://127.0.0.1:{port[0]}"
    server.close()
    await server.wait_closed()


async def _send_hostile_heads(port: int, rng: random.Random, secrets: list[str]) -> int:
    sent = 0
    for name, template in CREDENTIAL_HEADERS:
        for hostile in HOSTILE_BYTES:
            for position in (0, 15, 40):
                secret = _secret(rng)
                secrets.append(secret)
                value = template.format(secret[:position] + "\0" + secret[position:]).encode()
                value = value.replace(b"\0", hostile)
                if name == "Authorization" and template.startswith("Basic"):
                    value = b"Basic " + base64.b64encode(b"user:" + secret.encode())[:position] + hostile
                    secrets.append(base64.b64encode(b"user:" + secret.encode()).decode())
                head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: model\r\n" + name.encode() + b": " + value
                reply = await send_raw(port, head + b"\r\nContent-Length: 2\r\n\r\n{}", wait=5.0)
                assert reply.status in (400, 401, 200, None), reply
                sent += 1
    return sent


async def _send_well_formed(url: str, rng: random.Random, secrets: list[str]) -> int:
    sent = 0
    async with aiohttp.ClientSession() as client:
        for path in ("/v1/models/sk-proj-{}", "/v1/models?api_key={}", "/v1/models?access_token={}&x=1",
                     "/bad-header", "/bad-chunk"):  # fmt: skip
            secret = _secret(rng)
            secrets.append(secret)
            headers = {"Authorization": f"Bearer {secret}"}
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(url + path.format(secret), headers=headers) as response:
                    await response.read()
            sent += 1
    return sent


async def test_no_credential_from_a_refused_request_or_response_is_written_anywhere(
    malformed_upstream: str, tmp_path: Path
) -> None:
    rng = random.Random(16)
    secrets: list[str] = []
    async with ElasticsearchStandIn() as elastic:
        env = {**WRITE_EVERYTHING, "SIDECAR_AUDIT__ELASTICSEARCH__URL": elastic.url}
        sidecar = SidecarProcess(malformed_upstream, tmp_path, env=env)
        await sidecar.start()
        try:
            sent = await _send_hostile_heads(sidecar.port, rng, secrets)
            sent += await _send_well_formed(sidecar.url, rng, secrets)
            async with aiohttp.ClientSession() as client:
                async with client.get(f"{sidecar.admin_url}/metrics") as response:
                    metrics = await response.read()
            await wait_for(lambda: len(elastic.documents("logs-*")) >= sent, what="every request's record", timeout=60)
            sidecar.send_term()
            assert await sidecar.wait(30) == 0
        finally:
            await sidecar.stop()
        documents = elastic.documents("logs-*")
    index = json.dumps(documents, ensure_ascii=False).encode()
    written = b"\n".join(path.read_bytes() for path in sorted(tmp_path.rglob("*")) if path.is_file())
    everything = (written + b"\n" + index + b"\n" + metrics).decode("utf-8", "replace")
    leaked = sorted({secret for secret in secrets for piece in fragments(secret) if piece in everything})
    assert not leaked, f"{len(leaked)} of {len(secrets)} secrets left a piece in what the sidecar wrote"
    # Not vacuous: the refusals were recorded, with where the parser stopped.
    messages = [doc.get("error", {}).get("message", "") for doc in documents]
    assert sum("malformed HTTP request: invalid header value char at byte" in m for m in messages) >= 7
    assert any("the upstream sent an invalid response: ClientResponseError" in m for m in messages), messages
