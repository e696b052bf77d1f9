"""The Elasticsearch stand-in, exercised through the real ``elasticsearch`` client."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import elasticsearch
import pytest
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    BadRequestError,
    ConflictError,
    ConnectionError,
    ConnectionTimeout,
    NotFoundError,
)
from elasticsearch.helpers import BulkIndexError, async_streaming_bulk

from sidecar.testing.elastic import ElasticsearchStandIn, date_math_ms, filter_path, simple_match
from tests.support.tools import free_port, wait_for

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parents[1]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def es() -> AsyncIterator[ElasticsearchStandIn]:
    server = ElasticsearchStandIn(clock=NOW.timestamp)
    await server.start()
    yield server
    await server.stop()
    assert server.stats.internal_errors == []


@pytest.fixture
async def client(es: ElasticsearchStandIn) -> AsyncIterator[AsyncElasticsearch]:
    async with AsyncElasticsearch(es.url, request_timeout=5) as client:
        yield client


async def bulk_results(client: AsyncElasticsearch, actions: list[dict[str, Any]], **options: Any) -> list[tuple[bool, dict[str, Any]]]:
    options = {"raise_on_error": False, "initial_backoff": 0.001, "max_backoff": 0.01, **options}
    return [result async for result in async_streaming_bulk(client, actions, **options)]


def item(result: tuple[bool, dict[str, Any]]) -> dict[str, Any]:
    return next(iter(result[1].values()))


async def install_audit_template(client: AsyncElasticsearch) -> None:
    await client.ilm.put_lifecycle(name="audit", policy={"phases": {"hot": {"actions": {"rollover": {"max_age": "1d"}}}}})
    await client.indices.put_index_template(
        name="audit",
        index_patterns=["logs-audit-*"],
        data_stream={},
        priority=500,
        template={
            "settings": {"index.lifecycle.name": "audit"},
            "mappings": {
                "dynamic_templates": [{"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}}],
                "properties": {
                    "event": {"properties": {"outcome": {"type": "keyword"}, "duration": {"type": "long"}}},
                    "message": {"type": "match_only_text"},
                },
            },
        },
    )


# --- protocol -------------------------------------------------------------------------------------


async def test_info_headers_and_content_type_satisfy_the_client(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    info = await client.info()
    assert info["version"]["number"] == "9.1.0"
    assert info["tagline"] == "You Know, for Search"
    assert info.meta.headers["x-elastic-product"] == "Elasticsearch"
    # The stand-in answers in the client's own major version, as Elasticsearch does.
    major = elasticsearch.__versionstr__.split(".")[0]
    assert info.meta.headers["content-type"] == f"application/vnd.elasticsearch+json;compatible-with={major}"
    assert await client.ping() is True
    assert es.stats.requests["GET /"] == 1 and es.stats.requests["HEAD /"] == 1


async def test_errors_have_elasticsearchs_shape(client: AsyncElasticsearch) -> None:
    with pytest.raises(NotFoundError) as missing:
        await client.search(index="nowhere", query={"match_all": {}})
    assert missing.value.error == "index_not_found_exception"
    body = missing.value.body
    assert body["status"] == 404
    assert body["error"]["root_cause"][0]["type"] == "index_not_found_exception"
    assert body["error"]["reason"] == "no such index [nowhere]"
    with pytest.raises(BadRequestError) as unknown_query:
        await client.count(query={"no_such_query": {}})
    assert unknown_query.value.error == "parsing_exception"


async def test_plain_json_clients_and_compatibility_versions(es: ElasticsearchStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{es.url}/", headers={"Accept": "application/json"}) as plain:
            assert plain.status == 200
            assert plain.headers["Content-Type"] == "application/json"
            assert plain.headers["X-Elastic-Product"] == "Elasticsearch"
        compat_7 = "application/vnd.elasticsearch+json; compatible-with=7"
        async with session.get(f"{es.url}/", headers={"Accept": compat_7}) as too_old:
            assert too_old.status == 400
            assert (await too_old.json())["error"]["type"] == "media_type_header_exception"
        async with session.get(f"{es.url}/_bulk") as wrong_method:
            assert wrong_method.status == 405
            assert (await wrong_method.json())["error"].startswith("Incorrect HTTP method for uri [/_bulk]")
        async with session.post(f"{es.url}/_bulk", data=b'{"create":{"_index":"a"}}\n{"x":1}', headers={"Content-Type": "application/x-ndjson"}) as unterminated:
            assert unterminated.status == 400
            assert "terminated by a newline" in (await unterminated.json())["error"]["reason"]


async def test_gzip_requests_and_filter_path(es: ElasticsearchStandIn) -> None:
    async with AsyncElasticsearch(es.url, http_compress=True) as client:
        response = await client.bulk(
            operations=[{"create": {"_index": "plain", "_id": "a"}}, {"n": 1}, {"create": {"_index": "plain", "_id": "a"}}, {"n": 2}],
            filter_path="errors,items.*.error.type",
        )
    assert response.body == {"errors": True, "items": [{"create": {"error": {"type": "version_conflict_engine_exception"}}}]}
    assert es.documents("plain") == [{"n": 1}]


# --- bulk -----------------------------------------------------------------------------------------


async def test_bulk_create_gives_201_then_409_for_the_same_id(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    actions = [{"_op_type": "create", "_index": "audit-plain", "_id": f"doc-{n}", "n": n} for n in range(3)]
    first = await bulk_results(client, actions)
    assert [ok for ok, _ in first] == [True, True, True]
    assert [item(result)["status"] for result in first] == [201, 201, 201]
    assert [item(result)["result"] for result in first] == ["created"] * 3
    assert [item(result)["_seq_no"] for result in first] == [0, 1, 2]
    assert {item(result)["_primary_term"] for result in first} == {1}

    again = await bulk_results(client, actions[:2])
    assert [ok for ok, _ in again] == [False, False]
    conflict = item(again[0])
    assert conflict["status"] == 409
    assert conflict["error"]["type"] == "version_conflict_engine_exception"
    assert conflict["error"]["reason"] == "[doc-0]: version conflict, document already exists (current version [1])"

    with pytest.raises(BulkIndexError):
        await bulk_results(client, actions[:1], raise_on_error=True)

    assert es.ids("audit-plain") == ["doc-0", "doc-1", "doc-2"]
    assert es.documents("audit-plain") == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert es.stats.bulk_requests == 3
    assert es.stats.bulk_items == 6
    assert es.stats.item_statuses == {201: 3, 409: 3}


async def test_bulk_index_overwrites_delete_removes_and_missing_ids_are_generated(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    response = await client.bulk(
        index="things",
        operations=[
            {"index": {"_id": "x"}}, {"v": 1},
            {"index": {"_id": "x"}}, {"v": 2},
            {"create": {}}, {"v": 3},
            {"delete": {"_id": "nope"}},
        ],
        refresh="wait_for",
    )
    statuses = [(op, body["status"], body.get("result")) for entry in response["items"] for op, body in entry.items()]
    assert statuses == [("index", 201, "created"), ("index", 200, "updated"), ("create", 201, "created"), ("delete", 404, "not_found")]
    generated = response["items"][2]["create"]["_id"]
    assert len(generated) == 20
    assert response["items"][1]["index"]["_version"] == 2
    assert es.ids("things") == ["x", generated]
    assert (await client.get(index="things", id="x"))["_source"] == {"v": 2}
    await client.delete(index="things", id="x")
    with pytest.raises(NotFoundError):
        await client.get(index="things", id="x")
    with pytest.raises(ConflictError):
        await client.create(index="things", id=generated, document={"v": 4})


async def test_mapped_types_are_enforced_like_elasticsearchs_mapper(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    await client.indices.create(index="typed", mappings={"dynamic": "strict", "properties": {"n": {"type": "long"}, "at": {"type": "date"}, "tags": {"type": "keyword"}}})
    with pytest.raises(BadRequestError) as exists:
        await client.indices.create(index="typed")
    assert exists.value.error == "resource_already_exists_exception"
    results = await bulk_results(client, [
        {"_op_type": "create", "_index": "typed", "_id": "ok", "n": "42", "at": "2025-01-01T00:00:00.123456789Z", "tags": ["a", "b"]},
        {"_op_type": "create", "_index": "typed", "_id": "bad-number", "n": "forty-two"},
        {"_op_type": "create", "_index": "typed", "_id": "bad-date", "at": "yesterday"},
        {"_op_type": "create", "_index": "typed", "_id": "unmapped", "other": 1},
        {"_op_type": "create", "_index": "Typed", "_id": "bad-name", "n": 1},
    ])
    assert [item(result)["status"] for result in results] == [201, 400, 400, 400, 400]
    assert [item(result)["error"]["type"] for result in results[1:]] == [
        "document_parsing_exception", "document_parsing_exception", "strict_dynamic_mapping_exception", "invalid_index_name_exception",
    ]
    assert item(results[1])["error"]["caused_by"] == {"type": "number_format_exception", "reason": 'For input string: "forty-two"'}
    assert es.ids("typed") == ["ok"]

    # Dynamic mapping: the first value fixes the type, later clashes are refused.
    clash = await bulk_results(client, [
        {"_op_type": "index", "_index": "dyn", "_id": "1", "user": {"id": 7}},
        {"_op_type": "index", "_index": "dyn", "_id": "2", "user": "seven"},
        {"_op_type": "index", "_index": "dyn", "_id": "3", "user": {"id": "x"}},
    ])
    assert [item(result)["status"] for result in clash] == [201, 400, 400]
    assert es.mappings("dyn")["properties"]["user"] == {"properties": {"id": {"type": "long"}}}


# --- data streams ---------------------------------------------------------------------------------


async def test_data_stream_is_created_from_its_template_and_takes_only_create(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    await install_audit_template(client)
    assert (await client.indices.get_index_template(name="audit"))["index_templates"][0]["index_template"]["priority"] == 500
    with pytest.raises(NotFoundError):
        await client.indices.get_index_template(name="absent")
    assert (await client.ilm.get_lifecycle(name="audit"))["audit"]["version"] == 1

    stamp = iso(NOW)
    results = await bulk_results(client, [
        {"_op_type": "create", "_index": "logs-audit-default", "_id": "e1", "@timestamp": stamp, "event": {"outcome": "success"}},
        {"_op_type": "index", "_index": "logs-audit-default", "_id": "e2", "@timestamp": stamp},
        {"_op_type": "create", "_index": "logs-audit-default", "_id": "e3", "event": {"outcome": "failure"}},
        {"_op_type": "create", "_index": "logs-audit-default", "_id": "e1", "@timestamp": stamp},
    ])
    assert [item(result)["status"] for result in results] == [201, 400, 400, 409]
    backing = item(results[0])["_index"]
    assert backing == f".ds-logs-audit-default-{NOW:%Y.%m.%d}-000001"
    rejected = item(results[1])
    assert rejected["_index"] == "logs-audit-default"
    assert rejected["error"] == {"type": "illegal_argument_exception", "reason": "only write ops with an op_type of create are allowed in data streams"}
    assert item(results[2])["error"]["type"] == "document_parsing_exception"
    assert "[@timestamp] is missing" in item(results[2])["error"]["reason"]

    streams = (await client.indices.get_data_stream(name="logs-audit-default"))["data_streams"]
    assert streams[0]["template"] == "audit"
    assert streams[0]["ilm_policy"] == "audit"
    assert streams[0]["indices"][0]["index_name"] == backing
    assert await client.indices.exists(index="logs-audit-default")
    assert es.data_stream_names() == ["logs-audit-default"]
    assert es.documents("logs-audit-*") == [{"@timestamp": stamp, "event": {"outcome": "success"}}]

    with pytest.raises(BadRequestError) as duplicate:
        await client.indices.create_data_stream(name="logs-audit-default")
    assert duplicate.value.error == "resource_already_exists_exception"
    with pytest.raises(BadRequestError) as no_template:
        await client.indices.create_data_stream(name="no-template-here")
    assert no_template.value.error == "illegal_argument_exception"
    with pytest.raises(BadRequestError):
        await client.indices.create(index="logs-audit-other")
    await client.indices.create_data_stream(name="logs-audit-other")
    await client.indices.delete_data_stream(name="logs-audit-other")
    with pytest.raises(NotFoundError):
        await client.indices.get_data_stream(name="logs-audit-other")


async def test_names_without_a_template_become_plain_indices_and_builtin_logs_template_applies(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    plain = await bulk_results(client, [{"_op_type": "index", "_index": "sidecar-audit", "_id": "1", "a": 1}])
    assert item(plain[0])["_index"] == "sidecar-audit"
    assert es.index_names() == ["sidecar-audit"]
    # A default Elasticsearch turns logs-*-* into data streams through its built-in "logs" template.
    builtin = await bulk_results(client, [{"_op_type": "index", "_index": "logs-sidecar-default", "@timestamp": iso(NOW)}])
    assert item(builtin[0])["status"] == 400
    assert es.data_stream_names() == ["logs-sidecar-default"]
    await client.indices.delete(index="sidecar-audit")
    assert not await client.indices.exists(index="sidecar-audit")


# --- search and count -----------------------------------------------------------------------------


@pytest.fixture
async def events(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> list[dict[str, Any]]:
    await install_audit_template(client)
    docs = [
        {"id": "a", "@timestamp": iso(NOW - timedelta(hours=1)), "event": {"outcome": "success", "duration": 120}, "user": {"name": "ann"}, "tags": ["x", "y"], "message": "Chat completion served"},
        {"id": "b", "@timestamp": iso(NOW - timedelta(hours=30)), "event": {"outcome": "failure", "duration": 900}, "user": {"name": "bob"}, "tags": ["y"], "message": "Upstream timed out"},
        {"id": "c", "@timestamp": iso(NOW - timedelta(days=3)), "event": {"outcome": "success", "duration": 40}, "user": {"name": "ann"}, "message": "Embedding served"},
        {"id": "d", "@timestamp": iso(NOW - timedelta(days=10)), "event": {"outcome": "success"}, "user": {"name": "cy"}, "tags": ["z"], "message": "Chat completion served slowly"},
        {"id": "e", "@timestamp": iso(NOW - timedelta(minutes=5)), "event": {"outcome": "failure", "duration": 15}, "user": {"name": "bob"}, "message": "Rejected: rate limited"},
    ]
    results = await bulk_results(client, [{"_op_type": "create", "_index": "logs-audit-default", "_id": doc["id"], **doc} for doc in docs])
    assert all(ok for ok, _ in results)
    return docs


async def search_ids(client: AsyncElasticsearch, **request: Any) -> list[str]:
    response = await client.search(index="logs-audit-*", **request)
    return [hit["_id"] for hit in response["hits"]["hits"]]


async def test_search_filters_with_bool_term_terms_range_exists_match_and_ids(client: AsyncElasticsearch, events: list[dict[str, Any]]) -> None:
    assert await search_ids(client) == ["a", "b", "c", "d", "e"]
    assert await search_ids(client, query={"term": {"event.outcome": "failure"}}) == ["b", "e"]
    assert await search_ids(client, query={"term": {"tags": "y"}}) == ["a", "b"]
    assert await search_ids(client, query={"terms": {"user.name": ["cy", "bob"]}}) == ["b", "d", "e"]
    assert await search_ids(client, query={"range": {"event.duration": {"gte": 40, "lt": 900}}}) == ["a", "c"]
    assert await search_ids(client, query={"range": {"@timestamp": {"gte": "now-24h"}}}) == ["a", "e"]
    assert await search_ids(client, query={"range": {"@timestamp": {"gte": "now-7d", "lt": "now-24h"}}}) == ["b", "c"]
    assert await search_ids(client, query={"range": {"@timestamp": {"lte": "now-1d/d"}}}) == ["b", "c", "d"]
    assert await search_ids(client, query={"exists": {"field": "tags"}}) == ["a", "b", "d"]
    assert await search_ids(client, query={"bool": {"must_not": [{"exists": {"field": "event.duration"}}]}}) == ["d"]
    assert await search_ids(client, query={"match": {"message": "CHAT served"}}) == ["a", "c", "d"]
    assert await search_ids(client, query={"match": {"message": {"query": "chat served", "operator": "and"}}}) == ["a", "d"]
    assert await search_ids(client, query={"ids": {"values": ["e", "a", "zz"]}}) == ["a", "e"]
    compound = {
        "bool": {
            "filter": [{"range": {"@timestamp": {"gte": "now-7d"}}}],
            "must": [{"term": {"user.name": "ann"}}],
            "should": [{"term": {"event.outcome": "failure"}}, {"range": {"event.duration": {"gt": 100}}}],
            "minimum_should_match": 1,
        }
    }
    assert await search_ids(client, query=compound) == ["a"]
    assert await search_ids(client, query={"bool": {"should": [{"term": {"user.name": "cy"}}, {"term": {"user.name": "ann"}}]}}) == ["a", "c", "d"]


async def test_search_sorts_pages_and_reports_hits_like_elasticsearch(client: AsyncElasticsearch, events: list[dict[str, Any]]) -> None:
    response = await client.search(index="logs-audit-default", sort=[{"@timestamp": {"order": "desc"}}], size=2)
    hits = response["hits"]
    assert hits["total"] == {"value": 5, "relation": "eq"}
    assert hits["max_score"] is None
    assert [(hit["_id"], hit["_score"]) for hit in hits["hits"]] == [("e", None), ("a", None)]
    assert hits["hits"][0]["sort"] == [int((NOW - timedelta(minutes=5)).timestamp() * 1000)]
    assert hits["hits"][0]["_index"].startswith(".ds-logs-audit-default-")
    assert response["timed_out"] is False and response["_shards"]["failed"] == 0

    # Missing values sort last in both directions; several keys; string "field:order" sorts.
    assert await search_ids(client, sort=[{"event.duration": "desc"}]) == ["b", "a", "c", "e", "d"]
    assert await search_ids(client, sort=[{"event.duration": {"order": "asc"}}]) == ["e", "c", "a", "b", "d"]
    assert await search_ids(client, sort=["user.name", {"@timestamp": "asc"}]) == ["c", "a", "b", "e", "d"]
    assert await search_ids(client, sort="user.name:desc,@timestamp:desc") == ["d", "e", "b", "a", "c"]
    assert await search_ids(client, sort=["@timestamp"], size=2, from_=1) == ["c", "b"]

    pages: list[str] = []
    after: list[Any] | None = None
    while True:
        page = await client.search(index="logs-audit-*", sort=[{"event.duration": "asc"}, {"id": "asc"}], size=2, search_after=after)
        batch = page["hits"]["hits"]
        if not batch:
            break
        pages.extend(hit["_id"] for hit in batch)
        after = batch[-1]["sort"]
    assert pages == ["e", "c", "a", "b", "d"]

    filtered = await client.search(index="logs-audit-*", query={"ids": {"values": ["a"]}}, source_includes=["user", "event.outcome"])
    assert filtered["hits"]["hits"][0]["_source"] == {"user": {"name": "ann"}, "event": {"outcome": "success"}}
    untracked = await client.search(index="logs-audit-*", track_total_hits=False, size=0)
    assert "total" not in untracked["hits"] and untracked["hits"]["hits"] == []

    with pytest.raises(BadRequestError) as text_sort:
        await client.search(index="logs-audit-*", sort=["message"])
    assert "Fielddata is disabled" in str(text_sort.value.body)
    with pytest.raises(BadRequestError) as id_sort:
        await client.search(index="logs-audit-*", sort=["_id"])
    assert "_id field is disallowed" in str(id_sort.value.body)


async def test_count_and_index_resolution(client: AsyncElasticsearch, events: list[dict[str, Any]]) -> None:
    await client.index(index="other", id="1", document={"event": {"outcome": "failure"}})
    assert (await client.indices.refresh(index="logs-*,other"))["_shards"]["failed"] == 0
    assert (await client.count(index="logs-audit-default"))["count"] == 5
    assert (await client.count(index="logs-*", query={"term": {"event.outcome": "failure"}}))["count"] == 2
    assert (await client.count(index="logs-*,other", query={"term": {"event.outcome": "failure"}}))["count"] == 3
    assert (await client.count(query={"term": {"event.outcome": "failure"}}))["count"] == 3
    assert (await client.count(index="nothing-*"))["count"] == 0
    assert (await client.search(index="nothing-*"))["hits"]["hits"] == []
    with pytest.raises(NotFoundError):
        await client.count(index="logs-audit-default,absent")
    assert (await client.count(index="logs-audit-default,absent", ignore_unavailable=True))["count"] == 5


# --- faults ---------------------------------------------------------------------------------------


async def test_refused_connections_raise_connection_error_and_accept_restores_the_same_port(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    await client.index(index="kept", id="1", document={"a": 1})
    url = es.url
    await es.refuse()
    assert not es.listening
    with pytest.raises(ConnectionError):
        await client.info()
    # The bulk helper does not catch transport errors: the whole call fails, whatever raise_on_exception says.
    with pytest.raises(ConnectionError):
        await bulk_results(client, [{"_op_type": "create", "_index": "kept", "_id": "2", "a": 2}], raise_on_exception=False, max_retries=3)
    await es.accept()
    assert es.url == url
    assert (await client.get(index="kept", id="1"))["_source"] == {"a": 1}

    await es.stop()
    await es.start()
    assert es.url == url
    assert es.ids("kept") == ["1"]


async def test_hang_times_the_client_out_and_leaks_nothing_at_shutdown(es: ElasticsearchStandIn) -> None:
    es.faults.hang(True)
    async with AsyncElasticsearch(es.url, request_timeout=0.2, max_retries=0) as client:
        with pytest.raises(ConnectionTimeout):
            await client.info()
        assert es.faults.hung
        pending = asyncio.ensure_future(client.options(request_timeout=5).index(index="late", id="1", document={"a": 1}))
        await wait_for(lambda: es.stats.requests["PUT /late/_doc/1"] == 1, what="the hung request to arrive")
        assert es.ids("late") == []
        es.faults.hang(False)
        assert (await pending)["result"] == "created"

    abandoned = ElasticsearchStandIn()
    await abandoned.start()
    abandoned.faults.hang(True)
    async with AsyncElasticsearch(abandoned.url, request_timeout=5, max_retries=0) as client:
        request = asyncio.ensure_future(client.info())
        await wait_for(lambda: abandoned.stats.total_requests == 1, what="the hung request to arrive")
        await asyncio.wait_for(abandoned.stop(), timeout=2)
        with pytest.raises(ConnectionError):
            await request
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    assert leftovers == []


async def test_slow_answers_arrive_late_but_writes_already_happened(es: ElasticsearchStandIn) -> None:
    es.faults.slow(0.5)
    async with AsyncElasticsearch(es.url, request_timeout=0.1, max_retries=0) as client:
        with pytest.raises(ConnectionTimeout):
            await client.index(index="slow", id="1", document={"a": 1})
    assert es.ids("slow") == ["1"]
    es.faults.slow(0)


async def test_failed_requests_are_retried_by_the_transport_only_for_429_502_503_504(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    es.faults.fail_requests(503, count=2)
    assert (await client.info())["version"]["number"] == "9.1.0"
    assert es.stats.failed_requests == 2
    assert es.stats.requests["GET /"] == 3

    es.faults.fail_requests(500, count=1)
    with pytest.raises(ApiError) as internal:
        await client.info()
    assert internal.value.status_code == 500
    assert internal.value.body["error"]["type"] == "exception"

    es.faults.fail_requests(502, path="_bulk")
    await client.info()
    with pytest.raises(ApiError) as gateway:
        await client.options(max_retries=1).bulk(operations=[{"create": {"_index": "x"}}, {"a": 1}])
    assert gateway.value.status_code == 502
    assert es.stats.bulk_requests == 2 and es.stats.bulk_items == 0

    # A whole-chunk 429 is retried by the bulk helper as well as by the transport.
    es.faults.fail_requests(429, count=5, path="_bulk")
    results = await bulk_results(client, [{"_op_type": "create", "_index": "x", "_id": "1", "a": 1}], max_retries=2)
    assert [ok for ok, _ in results] == [True]
    assert es.stats.failed_requests == 2 + 1 + 2 + 5

    # Without retries left, raise_on_exception=False turns the failed chunk into per-item failures.
    es.faults.fail_requests(503, path="_bulk")
    failed = await bulk_results(client.options(max_retries=0), [{"_op_type": "create", "_index": "x", "_id": "2", "a": 2}], raise_on_exception=False)
    assert [(result[0], item(result)["status"]) for result in failed] == [(False, 503)]
    assert item(failed[0])["_id"] == "2" and item(failed[0])["data"] == {"a": 2}
    es.faults.clear()
    assert es.ids("x") == ["1"]


async def test_rejected_items_succeed_on_retry_and_rejections_are_reproducible(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    es.faults.reject_items(0.5, seed=7)
    actions = [{"_op_type": "create", "_index": "retried", "_id": str(n), "n": n} for n in range(40)]
    results = await bulk_results(client, actions, max_retries=20)
    assert all(ok for ok, _ in results)
    assert sorted(es.ids("retried"), key=int) == [str(n) for n in range(40)]
    rejected = es.stats.item_statuses[429]
    assert 10 < rejected < 70
    assert es.stats.item_statuses[201] == 40
    assert es.stats.bulk_requests > 2

    # The helper retries per-item 429s only with raise_on_error=False: by default the first one raises.
    es.faults.reject_items(1.0, seed=1)
    with pytest.raises(BulkIndexError) as raised:
        await bulk_results(client, [{"_op_type": "create", "_index": "retried", "_id": "late", "n": 0}], max_retries=5, raise_on_error=True)
    assert raised.value.errors[0]["create"]["status"] == 429
    assert es.stats.item_statuses[429] == rejected + 1
    es.faults.clear()

    # Without retries the rejections surface, with Elasticsearch's error type, and nothing is stored for them.
    replay = ElasticsearchStandIn()
    async with replay, AsyncElasticsearch(replay.url) as other:
        replay.faults.reject_items(0.5, seed=7)
        once = await bulk_results(other, actions)
        statuses = [item(result)["status"] for result in once]
        assert statuses.count(429) + statuses.count(201) == 40
        assert item(next(result for result in once if not result[0]))["error"]["type"] == "es_rejected_execution_exception"
        assert len(replay.ids("retried")) == statuses.count(201)
    # Same seed, same first pass.
    again = ElasticsearchStandIn()
    async with again, AsyncElasticsearch(again.url) as third:
        again.faults.reject_items(0.5, seed=7)
        assert [item(result)["status"] for result in await bulk_results(third, actions)] == statuses


async def test_mapping_error_predicate_refuses_matching_documents_without_retry(es: ElasticsearchStandIn, client: AsyncElasticsearch) -> None:
    es.faults.mapping_error(lambda source: source.get("poison") is True)
    results = await bulk_results(client, [
        {"_op_type": "create", "_index": "mapped", "_id": "1", "poison": False},
        {"_op_type": "create", "_index": "mapped", "_id": "2", "poison": True},
    ], max_retries=3)
    assert [(result[0], item(result)["status"]) for result in results] == [(True, 201), (False, 400)]
    assert item(results[1])["error"]["type"] == "document_parsing_exception"
    assert es.ids("mapped") == ["1"]
    assert es.stats.bulk_requests == 1
    es.faults.mapping_error(None)


# --- helpers and standalone -----------------------------------------------------------------------


def test_pure_helpers() -> None:
    assert simple_match("logs-*-*", "logs-audit-default") and not simple_match("logs-*-*", "logs-audit")
    now = NOW.timestamp() * 1000
    day = 86_400_000
    assert date_math_ms("now-1d", now) == now - day
    assert date_math_ms("now/d", now) == datetime(2025, 6, 1, tzinfo=timezone.utc).timestamp() * 1000
    assert date_math_ms("now/d", now, round_up=True) == datetime(2025, 6, 2, tzinfo=timezone.utc).timestamp() * 1000 - 1
    assert date_math_ms("2025-01-31||+1M", now) == datetime(2025, 2, 28, tzinfo=timezone.utc).timestamp() * 1000
    assert date_math_ms("2025-01-01", now, round_up=True) == datetime(2025, 1, 2, tzinfo=timezone.utc).timestamp() * 1000 - 1
    body = {"took": 1, "items": [{"index": {"status": 201}}, {"index": {"status": 429, "error": {"type": "x"}}}]}
    assert filter_path(body, "items.*.error") == {"items": [{"index": {"error": {"type": "x"}}}]}
    assert filter_path(body, "-items") == {"took": 1}
    assert filter_path(body, "**.type") == {"items": [{"index": {"error": {"type": "x"}}}]}


@pytest.fixture
async def standalone() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    # An asyncio subprocess: every wait on it is a task the test can bound and cancel, so a slow
    # shutdown on a busy machine fails the test instead of leaving a thread that blocks the loop.
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.testing.elastic", "--port", str(port),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_runs_standalone_until_interrupted(standalone: tuple[asyncio.subprocess.Process, int]) -> None:
    process, port = standalone
    assert process.stdout is not None and process.stderr is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    assert f"http://127.0.0.1:{port}".encode() in line
    async with AsyncElasticsearch(f"http://127.0.0.1:{port}") as client:
        assert (await client.info())["version"]["number"] == "9.1.0"
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    assert b"Traceback" not in await process.stderr.read()
