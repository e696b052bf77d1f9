"""The file sink and the Elasticsearch client options, in isolation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.audit.chain import canonical_json
from sidecar.audit.elastic import create_client
from sidecar.audit.sinks import DeadLetters, FileSink, audit_files, document_id, read_documents
from sidecar.config import ElasticsearchSinkConfig


def _record(number: int) -> bytes:
    """A record as the pipeline writes it: canonical, compact JSON."""
    return canonical_json({"event": {"sequence": number, "hash": f"{number:064x}"}, "message": "m" * 500})


async def test_file_sink_rotates_and_keeps_write_order(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "events", max_file_size=64 << 10)
    await sink.start()
    for start in range(0, 400, 50):
        await sink.deliver([(number, _record(number)) for number in range(start, start + 50)])
    await sink.close()
    files = audit_files(tmp_path / "events")
    assert len(files) >= 3, "64 KiB files should have rotated"
    assert all(path.stat().st_size <= (64 << 10) + 50 * 600 for path in files)
    sequences = [doc["event"]["sequence"] for doc in read_documents(files)]
    assert sequences == list(range(400))
    assert sink.stored == 400


def test_unreadable_lines_are_reported_not_skipped_silently(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_record(0) + b"\n{broken\n[1]\n")
    problems: list[str] = []
    assert len(list(read_documents([path], problems))) == 1
    assert problems[0].startswith(f"{path}:2: not JSON") and problems[1] == f"{path}:3: not a JSON object"


def test_document_id_is_the_event_hash_and_nothing_else() -> None:
    assert document_id(_record(7)) == f"{7:064x}"
    # A value quoting the pattern is escaped in JSON, so it can never be taken for the key.
    tricky = canonical_json({"description": '"hash":"' + "a" * 64 + '"', "event": {"hash": "b" * 64}})
    assert tricky.index(b"description") < tricky.index(b'"event"')  # the decoy comes first
    assert document_id(tricky) == "b" * 64
    with pytest.raises(ValueError, match="without event.hash"):
        document_id(b'{"event": {}}')


def test_dead_letters_keep_the_document_and_the_error(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path / "dead.jsonl")
    letters.write([(_record(3), 400, {"type": "document_parsing_exception", "reason": "bad"})])
    (entry,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert entry["status"] == 400 and entry["error"]["type"] == "document_parsing_exception"
    assert entry["document"]["event"]["sequence"] == 3 and letters.count == 1


async def test_client_carries_the_configured_credentials(tmp_path: Path) -> None:
    api_key = create_client(ElasticsearchSinkConfig(url="http://127.0.0.1:9200", api_key="c2VjcmV0"))
    basic = create_client(ElasticsearchSinkConfig(url="http://127.0.0.1:9200", username="u", password="p"))
    try:
        assert api_key._headers["authorization"] == "ApiKey c2VjcmV0"
        assert basic._headers["authorization"].startswith("Basic ")
    finally:
        await api_key.close()
        await basic.close()


async def test_client_serialises_with_orjson_and_sends_unicode_and_big_numbers_intact() -> None:
    from elasticsearch.serializer import OrjsonSerializer

    from sidecar.testing.elastic import ElasticsearchStandIn

    async with ElasticsearchStandIn() as elastic:
        client = create_client(ElasticsearchSinkConfig(url=elastic.url))
        try:
            assert isinstance(client.transport.serializers.get_serializer("application/json"), OrjsonSerializer)
            source = {"message": "数据 \u2028 ok", "event": {"sequence": 2**53 + 1}}
            await client.index(index="probe", id="1", document=source, refresh=True)
            found = await client.get(index="probe", id="1")
            assert found["_source"] == source
        finally:
            await client.close()
