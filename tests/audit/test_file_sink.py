"""The audit trail with no Elasticsearch: spool to rotated JSON Lines files, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.audit.sinks import audit_files, read_documents
from sidecar.audit.verify import verify_documents
from sidecar.audit.chain import load_verifier
from tests.conftest import SidecarFactory
from tests.support.upstream import TestUpstream


def _documents(data_dir: Path) -> list[dict[str, Any]]:
    return list(read_documents(audit_files(data_dir / "audit" / "events")))


async def test_each_request_leaves_one_verifiable_record(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    running = await make_sidecar(upstream.url, audit__elasticsearch__batch_age="50ms")
    async with aiohttp.ClientSession() as client:
        for number in range(20):
            async with client.get(f"{running.url}/echo/{number}?user=someone@example.com") as response:
                assert response.status == 200
                await response.read()
        async with client.get(f"{running.url}/status/503") as response:
            assert response.status == 503
    await running.sidecar.stop()

    documents = _documents(tmp_path / "data")
    requests = [doc for doc in documents if doc["event"]["action"] == "http-request"]
    assert len(requests) == 21
    assert sorted(doc["url"]["path"] for doc in requests)[:3] == ["/echo/0", "/echo/1", "/echo/10"]
    assert all("someone@example.com" not in json.dumps(doc) for doc in documents)
    assert any(doc["http"]["response"]["status_code"] == 503 and doc["event"]["outcome"] == "failure" for doc in requests)
    actions = [doc["event"]["action"] for doc in documents]
    assert actions[0] == "audit-checkpoint" and actions[1] == "sidecar-start"
    assert actions[-2:] == ["sidecar-stop", "audit-checkpoint"]
    assert documents[-1]["sidecar"]["checkpoint"]["final"] is True

    verifier = load_verifier(tmp_path / "data" / "audit" / "checkpoint.pub")
    report = verify_documents(documents, verifier=verifier, now=0.0)
    assert report.ok, report.text()
    assert report.records == len(documents)


async def test_a_restart_continues_the_same_chain(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    for _ in range(2):
        running = await make_sidecar(upstream.url, audit__elasticsearch__batch_age="50ms")
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{running.url}/echo") as response:
                await response.read()
        await running.sidecar.stop()
    documents = _documents(tmp_path / "data")
    assert len({doc["sidecar"]["chain"]["id"] for doc in documents}) == 1
    assert [doc["event"]["sequence"] for doc in documents] == list(range(len(documents)))
    report = verify_documents(documents, verifier=None, now=0.0)
    assert report.ok, report.text()
