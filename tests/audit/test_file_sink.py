"""The audit trail with no Elasticsearch: spool to rotated JSON Lines files, end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.app import ConfigSource, Sidecar
from sidecar.audit.chain import load_verifier
from sidecar.audit.sinks import audit_files, read_documents
from sidecar.audit.verify import verify_documents
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


async def test_content_sha256_proves_what_was_sent_without_keeping_it(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    running = await make_sidecar(upstream.url, audit__content="sha256", audit__elasticsearch__batch_age="20ms")
    request_body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "secret plan"}]}).encode()
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{running.url}/v1/chat/completions", data=request_body,
                               headers={"Content-Type": "application/json"}) as response:  # fmt: skip
            response_body = await response.read()
    await running.sidecar.stop()
    (call,) = [doc for doc in _documents(tmp_path / "data") if doc["event"]["action"] == "model-call"]
    content = call["sidecar"]["content"]
    assert content == {
        "request_sha256": hashlib.sha256(request_body).hexdigest(),
        "response_sha256": hashlib.sha256(response_body).hexdigest(),
    }
    assert "secret plan" not in json.dumps(_documents(tmp_path / "data"))


async def test_content_redacted_keeps_capped_heads(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    running = await make_sidecar(
        upstream.url, audit__content="redacted", audit__content_max_bytes=128, audit__elasticsearch__batch_age="20ms"
    )
    prompt = "to jane.roe@example.com: " + "x" * 200
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{running.url}/v1/chat/completions",
                               json={"model": "m", "messages": [{"role": "user", "content": prompt}]}) as response:  # fmt: skip
            await response.read()
    await running.sidecar.stop()
    (call,) = [doc for doc in _documents(tmp_path / "data") if doc["event"]["action"] == "model-call"]
    content = call["sidecar"]["content"]
    assert content["truncated"] is True
    assert "[REDACTED:email]" in content["request"] and "jane.roe" not in content["request"]
    assert len(content["request"].encode()) <= 128 + len("[REDACTED:email]")
    assert content["response"].startswith('{"model": "m"')


async def test_a_reload_is_on_record_with_the_keys_it_changed(
    upstream: TestUpstream, tmp_path: Path
) -> None:
    config_file = tmp_path / "sidecar.yaml"
    base = f"data_dir: {tmp_path / 'data'}\nupstream:\n  url: {upstream.url}\n  health:\n    enabled: false\n"
    base += "proxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n"
    config_file.write_text(base + "log:\n  level: info\n")
    source = ConfigSource(config_file, env={})
    sidecar = Sidecar(source.load(), source)
    await sidecar.start()
    try:
        config_file.write_text(base + "log:\n  level: warning\naudit:\n  content: sha256\n")
        assert await sidecar.reload()
    finally:
        await sidecar.stop()
    (reload,) = [doc for doc in _documents(tmp_path / "data") if doc["event"]["action"] == "config-reload"]
    assert reload["event"]["category"] == ["configuration"] and reload["event"]["type"] == ["change"]
    assert reload["sidecar"]["config"]["changed"] == ["audit.content", "log.level"]
    assert reload["sidecar"]["config"]["restart_required"] == ["audit.content"]
    (start,) = [doc for doc in _documents(tmp_path / "data") if doc["event"]["action"] == "sidecar-start"]
    assert start["sidecar"]["config"]["sha256"] != reload["sidecar"]["config"]["sha256"]
