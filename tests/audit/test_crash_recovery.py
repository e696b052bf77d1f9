"""`kill -9` of a real sidecar process while Elasticsearch hangs, then a restart.

With `spool.fsync: always` and `hold_response: true`, no client sees a
complete response before its record is fsynced in the spool, so every
request that got an answer must be in the index once the restarted sidecar
has delivered the spool.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from sidecar.audit.verify import verify_documents
from sidecar.testing.elastic import ElasticsearchStandIn
from tests.support.process import SidecarProcess
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

pytestmark = pytest.mark.integration

TARGET = "logs-sidecar.audit-default"


async def _load_until(url: str, stop: asyncio.Event, answered: list[str], concurrency: int = 16) -> None:
    async def worker(client: aiohttp.ClientSession, number: int) -> None:
        sequence = 0
        while not stop.is_set():
            request_id = f"req-{number}-{sequence}"
            sequence += 1
            try:
                async with client.get(f"{url}/echo/{request_id}", headers={"X-Request-Id": request_id}) as response:
                    await response.read()
                    if response.status == 200:
                        answered.append(request_id)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # the sidecar died under us: this request got no answer

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        await asyncio.gather(*(worker(client, n) for n in range(concurrency)))


async def test_every_answered_request_survives_kill_9(upstream: TestUpstream, tmp_path: Path) -> None:
    async with ElasticsearchStandIn() as elastic:
        env = {
            "SIDECAR_AUDIT__ELASTICSEARCH__URL": elastic.url,
            "SIDECAR_AUDIT__ELASTICSEARCH__BATCH_AGE": "20ms",
            "SIDECAR_AUDIT__ELASTICSEARCH__REQUEST_TIMEOUT": "60s",
            "SIDECAR_AUDIT__ELASTICSEARCH__MAX_BACKOFF": "500ms",
            "SIDECAR_AUDIT__SPOOL__FSYNC": "always",
            "SIDECAR_AUDIT__HOLD_RESPONSE": "true",
        }
        elastic.faults.hang(True)
        sidecar = SidecarProcess(upstream.url, tmp_path, env=env)
        await sidecar.start()
        try:
            stop = asyncio.Event()
            answered: list[str] = []
            load = asyncio.create_task(_load_until(sidecar.url, stop, answered))
            await wait_for(lambda: len(answered) >= 500, timeout=30, what="500 answered requests")
            sidecar.send_kill()
            await sidecar.wait(10)
            stop.set()
            await load
            assert not elastic.documents(TARGET), "Elasticsearch was hanging: nothing should have been stored"

            elastic.faults.hang(False)
            restarted = SidecarProcess(upstream.url, tmp_path, env=env)
            restarted.port, restarted.admin_port = sidecar.port, sidecar.admin_port
            await restarted.start()
            try:
                stored_ids = lambda: {  # noqa: E731
                    doc.get("http", {}).get("request", {}).get("id") for doc in elastic.documents(TARGET)
                }
                deadline = time.monotonic() + 60
                while not set(answered) <= stored_ids():
                    assert time.monotonic() < deadline, (
                        f"{len(set(answered) - stored_ids())} answered requests missing from the index"
                    )
                    await asyncio.sleep(0.1)
            finally:
                restarted.send(signal.SIGTERM)
                assert await restarted.wait(30) == 0
        finally:
            await sidecar.stop()
        documents = elastic.documents(TARGET)
    report = verify_documents(documents, verifier=None, now=0.0)
    assert report.ok, report.text()
    assert len(answered) >= 500
