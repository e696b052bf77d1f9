"""The sidecar process under signals: graceful drain on SIGTERM, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time

import aiohttp
import pytest

from tests.support.process import SidecarProcess
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

pytestmark = pytest.mark.integration

STREAMS = 20
EVENTS = 40


def log_lines(process: SidecarProcess) -> list[dict]:
    return [json.loads(line) for line in process.log.splitlines() if line.startswith("{")]


async def test_sigterm_lets_20_in_flight_streams_finish_then_exits_0(upstream: TestUpstream, tmp_path):
    process = SidecarProcess(upstream.url, tmp_path, env={"SIDECAR_PROXY__DRAIN_TIMEOUT": "15s"})
    await process.start()
    first_event = asyncio.Event()
    started = 0

    async def stream(client: aiohttp.ClientSession) -> bytes:
        nonlocal started
        async with client.get(f"{process.url}/sse?events={EVENTS}&interval_ms=50") as response:
            body = await response.content.readuntil(b"\n\n")
            started += 1
            if started == STREAMS:
                first_event.set()
            return body + await response.read()

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            tasks = [asyncio.create_task(stream(client)) for _ in range(STREAMS)]
            await asyncio.wait_for(first_event.wait(), 10)
            signalled = time.monotonic()
            process.send(signal.SIGTERM)

            await asyncio.sleep(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
                async with client.get(f"{process.url}/echo"):
                    pass
            async with client.get(f"{process.admin_url}/-/ready") as response:
                assert response.status == 503
                assert (await response.json())["checks"]["shutdown"] == "draining for shutdown"

            bodies = await asyncio.wait_for(asyncio.gather(*tasks), 15)
        returncode = await process.wait(15)
        elapsed = time.monotonic() - signalled
    finally:
        await process.stop()

    assert returncode == 0, process.log
    assert elapsed < 15
    for body in bodies:
        assert [json.loads(e.removeprefix(b"data: "))["seq"] for e in body.split(b"\n\n") if e] == list(range(EVENTS))
    assert upstream.streams_finished == STREAMS
    assert "Traceback" not in process.log
    lines = {line["message"]: line for line in log_lines(process)}
    assert lines["draining"]["in_flight"] == STREAMS
    assert "sidecar stopped" in lines


async def test_drain_timeout_cuts_long_streams_and_still_exits_0(upstream: TestUpstream, tmp_path):
    process = SidecarProcess(upstream.url, tmp_path, env={"SIDECAR_PROXY__DRAIN_TIMEOUT": "500ms"})
    await process.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{process.url}/sse?events=1000&interval_ms=10") as response:
                await response.content.readuntil(b"\n\n")
                signalled = time.monotonic()
                process.send(signal.SIGTERM)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
        returncode = await process.wait(10)
        elapsed = time.monotonic() - signalled
    finally:
        await process.stop()
    assert returncode == 0, process.log
    assert 0.4 < elapsed < 5
    assert any(line["message"].startswith("drain timeout") for line in log_lines(process))
    assert "Traceback" not in process.log


async def test_sighup_applies_live_settings_and_names_the_rest(upstream: TestUpstream, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("proxy:\n  max_request_body: 1MiB\n")
    process = SidecarProcess(upstream.url, tmp_path, "--config", str(config))
    await process.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{process.url}/echo", data=b"x" * 5000) as response:
                assert response.status == 200

            config.write_text("proxy:\n  max_request_body: 4KiB\nupstream:\n  max_connections: 8\n")
            process.send(signal.SIGHUP)
            await wait_for(lambda: "config reloaded" in process.log, what="the reload")
            async with client.post(f"{process.url}/echo", data=b"x" * 5000) as response:
                assert response.status == 413

            config.write_text("proxy:\n  max_request_body: lots\n")
            process.send(signal.SIGHUP)
            await wait_for(lambda: "config reload failed" in process.log, what="the failed reload")
            async with client.post(f"{process.url}/echo", data=b"x" * 5000) as response:
                assert response.status == 413  # the last good config still holds
    finally:
        process.send(signal.SIGTERM)
        assert await process.wait(10) == 0
    lines = {line["message"]: line for line in log_lines(process)}
    assert lines["config reloaded"]["changed"] == ["proxy.max_request_body", "upstream.max_connections"]
    assert lines["these settings changed but take effect only after a restart"]["restart_required"] == [
        "upstream.max_connections"
    ]
    (problem,) = lines["config reload failed; keeping the running config"]["problems"]
    assert problem.startswith(f"{config}:2:21: proxy.max_request_body: got 'lots'")


async def test_port_in_use_fails_fast_with_the_key_named(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "run", "--listen", f"127.0.0.1:{port}",
            "--admin-listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 1
    assert f"proxy.listen: cannot listen on 127.0.0.1:{port}: address already in use" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_sighup_during_the_drain_does_not_kill_the_process(upstream: TestUpstream, tmp_path):
    process = SidecarProcess(upstream.url, tmp_path, env={"SIDECAR_PROXY__DRAIN_TIMEOUT": "10s"})
    await process.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{process.url}/sse?events=30&interval_ms=30") as response:
                first = await response.content.readuntil(b"\n\n")
                process.send(signal.SIGTERM)
                await asyncio.sleep(0.2)
                process.send(signal.SIGHUP)
                rest = await response.read()
        returncode = await process.wait(10)
    finally:
        await process.stop()
    assert returncode == 0, process.log
    assert (first + rest).count(b"data: ") == 30
    assert any(line["message"] == "reload ignored: shutting down" for line in log_lines(process))


async def test_reload_keeps_restart_only_keys_at_their_running_values(upstream: TestUpstream, tmp_path):
    from sidecar.app import ConfigSource, Sidecar

    other = TestUpstream()
    await other.start()
    config_file = tmp_path / "sidecar.yaml"
    body = "upstream:\n  url: {url}\n  health:\n    enabled: false\nproxy:\n  listen: 127.0.0.1:0\n  max_request_body: {size}\nadmin:\n  listen: 127.0.0.1:0\ndata_dir: {data}\n"
    config_file.write_text(body.format(url=upstream.url, size="1MiB", data=tmp_path / "data"))
    source = ConfigSource(config_file, env={})
    sidecar = Sidecar(source.load(), source)
    await sidecar.start()
    try:
        config_file.write_text(body.format(url=other.url, size="1KiB", data=tmp_path / "data"))
        assert await sidecar.reload()
        async with aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{sidecar.proxy_address.port}/echo", data=b"x" * 100) as response:
                assert response.status == 200
            async with client.post(f"http://127.0.0.1:{sidecar.proxy_address.port}/echo", data=b"x" * 2000) as response:
                assert response.status == 413  # the live key changed
        assert len(upstream.requests) == 1 and other.requests == []  # the restart-only key did not
        assert str(sidecar.config.upstream.url) == upstream.url
    finally:
        await sidecar.stop()
        await other.stop()


async def test_reload_names_settings_built_at_start_as_needing_a_restart(upstream: TestUpstream, tmp_path, caplog):
    import logging

    from sidecar.app import ConfigSource, Sidecar

    caplog.set_level(logging.INFO)
    config_file = tmp_path / "sidecar.yaml"
    body = ("upstream:\n  url: {url}\n  health:\n    enabled: false\nproxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n"
            "data_dir: {data}\ntracing:\n  sample_ratio: {ratio}\n  headers: {headers}\nmetrics:\n  max_models: {models}\n")  # fmt: skip
    config_file.write_text(body.format(url=upstream.url, data=tmp_path / "data", ratio=1.0, headers="{}", models=20))
    source = ConfigSource(config_file, env={})
    sidecar = Sidecar(source.load(), source)
    await sidecar.start()
    try:
        config_file.write_text(body.format(url=upstream.url, data=tmp_path / "data", ratio=0.1, headers="{x-api-key: k}", models=5))
        assert await sidecar.reload()
    finally:
        await sidecar.stop()
    (warning,) = [r for r in caplog.records if r.getMessage() == "these settings changed but take effect only after a restart"]
    assert warning.restart_required == ["metrics.max_models", "tracing.headers.x-api-key", "tracing.sample_ratio"]
    # The running config still says what actually runs.
    assert sidecar.config.tracing.sample_ratio == 1.0 and sidecar.config.tracing.headers == {}
    assert sidecar.config.metrics.max_models == 20
