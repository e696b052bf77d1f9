"""`sidecar audit verify` on a real trail: intact, one record altered, one deleted, the tail cut."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

from sidecar.audit.chain import create_ed25519_key
from sidecar.audit.sinks import audit_files
from tests.conftest import SidecarFactory
from tests.support.upstream import TestUpstream

CHECKPOINT_INTERVAL_S = 0.3


async def _verify(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "audit", "verify", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


def _lines(trail: Path) -> list[str]:
    return [line for path in audit_files(trail) for line in path.read_text().splitlines()]


def _write(path: Path, lines: list[str]) -> Path:
    path.mkdir()
    (path / "audit.jsonl").write_text("".join(line + "\n" for line in lines))
    return path


async def test_verify_reports_each_kind_of_tampering(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    running = await make_sidecar(
        upstream.url,
        audit__elasticsearch__batch_age="20ms",
        audit__checkpoint__interval=f"{CHECKPOINT_INTERVAL_S}s",
    )
    async with aiohttp.ClientSession() as client:
        deadline = time.monotonic() + 1.0  # spans a few checkpoints
        number = 0
        while time.monotonic() < deadline:
            async with client.get(f"{running.url}/echo/{number}") as response:
                await response.read()
            number += 1
            await asyncio.sleep(0.005)
    await running.sidecar.stop()
    audit = tmp_path / "data" / "audit"
    public_key = str(audit / "checkpoint.pub")
    lines = _lines(audit / "events")
    assert len(lines) > 40

    code, output = await _verify("--file", str(audit / "events"), "--public-key", public_key)
    assert code == 0, output
    assert f"records checked: {len(lines)}" in output and "OK" in output

    middle = len(lines) // 2
    altered = json.loads(lines[middle])
    altered["http"]["response"]["status_code"] = 201
    sequence = altered["event"]["sequence"]
    code, output = await _verify(
        "--file", str(_write(tmp_path / "altered", lines[:middle] + [json.dumps(altered)] + lines[middle + 1 :])),
        "--public-key", public_key,
    )  # fmt: skip
    assert code == 1 and f"altered records (content does not match event.hash): sequence {sequence}" in output, output

    code, output = await _verify(
        "--file", str(_write(tmp_path / "deleted", lines[:middle] + lines[middle + 1 :])), "--public-key", public_key
    )
    assert code == 1 and f"missing records (deleted): sequence {sequence}" in output, output

    await asyncio.sleep(CHECKPOINT_INTERVAL_S * 2 + min(10.0, CHECKPOINT_INTERVAL_S) + 0.2)  # the next checkpoint is overdue
    code, output = await _verify(
        "--file", str(_write(tmp_path / "cut", lines[:-10])), "--public-key", public_key, "--json"
    )
    assert code == 1, output
    report = json.loads(output)
    assert any("tail cut off" in finding for finding in report["findings"]), output

    create_ed25519_key(tmp_path / "other.key")
    code, output = await _verify("--file", str(audit / "events"), "--public-key", str(tmp_path / "other.pub"))
    assert code == 1 and "not the given" in output, output


async def test_verify_names_a_missing_file() -> None:
    code, output = await _verify("--file", "/nonexistent/audit")
    assert code == 2 and "/nonexistent/audit does not exist" in output
