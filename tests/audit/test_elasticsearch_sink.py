"""The audit trail into Elasticsearch (the in-repo stand-in) while Elasticsearch misbehaves.

Each test runs a sidecar in the test's event loop with the real
`elasticsearch` client, injects a fault, and checks the index afterwards:
nothing lost, nothing twice, the chain intact.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.audit.elastic import target_router
from sidecar.audit.pipeline import AuditPipeline
from sidecar.audit.verify import verify_documents
from sidecar.config import ElasticsearchSinkConfig
from sidecar.testing.elastic import ElasticsearchStandIn
from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.credentials import make_credentials
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

TARGET = "logs-sidecar.audit-default"


@pytest.fixture
async def elastic() -> AsyncIterator[ElasticsearchStandIn]:
    async with ElasticsearchStandIn() as server:
        yield server


def _pipeline(running: RunningSidecar) -> AuditPipeline:
    assert running.sidecar.audit is not None
    return running.sidecar.audit


async def _start(make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn, **settings: Any) -> RunningSidecar:
    return await make_sidecar(
        upstream.url,
        audit__elasticsearch__url=elastic.url,
        audit__elasticsearch__batch_age="20ms",
        audit__elasticsearch__max_backoff="500ms",
        **settings,
    )


async def _drive(
    url: str, count: int, *, concurrency: int = 32, on_progress: Callable[[int], Any] | None = None
) -> Counter[int]:
    """`count` GETs of /echo/N over `concurrency` connections; the statuses seen."""
    statuses: Counter[int] = Counter()
    issued = 0

    async def worker(client: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < count:
            number = issued
            issued += 1
            if on_progress is not None:
                await on_progress(number)
            async with client.get(f"{url}/echo/{number}") as response:
                await response.read()
                statuses[response.status] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


async def _drained(pipeline: AuditPipeline, timeout: float = 60.0) -> None:
    await wait_for(
        lambda: pipeline.spool.committed_offset >= pipeline.spool.next_offset and not pipeline.queue_length,
        timeout=timeout,
        what="the audit spool to drain into Elasticsearch",
    )


def _requests(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["event"]["action"] == "http-request"]


def _assert_chain_intact(documents: list[dict[str, Any]]) -> None:
    report = verify_documents(documents, verifier=None, now=0.0)
    assert report.ok, report.text()
    hashes = [doc["event"]["hash"] for doc in documents]
    assert len(hashes) == len(set(hashes)), "a document is stored twice"


async def test_elasticsearch_down_for_the_middle_third_loses_nothing(
    make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn
) -> None:
    total = 10_000
    running = await _start(make_sidecar, upstream, elastic)

    async def outage(number: int) -> None:
        if number == total // 3:
            await elastic.refuse()
        elif number == 2 * total // 3:
            await elastic.accept()

    statuses = await _drive(running.url, total, on_progress=outage)
    assert statuses == {200: total}
    pipeline = _pipeline(running)
    assert pipeline.sink.retries["connection"] > 0, "the outage was never noticed"
    await _drained(pipeline)
    await running.sidecar.stop()

    documents = elastic.documents(TARGET)
    requests = _requests(documents)
    assert len(requests) == total
    assert sorted(int(doc["url"]["path"].rsplit("/", 1)[1]) for doc in requests) == list(range(total))
    _assert_chain_intact(documents)
    assert elastic.ids(TARGET) == [doc["event"]["hash"] for doc in documents]


async def test_rejected_items_are_retried_and_unparsable_ones_dead_lettered(
    make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn, tmp_path: Path
) -> None:
    total = 2_000

    def unparsable(source: dict[str, Any]) -> bool:
        path = source.get("url", {}).get("path", "")
        return path.startswith("/echo/") and int(path.rsplit("/", 1)[1]) % 100 == 7

    elastic.faults.reject_items(0.05, status=429, seed=11)
    elastic.faults.mapping_error(unparsable)
    running = await _start(make_sidecar, upstream, elastic)
    assert await _drive(running.url, total) == {200: total}
    pipeline = _pipeline(running)
    await _drained(pipeline)
    assert pipeline.sink.retries["rejected"] > 0
    await running.sidecar.stop()

    stored = _requests(elastic.documents(TARGET))
    dead = [json.loads(line) for line in (tmp_path / "data" / "audit" / "dead-letter.jsonl").read_text().splitlines()]
    refused = {n for n in range(total) if n % 100 == 7}
    assert sorted(int(doc["url"]["path"].rsplit("/", 1)[1]) for doc in stored) == sorted(set(range(total)) - refused)
    assert sorted(int(entry["document"]["url"]["path"].rsplit("/", 1)[1]) for entry in dead) == sorted(refused)
    assert all(entry["status"] == 400 and "document_parsing_exception" in json.dumps(entry["error"]) for entry in dead)
    assert pipeline.sink.dead_lettered == len(refused)


async def test_fail_open_keeps_serving_counts_drops_and_records_the_loss(
    make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn
) -> None:
    await elastic.refuse()
    running = await _start(
        make_sidecar, upstream, elastic,
        audit__spool__max_size="1MiB", audit__spool__segment_size="64KiB", audit__spool__when_full="fail_open",
    )  # fmt: skip
    pipeline = _pipeline(running)
    served: Counter[int] = Counter()
    while pipeline.stats.dropped["spool_full"] == 0:
        served += await _drive(running.url, 200)
        assert sum(served.values()) < 5_000, "the spool never filled"
    assert set(served) == {200}
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.admin_url}/-/ready") as response:
            assert response.status == 503
            assert "audit" in (await response.json())["checks"]
        async with client.get(f"{running.admin_url}/metrics") as response:
            exposition = await response.text()
    assert 'sidecar_audit_spool_full{policy="fail_open"} 1.0' in exposition
    assert 'sidecar_audit_events_dropped_total{reason="spool_full"}' in exposition

    await elastic.accept()
    await _drained(pipeline)
    await _drive(running.url, 10)  # room again: the next pass writes the drop notice
    await _drained(pipeline)
    dropped = pipeline.stats.dropped["spool_full"]
    await running.sidecar.stop()
    documents = elastic.documents(TARGET)
    notices = [doc for doc in documents if doc["event"]["action"] == "audit-events-dropped"]
    assert sum(doc["sidecar"]["audit"]["dropped_events"] for doc in notices) == dropped
    # Alert transitions (AuditEventsDropped fires here) are audited too and can be
    # dropped alongside requests, so the exact account covers every queued event.
    events = [doc for doc in documents if doc["event"]["action"] not in ("audit-checkpoint", "audit-events-dropped")]
    assert len(events) + dropped == pipeline.events_queued
    assert sum(served.values()) + 10 - dropped <= len(_requests(documents)) <= sum(served.values()) + 10
    _assert_chain_intact(documents)


async def test_fail_closed_answers_503_until_there_is_room(
    make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn
) -> None:
    await elastic.refuse()
    running = await _start(
        make_sidecar, upstream, elastic,
        audit__spool__max_size="1MiB", audit__spool__segment_size="64KiB", audit__spool__when_full="fail_closed",
    )  # fmt: skip
    pipeline = _pipeline(running)
    served: Counter[int] = Counter()
    while 503 not in served:
        served += await _drive(running.url, 200)
        assert sum(served.values()) < 5_000, "the spool never filled"
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.url}/echo/x") as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert "audit spool is full" in (await response.json())["error"]["message"]
    assert pipeline.stats.dropped["spool_full"] == 0, "fail_closed must not drop what it let through"

    await elastic.accept()
    await _drained(pipeline)
    assert await _drive(running.url, 50) == {200: 50}
    await _drained(pipeline)
    await running.sidecar.stop()
    documents = elastic.documents(TARGET)
    assert len(_requests(documents)) == sum(served.values()) + 1 + 50
    _assert_chain_intact(documents)


def test_tenants_map_to_data_stream_namespaces() -> None:
    config = ElasticsearchSinkConfig(per_tenant=True, dataset="sidecar.audit", namespace="prod")
    route = target_router(config)
    assert route(b'{"message":"x","organization":{"id":"Acme Corp"}}') == "logs-sidecar.audit-acme_corp"
    assert route(b'{"organization":{"id":"t\\"x"}}') == "logs-sidecar.audit-t_x"
    assert route(b'{"message":"no tenant"}') == "logs-sidecar.audit-prod"
    assert config.read_target == "logs-sidecar.audit-*"
    assert target_router(ElasticsearchSinkConfig(namespace="prod"))(b'{"organization":{"id":"a"}}') == "logs-sidecar.audit-prod"


async def test_per_tenant_data_streams_hold_each_tenants_records_and_the_chain_spans_them(
    make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn, tmp_path: Path
) -> None:
    credentials = make_credentials(tmp_path / "credentials")
    running = await _start(make_sidecar, upstream, elastic, audit__elasticsearch__per_tenant=True, **credentials.auth_settings())
    async with aiohttp.ClientSession() as client:
        for key_id, count in (("acme-1", 3), ("globex-1", 2)):
            for n in range(count):
                async with client.get(f"{running.url}/echo/{n}", headers={"X-API-Key": credentials.keys[key_id]}) as response:
                    assert response.status == 200
        async with client.get(f"{running.url}/echo/anonymous") as response:
            assert response.status == 401
    pipeline = _pipeline(running)
    await _drained(pipeline)
    await running.sidecar.stop()
    acme, globex = elastic.documents("logs-sidecar.audit-acme"), elastic.documents("logs-sidecar.audit-globex")
    assert [doc["organization"]["id"] for doc in _requests(acme)] == ["acme"] * 3
    assert [doc["organization"]["id"] for doc in _requests(globex)] == ["globex"] * 2
    default = elastic.documents(TARGET)
    assert [doc["http"]["response"]["status_code"] for doc in _requests(default)] == [401]
    _assert_chain_intact(elastic.documents("logs-sidecar.audit-*"))
