"""Delivery from the spool to the sink: batches out at once, committed in spool order."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar import __version__
from sidecar.audit.build import build_pipeline, build_redactor
from sidecar.audit.events import AuditIdentity
from sidecar.audit.pipeline import AuditPipeline
from sidecar.audit.sinks import SpooledRecord
from sidecar.config import load_config
from sidecar.testing.elastic import ElasticsearchStandIn
from tests.support.records import make_exchange
from tests.support.tools import wait_for

BATCH = 10


class GatedSink:
    """A sink whose batches land only when the test lets each one through."""

    name = "gated"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.stored = 0
        self.duplicates = 0
        self.retries = {"rejected": 0, "server_error": 0, "connection": 0}
        self.dead_lettered = 0
        self.last_delivery = 0.0
        self.opened = False

    def open(self) -> None:
        """Let every batch out now and from now on through."""
        self.opened = True
        for gate in self.gates:
            gate.set()

    @property
    def out(self) -> int:
        return sum(not gate.is_set() for gate in self.gates)

    async def start(self) -> None:
        pass

    async def deliver(self, records: Sequence[SpooledRecord]) -> None:
        gate = asyncio.Event()
        if self.opened:
            gate.set()
        self.batches.append([offset for offset, _ in records])
        self.gates.append(gate)
        await gate.wait()
        self.stored += len(records)
        self.last_delivery = time.time()

    async def close(self) -> None:
        pass


def _pipeline(tmp_path: Path, **settings: Any) -> AuditPipeline:
    flags: dict[tuple[str, ...], Any] = {("data_dir",): str(tmp_path), ("audit", "elasticsearch", "batch_size"): BATCH}
    flags.update({("audit", "elasticsearch", *key.split(".")): value for key, value in settings.items()})
    config = load_config(None, env={}, flags=flags)
    identity = AuditIdentity("inference-sidecar", "test", __version__, socket.gethostname(), "sidecar.audit", "default")
    return build_pipeline(config, identity, build_redactor(config.audit.redaction, tmp_path / "keys"))


@contextlib.asynccontextmanager
async def _gated(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[AuditPipeline, GatedSink]]:
    """A started pipeline delivering to Elasticsearch's settings, with a gated sink in its place."""
    pipeline = _pipeline(tmp_path, url="http://127.0.0.1:9", **settings)
    sink = GatedSink()
    pipeline.sink = sink
    await pipeline.start()
    try:
        yield pipeline, sink
    finally:
        sink.open()
        await pipeline.stop(deliver_timeout=5)


def _feed(pipeline: AuditPipeline, count: int) -> None:
    for number in range(count):
        pipeline(make_exchange(request_id=f"r{number}"))


async def test_batches_go_out_together_up_to_the_limit_and_are_committed_in_spool_order(tmp_path: Path) -> None:
    async with _gated(tmp_path, max_in_flight=3) as (pipeline, sink):
        _feed(pipeline, 6 * BATCH - 1)  # with the start-up record: six full batches
        await wait_for(lambda: len(sink.batches) == 3, timeout=10)
        await asyncio.sleep(0.2)
        assert len(sink.batches) == 3, "no more than max_in_flight batches are out"
        assert [batch[0] for batch in sink.batches] == [0, BATCH, 2 * BATCH]
        assert all(len(batch) == BATCH for batch in sink.batches)

        # The later two land first: nothing is committed past the one still out, and no slot frees.
        sink.gates[1].set()
        sink.gates[2].set()
        await asyncio.sleep(0.2)
        assert pipeline.spool.committed_offset == 0
        assert len(sink.batches) == 3

        sink.gates[0].set()
        await wait_for(lambda: pipeline.spool.committed_offset == 3 * BATCH, timeout=10)
        await wait_for(lambda: len(sink.batches) == 6, timeout=10)
        assert [batch[0] for batch in sink.batches[3:]] == [3 * BATCH, 4 * BATCH, 5 * BATCH]
        sink.open()
        await wait_for(lambda: pipeline.spool.committed_offset == 6 * BATCH, timeout=10)
        delivered = [offset for batch in sink.batches for offset in batch]
        assert delivered == list(range(6 * BATCH)), "every record once, none skipped"


async def test_one_batch_at_a_time_when_the_limit_is_one(tmp_path: Path) -> None:
    async with _gated(tmp_path, max_in_flight=1) as (pipeline, sink):
        _feed(pipeline, 3 * BATCH)
        await wait_for(lambda: len(sink.batches) == 1, timeout=10)
        await asyncio.sleep(0.2)
        assert len(sink.batches) == 1
        sink.gates[0].set()
        await wait_for(lambda: len(sink.batches) == 2, timeout=10)
        assert pipeline.spool.committed_offset == BATCH


async def test_a_partial_batch_goes_out_after_batch_age_while_others_are_out(tmp_path: Path) -> None:
    async with _gated(tmp_path, max_in_flight=2, batch_age="200ms") as (pipeline, sink):
        _feed(pipeline, BATCH + 2)  # one full batch, then three records
        await wait_for(lambda: len(sink.batches) == 2, timeout=5)
        assert [len(batch) for batch in sink.batches] == [BATCH, 3]
        assert sink.out == 2


async def test_batches_out_at_a_stop_are_sent_again_at_the_next_start_and_stored_once(tmp_path: Path) -> None:
    async with ElasticsearchStandIn() as elastic:
        # Elasticsearch stores each batch at once but answers late: the stop finds them all out.
        elastic.faults.slow(10.0)
        first = _pipeline(tmp_path, url=elastic.url, max_in_flight=4)
        await first.start()
        _feed(first, 4 * BATCH - 1)
        await wait_for(lambda: elastic.stats.bulk_requests == 4, timeout=10)
        await wait_for(lambda: len(elastic.documents()) == 4 * BATCH, timeout=10)
        await first.stop(deliver_timeout=0.1)
        # stop() adds its own record; the batches that were out are still uncommitted.
        assert first.spool.committed_offset == 0

        elastic.faults.clear()
        second = _pipeline(tmp_path, url=elastic.url, max_in_flight=4)
        await second.start()
        try:
            await wait_for(lambda: second.spool.committed_offset == second.spool.next_offset, timeout=20)
            sequences = sorted(doc["event"]["sequence"] for doc in elastic.documents())
            assert sequences == sorted(set(sequences)), "no document stored twice"
            assert len(sequences) == second.spool.next_offset
            assert second.sink.duplicates >= 4 * BATCH
        finally:
            await second.stop(deliver_timeout=5)


@pytest.mark.parametrize("value", [0, 17, "two"])
def test_max_in_flight_out_of_range_names_the_key(tmp_path: Path, value: object) -> None:
    from sidecar.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _pipeline(tmp_path, max_in_flight=value)
    assert "audit.elasticsearch.max_in_flight" in str(caught.value)


def test_files_are_written_one_batch_at_a_time(tmp_path: Path) -> None:
    assert _pipeline(tmp_path, max_in_flight=4).settings.max_in_flight == 1
    assert _pipeline(tmp_path, url="http://127.0.0.1:9", max_in_flight=4).settings.max_in_flight == 4
