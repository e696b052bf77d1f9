"""The sink is up while records are delivered, not while it answers.

The pipeline runs with the real `elasticsearch` client against the in-repo stand-in, which answers
every bulk request but stores nothing (503s, 429s, or a 200 whose items all fail). The pipeline's
clock is injected, so `audit.sink_down_after` passes when the test says, after a counted number of
failed bulk requests, never by waiting for it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar import __version__
from sidecar.audit.build import build_pipeline, build_redactor
from sidecar.audit.events import AuditIdentity
from sidecar.audit.metrics import AuditCollector
from sidecar.audit.pipeline import AuditPipeline
from sidecar.config import load_config
from sidecar.rules.alert import AlertState
from sidecar.testing.elastic import ElasticsearchStandIn, Faults
from tests.conftest import SidecarFactory
from tests.support.records import make_exchange
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

TARGET = "logs-sidecar.audit-default"
DOWN_AFTER = 60.0

FAULTS: dict[str, Callable[[Faults], None]] = {
    "503 to every bulk request": lambda faults: faults.fail_requests(503, path="_bulk"),
    "429 to every bulk request": lambda faults: faults.fail_requests(429, path="_bulk"),
    "200 with every item rejected (429)": lambda faults: faults.reject_items(1.0, status=429),
    "200 with every item failing (503)": lambda faults: faults.reject_items(1.0, status=503),
}


class Clock:
    """Unix time that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def elastic() -> AsyncIterator[ElasticsearchStandIn]:
    async with ElasticsearchStandIn() as server:
        yield server


def _pipeline(tmp_path: Path, url: str, clock: Clock, **audit: Any) -> AuditPipeline:
    flags: dict[tuple[str, ...], Any] = {
        ("data_dir",): str(tmp_path),
        ("audit", "elasticsearch", "url"): url,
        ("audit", "elasticsearch", "batch_age"): "20ms",
        ("audit", "elasticsearch", "max_backoff"): "100ms",
        ("audit", "sink_down_after"): f"{DOWN_AFTER:g}s",
    }
    flags.update({("audit", *key.split("__")): value for key, value in audit.items()})
    config = load_config(None, env={}, flags=flags)
    identity = AuditIdentity("inference-sidecar", "test", __version__, socket.gethostname(), "sidecar.audit", "default")
    return build_pipeline(config, identity, build_redactor(config.audit.redaction, tmp_path / "keys"), clock=clock)


def _gauges(pipeline: AuditPipeline) -> dict[str, float]:
    """The pipeline's unlabelled series as /metrics serves them."""
    return {
        sample.name: sample.value
        for family in AuditCollector(pipeline).collect()
        for sample in family.samples
        if not sample.labels
    }


def _feed(pipeline: AuditPipeline, count: int) -> None:
    for number in range(count):
        pipeline(make_exchange(request_id=f"r{number}"))


async def _drained(pipeline: AuditPipeline) -> None:
    await wait_for(
        lambda: pipeline.spool.committed_offset >= pipeline.spool.next_offset and not pipeline.queue_length,
        timeout=30,
        what="the audit spool to drain into Elasticsearch",
    )


async def _delivering(pipeline: AuditPipeline) -> None:
    """Wait until the start-up checkpoint is stored and nothing else waits."""
    await wait_for(lambda: pipeline.sink.stored > 0, timeout=30, what="the first record stored")
    await _drained(pipeline)


async def _failed_bulks(elastic: ElasticsearchStandIn, count: int) -> None:
    """Wait until `count` more bulk requests have been answered (and, under the fault, refused)."""
    wanted = elastic.stats.bulk_requests + count
    await wait_for(lambda: elastic.stats.bulk_requests >= wanted, timeout=30, what=f"{count} more bulk requests")


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_sink_that_answers_but_stores_nothing_is_down_after_sink_down_after(
    tmp_path: Path, elastic: ElasticsearchStandIn, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.audit")
    clock = Clock()
    pipeline = _pipeline(tmp_path, elastic.url, clock)
    await pipeline.start()
    try:
        await _delivering(pipeline)  # the start-up checkpoint is stored
        assert _gauges(pipeline)["sidecar_audit_sink_up"] == 1

        FAULTS[fault](elastic.faults)
        written_at = clock.now
        _feed(pipeline, 100)
        await _failed_bulks(elastic, 5)  # the sink retries on; every bulk request fails
        assert pipeline.spool.committed_offset < pipeline.spool.next_offset, "nothing was delivered"

        clock.advance(DOWN_AFTER - 1)
        assert _gauges(pipeline)["sidecar_audit_sink_up"] == 1, "down before sink_down_after has passed"
        await _failed_bulks(elastic, 2)
        clock.advance(2)
        gauges = _gauges(pipeline)
        assert gauges["sidecar_audit_sink_up"] == 0, f"{fault}: records wait {DOWN_AFTER + 1:g}s and the sink is up"
        # The delivery lag, as Prometheus computes it: time() - the oldest undelivered record's time.
        assert gauges["sidecar_audit_oldest_undelivered_timestamp_seconds"] == written_at
        assert gauges["sidecar_audit_last_delivery_timestamp_seconds"] == written_at
        # The default policy keeps the instance ready: the spool holds the records.
        assert pipeline.not_ready_reason() is None
        await wait_for(lambda: _logged(caplog, "audit records are not being delivered"), what="the down warning")

        elastic.faults.clear()
        await _drained(pipeline)
        gauges = _gauges(pipeline)
        assert gauges["sidecar_audit_sink_up"] == 1
        assert gauges["sidecar_audit_oldest_undelivered_timestamp_seconds"] == clock.now, "nothing waits: no lag"
        assert gauges["sidecar_audit_last_delivery_timestamp_seconds"] == clock.now
        await wait_for(
            lambda: any(doc["event"]["action"] == "audit-sink-recovered" for doc in elastic.documents(TARGET)),
            timeout=30,
            what="the audit-sink-recovered record in Elasticsearch",
        )
    finally:
        await pipeline.stop(deliver_timeout=5)

    [recovered] = [doc for doc in elastic.documents(TARGET) if doc["event"]["action"] == "audit-sink-recovered"]
    assert recovered["event"]["outcome"] == "success"
    assert recovered["sidecar"]["audit"] == {"sink": "elasticsearch", "stalled_seconds": DOWN_AFTER + 1}
    assert _logged(caplog, "audit records reach elasticsearch again")


async def test_a_sink_storing_part_of_each_bulk_lags_but_is_not_down(
    tmp_path: Path, elastic: ElasticsearchStandIn
) -> None:
    clock = Clock()
    pipeline = _pipeline(tmp_path, elastic.url, clock, elasticsearch__batch_size=20)
    await pipeline.start()
    try:
        await _delivering(pipeline)
        elastic.faults.reject_items(0.8, status=429, seed=3)
        written_at = clock.now
        _feed(pipeline, 200)
        sink = pipeline.sink
        stored = sink.stored
        await wait_for(lambda: sink.stored > stored, timeout=30, what="some records stored")
        clock.advance(DOWN_AFTER + 1)
        stored = sink.stored
        await wait_for(lambda: sink.stored > stored, timeout=30, what="more records stored, late")
        gauges = _gauges(pipeline)
        assert gauges["sidecar_audit_sink_up"] == 1, "records are being delivered: up, however slowly"
        assert gauges["sidecar_audit_oldest_undelivered_timestamp_seconds"] == written_at, "the lag shows it"
        assert sink.retries["rejected"] > 0
        elastic.faults.clear()
        await _drained(pipeline)
    finally:
        await pipeline.stop(deliver_timeout=5)


async def test_the_sink_down_can_fail_readiness_when_configured(tmp_path: Path, elastic: ElasticsearchStandIn) -> None:
    clock = Clock()
    pipeline = _pipeline(tmp_path, elastic.url, clock, sink_down_fails_ready=True)
    await pipeline.start()
    try:
        await _delivering(pipeline)
        elastic.faults.fail_requests(503, path="_bulk")
        _feed(pipeline, 10)
        await _failed_bulks(elastic, 3)
        assert pipeline.not_ready_reason() is None
        clock.advance(DOWN_AFTER + 1)
        reason = pipeline.not_ready_reason()
        assert reason is not None and "elasticsearch" in reason and "1m" in reason
        elastic.faults.clear()
        await _drained(pipeline)
        assert pipeline.not_ready_reason() is None
    finally:
        await pipeline.stop(deliver_timeout=5)


async def test_records_left_from_before_a_restart_count_from_when_they_were_written(
    tmp_path: Path, elastic: ElasticsearchStandIn
) -> None:
    clock = Clock()
    written_at = clock.now
    await elastic.refuse()
    first = _pipeline(tmp_path, elastic.url, clock)
    await first.start()
    _feed(first, 5)
    await wait_for(lambda: first.spool.next_offset >= 5, what="records in the spool")
    await first.stop(deliver_timeout=0.1)

    clock.advance(3600)
    second = _pipeline(tmp_path, elastic.url, clock)
    await second.start()
    try:
        gauges = _gauges(second)
        assert gauges["sidecar_audit_oldest_undelivered_timestamp_seconds"] == written_at, "an hour's lag"
        # The sink gets sink_down_after from the start to deliver them.
        assert gauges["sidecar_audit_sink_up"] == 1
        clock.advance(DOWN_AFTER + 1)
        assert _gauges(second)["sidecar_audit_sink_up"] == 0
        await elastic.accept()
        await _drained(second)
        assert _gauges(second)["sidecar_audit_sink_up"] == 1
    finally:
        await second.stop(deliver_timeout=5)


# --- in the running sidecar: /metrics, /-/ready, the status page and the rules --------------------


async def test_a_refusing_elasticsearch_shows_in_metrics_readiness_status_and_rules(
    make_sidecar: SidecarFactory, upstream: TestUpstream, elastic: ElasticsearchStandIn
) -> None:
    running = await make_sidecar(
        upstream.url,
        audit__elasticsearch__url=elastic.url,
        audit__elasticsearch__batch_age="20ms",
        audit__elasticsearch__max_backoff="100ms",
        audit__sink_down_after="300ms",
        audit__sink_down_fails_ready=True,
        rules__interval="50ms",
        rules__alerts=[
            {"name": "TestSinkDown", "signal": "audit_sink_up", "op": "<", "threshold": 1},
            {"name": "TestDeliveryLag", "signal": "audit_delivery_lag_seconds", "op": ">", "threshold": 0.3},
        ],
    )
    pipeline = running.sidecar.audit
    engine = running.sidecar.rule_engine
    assert pipeline is not None and engine is not None
    await _delivering(pipeline)
    elastic.faults.fail_requests(503, path="_bulk")

    def firing(name: str) -> bool:
        return any(alert.name == name and alert.state is AlertState.FIRING for alert in engine.alerts())

    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.url}/echo/1") as response:
            assert response.status == 200
        await wait_for(lambda: firing("TestSinkDown") and firing("TestDeliveryLag"), timeout=30, what="both alerts")
        async with client.get(f"{running.admin_url}/metrics") as response:
            exposition = await response.text()
        assert "sidecar_audit_sink_up 0.0" in exposition
        assert "sidecar_audit_oldest_undelivered_timestamp_seconds " in exposition
        async with client.get(f"{running.admin_url}/-/ready") as response:
            assert response.status == 503
            assert "elasticsearch" in (await response.json())["checks"]["audit"]
        async with client.get(f"{running.admin_url}/-/status.json") as response:
            assert (await response.json())["audit"]["latest"]["sink_up"] is False

        elastic.faults.clear()
        await _drained(pipeline)
        await wait_for(lambda: not firing("TestSinkDown"), timeout=30, what="the sink alert to resolve")
        async with client.get(f"{running.admin_url}/-/ready") as response:
            assert response.status == 200
