"""`sidecar es setup`, `sidecar audit replay` and `sidecar audit search` against the Elasticsearch stand-in."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.audit.elastic import create_client
from sidecar.audit.schema import FIELDS
from sidecar.config import ElasticsearchSinkConfig
from sidecar.testing.elastic import ElasticsearchStandIn
from tests.conftest import SidecarFactory
from tests.support.upstream import TestUpstream

TARGET = "logs-sidecar.audit-default"


async def sidecar_command(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def elastic() -> AsyncIterator[ElasticsearchStandIn]:
    async with ElasticsearchStandIn() as server:
        yield server


async def test_es_setup_installs_policy_template_and_data_stream_idempotently(elastic: ElasticsearchStandIn) -> None:
    for attempt in range(2):
        code, out, err = await sidecar_command("es", "setup", "--es", elastic.url)
        assert code == 0, err
        assert "lifecycle policy sidecar.audit-policy" in out
        assert ("already exists" in out) == (attempt == 1), out
    assert TARGET in elastic.data_stream_names()
    mappings = elastic.mappings(TARGET)["properties"]
    assert mappings["client"]["properties"]["ip"]["type"] == "ip"
    assert mappings["event"]["properties"]["sequence"]["type"] == "long"
    assert mappings["@timestamp"]["type"] == "date"
    assert mappings["url"]["properties"]["path"]["type"] == "wildcard"
    client = create_client(ElasticsearchSinkConfig(url=elastic.url))
    try:
        policy = await client.ilm.get_lifecycle(name="sidecar.audit-policy")
        phases = policy["sidecar.audit-policy"]["policy"]["phases"]
        assert phases["delete"]["min_age"] == "365d"
        template = await client.indices.get_index_template(name="sidecar.audit")
        assert template["index_templates"][0]["index_template"]["priority"] == 200
    finally:
        await client.close()
    assert len(FIELDS) > 60


async def test_replay_ships_file_records_once_and_search_finds_them(
    make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn, tmp_path: Path
) -> None:
    running = await make_sidecar(upstream.url, audit__elasticsearch__batch_age="20ms")
    async with aiohttp.ClientSession() as client:
        for number in range(5):
            async with client.get(f"{running.url}/echo/{number}") as response:
                await response.read()
        async with client.post(
            f"{running.url}/v1/chat/completions", json={"model": "llama-3", "messages": []},
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        ) as response:  # fmt: skip
            assert response.status == 200
        async with client.get(f"{running.url}/status/500") as response:
            await response.read()
    await running.sidecar.stop()
    events = tmp_path / "data" / "audit" / "events"
    written = sum(len(path.read_text().splitlines()) for path in events.iterdir())

    code, out, err = await sidecar_command("es", "setup", "--es", elastic.url)
    assert code == 0, err
    code, out, err = await sidecar_command("audit", "replay", "--file", str(events), "--es", elastic.url)
    assert code == 0, err
    assert out.startswith(f"{written} created, 0 already stored, 0 failed")
    code, out, err = await sidecar_command("audit", "replay", "--file", str(events), "--es", elastic.url)
    assert code == 0 and out.startswith(f"0 created, {written} already stored, 0 failed"), out + err
    assert len(elastic.documents(TARGET)) == written

    code, out, err = await sidecar_command("audit", "verify", "--es", elastic.url, "--public-key",
                                           str(tmp_path / "data" / "audit" / "checkpoint.pub"))  # fmt: skip
    assert code == 0, out + err

    code, out, err = await sidecar_command("audit", "search", "--es", elastic.url, "--outcome", "failure",
                                           "--since", "1h", "--format", "json")  # fmt: skip
    assert code == 0, err
    failures = [json.loads(line) for line in out.splitlines()]
    assert [doc["http"]["response"]["status_code"] for doc in failures] == [500]

    code, out, err = await sidecar_command("audit", "search", "--es", elastic.url, "--model", "llama-3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["time", "action", "outcome"]
    assert len(lines) == 2 and "model-call" in lines[1] and "/v1/chat/completions" in lines[1]

    code, out, err = await sidecar_command(
        "audit", "search", "--es", elastic.url, "--trace-id", "0af7651916cd43dd8448eb211c80319c", "--format", "json"
    )
    assert code == 0 and len(out.splitlines()) == 1, out + err


async def test_commands_name_what_is_wrong(elastic: ElasticsearchStandIn, tmp_path: Path) -> None:
    code, _, err = await sidecar_command("audit", "search")
    assert code == 2 and "no Elasticsearch URL" in err
    code, _, err = await sidecar_command("audit", "search", "--es", elastic.url, "--since", "yesterday")
    assert code == 2 and "--since: got 'yesterday'" in err
    code, _, err = await sidecar_command("audit", "search", "--es", "http://127.0.0.1:1")
    assert code == 2 and "cannot reach http://127.0.0.1:1" in err
    code, _, err = await sidecar_command("audit", "replay", "--file", str(tmp_path / "none"), "--es", elastic.url)
    assert code == 2 and "does not exist" in err
