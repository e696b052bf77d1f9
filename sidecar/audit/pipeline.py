"""The audit pipeline: Exchange -> ECS document -> redaction -> hash chain -> spool -> sink.

Three places run it, so that the request path only appends to a queue:

- the observer (`__call__`, on the event loop): puts the Exchange on a
  bounded in-memory queue and wakes the writer if it sleeps;
- the writer thread: builds, redacts, seals and serialises documents in
  batches, appends each batch to the spool (fsync per policy), and writes
  the periodic signed checkpoints;
- the delivery task (on the event loop, with file and network I/O in
  threads or async): reads from the spool's committed offset, hands a batch
  to the sink, and commits once the sink has stored or dead-lettered all of it.

The sink counts as down when records wait and none leave (`SinkHealth`), however
the sink answers; a small task on the event loop logs each change and puts the
recovery on record (`audit-sink-recovered`).

When the spool is full the configured policy decides: `fail_open` drops new
events (counted, and written into the chain as an `audit-events-dropped`
notice once there is room, so the loss itself is on record); `fail_closed`
makes `admission_refusal()` answer, which the proxy turns into 503s.

With `hold_response`, `settle()` lets the proxy wait until a request's
document is in the spool (fsynced under `fsync: always`) before the
response's last bytes go out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.audit.chain import Chain, ChainHead, Signer, canonical_json, checkpoint_fields, head_of, new_chain
from sidecar.audit.events import AuditIdentity, exchange_document, get_path, iso_time, lifecycle_document, set_path
from sidecar.audit.health import Change, SinkHealth
from sidecar.audit.redact import Redactor
from sidecar.audit.schema import redacted_fields
from sidecar.audit.sinks import Sink
from sidecar.audit.spool import Spool, SpoolFull
from sidecar.config import format_duration
from sidecar.exchange import Exchange

logger = logging.getLogger(__name__)

# Documents built per writer pass: large enough to amortise a spool write and
# fsync, small enough that a batch's memory stays in the low megabytes.
_WRITE_BATCH = 2048
# The writer wakes on its own this often; waking it per event would put a
# thread switch (and a GIL handover) on every request. It is woken at once
# only when a batch is full or a response waits for its record.
_WRITE_INTERVAL_S = 0.01
_WAKE_AT = 512
_REDACTION_CACHE_SIZE = 16_384


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A non-request fact for the audit trail (start, stop, reload); built into a document by the writer."""

    action: str
    category: tuple[str, ...]
    types: tuple[str, ...]
    message: str
    at: float
    reason: str | None = None
    outcome: str | None = None
    """ECS event.outcome, for a record of an attempt (start, stop, reload); None where none makes sense."""
    sidecar: dict[str, Any] | None = None
    kind: str = "event"
    """ECS event.kind: `event`, or `alert` for an alert rule's firing and resolution."""
    rule: dict[str, Any] | None = None
    """ECS rule.* (name, description, ruleset) for alerts."""


@dataclass
class AuditStats:
    """Counters read by `/metrics`; each is written by one thread only."""

    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"spool_full": 0, "queue_full": 0, "encode_error": 0})
    checkpoints: int = 0
    quarantined_bytes: int = 0


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    when_full: str
    """fail_open or fail_closed."""
    queue_size: int
    checkpoint_interval: float
    batch_size: int
    batch_bytes: int
    batch_age: float
    fail_closed_headroom: int
    """Bytes past the spool limit still written under fail_closed, for requests already in flight."""
    max_in_flight: int = 1
    """Batches out to the sink at once; committed in spool order whatever order they land in."""
    sink_down_after: float = 60.0
    """The sink is down once records have waited this long with none delivered in that time."""
    sink_down_fails_ready: bool = False
    """While the sink is down, `not_ready_reason()` says so (otherwise only a full spool does)."""


class AuditPipeline:
    def __init__(
        self,
        settings: PipelineSettings,
        *,
        spool: Spool,
        sink: Sink,
        identity: AuditIdentity,
        redactor: Redactor,
        signer: Signer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.sink = sink
        self.identity = identity
        self.stats = AuditStats()
        self._redactor = redactor
        self._signer = signer
        self._clock = clock
        self._redacted = redacted_fields()
        self._redaction_cache: dict[str, str] = {}
        self._queue: collections.deque[Exchange | Lifecycle | _Internal] = collections.deque()
        self._wake_writer = threading.Event()
        self._writer_idle = False
        self._wake_each = False
        """Wake the writer for every event: responses are waiting on their records (hold_response)."""
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._chain: Chain | None = None
        self._next_checkpoint = 0.0
        self._pending_drop_notice = 0
        self._full_at: int | None = None
        """Spool usage when an append was last refused: full until delivery frees space below it."""
        # hold_response: tickets count items enqueued; the writer reports how many it has finished.
        self._enqueued = 0
        self._last_dropped = False
        self._settled = 0
        self._finished_tickets = 0
        """Tickets the writer has finished (written or dropped); written by the writer thread only."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._appended = asyncio.Event()
        self._delivery_waiting = False
        self._read_from = 0
        """The spool offset delivery reads next: past the committed one while batches are out."""
        self._delivery: asyncio.Task[None] | None = None
        self._stop_delivery = False
        self._oldest: tuple[int, float] | None = None
        """(offset, when written) of the oldest record delivery has read and not yet committed."""
        self.health = SinkHealth(settings.sink_down_after, started=clock())
        self._sink_watch: asyncio.Task[None] | None = None

    # --- the request path ------------------------------------------------------

    def __call__(self, exchange: Exchange) -> None:
        self._enqueue(exchange)

    def record(self, fact: Lifecycle) -> None:
        self._enqueue(fact)

    def _enqueue(self, item: Exchange | Lifecycle) -> None:
        if len(self._queue) >= self.settings.queue_size:
            self.stats.dropped["queue_full"] += 1
            self._pending_drop_notice += 1
            self._last_dropped = True  # nothing will come of it: settle() must not wait
            return
        self._last_dropped = False
        self._enqueued += 1
        self._queue.append(item)
        if self._writer_idle and (self._wake_each or len(self._queue) >= _WAKE_AT):
            self._wake_writer.set()

    async def settle(self, exchange: Exchange) -> None:
        """Wait until `exchange`'s document is in the spool (hold_response).

        Called right after the Exchange was published, so it is the newest item enqueued.
        """
        ticket = self._enqueued
        if self._last_dropped or self._settled >= ticket or self._loop is None:
            return
        if not self._wake_each:
            self._wake_each = True
            self._wake_writer.set()
        future = self._loop.create_future()
        self._waiters.append((ticket, future))
        await future

    def admission_refusal(self) -> str | None:
        """Why a proxied request must be refused now (fail_closed, spool full), or None."""
        if self.settings.when_full != "fail_closed":
            return None
        if self.spool.used_bytes >= self.spool.max_bytes:
            return "the audit spool is full and audit.spool.when_full is fail_closed"
        return None

    @property
    def spool_full(self) -> bool:
        """The spool refused the last batch and no space has been freed since (or it is at its limit)."""
        used = self.spool.used_bytes
        if self._full_at is not None and used < self._full_at:
            self._full_at = None
        return used >= self.spool.max_bytes or self._full_at is not None

    def not_ready_reason(self) -> str | None:
        if self.spool_full:
            return f"audit spool full ({self.settings.when_full})"
        if self.settings.sink_down_fails_ready and not self.sink_up:
            return (
                f"audit sink {self.sink.name} has delivered nothing for over "
                f"{format_duration(self.settings.sink_down_after)} while records wait (audit.sink_down_fails_ready)"
            )
        return None

    @property
    def oldest_undelivered(self) -> float | None:
        """When the oldest record still in the spool was written (Unix time); None when none waits."""
        levels = self.spool.levels
        if levels.committed_offset >= levels.next_offset:
            return None
        # None as well for the moment between an append and delivery reading it (batch_age at most).
        return self._oldest[1] if self._oldest is not None else None

    @property
    def delivery_lag(self) -> float:
        """Seconds the oldest record still in the spool has waited; 0 when none waits."""
        oldest = self.oldest_undelivered
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    @property
    def clock(self) -> Callable[[], float]:
        """The Unix time the pipeline stamps records with and judges the sink by."""
        return self._clock

    @property
    def sink_up(self) -> bool:
        """Records are being delivered: false once they have waited `sink_down_after` with none delivered."""
        return self.health.up(
            self._clock(), oldest_waiting=self.oldest_undelivered, last_delivery=self.sink.last_delivery
        )

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def events_queued(self) -> int:
        """Events (requests and lifecycle facts) taken into the queue so far; each ends stored or counted as dropped."""
        return self._enqueued

    # --- lifecycle -------------------------------------------------------------

    async def start(self, start_fact: Lifecycle | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        report = await asyncio.to_thread(self.spool.open)
        self.stats.quarantined_bytes = sum(path.stat().st_size for path in report.quarantined)
        head = await asyncio.to_thread(self._resume_head)
        self._chain = Chain(head)
        # Records left from before the start have waited since they were written, not since now.
        backlog = await asyncio.to_thread(self.spool.read, self.spool.committed_offset, 1, 1)
        if backlog:
            self._oldest = self._written(backlog[0])
        await self.sink.start()
        # The first checkpoint vouches for the chain as found on disk, before anything new.
        self._queue.appendleft(self._checkpoint_fact(final=False))
        if report.quarantined:
            self._enqueue(
                Lifecycle(
                    action="audit-spool-recovered",
                    # ECS expects no `error` with `process`; the action and the byte count say what happened.
                    category=("process",),
                    types=("info",),
                    message=f"audit spool recovery set aside {self.stats.quarantined_bytes} corrupt bytes",
                    at=self._clock(),
                    sidecar={"audit": {"quarantined_bytes": self.stats.quarantined_bytes}},
                )
            )
        if start_fact is not None:
            self._enqueue(start_fact)
        self._next_checkpoint = time.monotonic() + self.settings.checkpoint_interval
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()
        self._delivery = asyncio.create_task(self._deliver_loop(), name="audit-delivery")
        self._sink_watch = asyncio.create_task(self._watch_sink(), name="audit-sink-health")

    async def stop(self, stop_fact: Lifecycle | None = None, deliver_timeout: float = 5.0) -> None:
        """Write everything queued plus a final checkpoint, then deliver for up to `deliver_timeout`."""
        if self._sink_watch is not None:
            self._sink_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sink_watch
        if stop_fact is not None:
            self._enqueue(stop_fact)
        self._stopping = True
        self._wake_writer.set()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        self._appended.set()
        if self._delivery is not None:
            # Whatever is not delivered now stays in the spool for the next start.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deliver_timeout):
                    await self._drained()
            self._stop_delivery = True
            self._delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery
        try:
            await self.sink.close()
            await asyncio.to_thread(self.spool.close)
        except Exception:
            # Whatever did not reach the disk is lost with the process either way;
            # the next start recovers the spool as it finds it.
            logger.exception("closing the audit spool failed", extra={"directory": str(self.spool.directory)})
        self._release_all()

    async def _drained(self) -> None:
        while self.spool.committed_offset < self.spool.next_offset:
            await asyncio.sleep(0.02)

    def _resume_head(self) -> ChainHead:
        last = self.spool.last_record()
        if last is None:
            return new_chain()
        try:
            return head_of(json.loads(last[1]))
        except (ValueError, KeyError, TypeError):
            logger.error("the newest spooled audit record is unreadable; starting a new chain")
            return new_chain()

    # --- writer thread ---------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            if self._stopping and not self._queue:
                break
            if len(self._queue) < _WAKE_AT and not self._stopping:
                self._wake_writer.clear()
                self._writer_idle = True
                if not (self._wake_each and self._queue):
                    self._wake_writer.wait(self._sleep_time())
                self._writer_idle = False
            try:
                self._write_pass()
            except Exception:
                logger.exception("audit writer pass failed")
                time.sleep(0.1)
        try:
            self._write_items([self._checkpoint_fact(final=True)])
        except Exception:
            logger.exception("writing the final audit checkpoint failed")
        with contextlib.suppress(Exception):
            self.spool.sync()

    def _sleep_time(self) -> float:
        until_checkpoint = self._next_checkpoint - time.monotonic()
        return max(0.001, min(until_checkpoint, _WRITE_INTERVAL_S))

    def _write_pass(self) -> None:
        queue = self._queue
        items: list[Exchange | Lifecycle | _Internal] = []
        while queue and len(items) < _WRITE_BATCH:
            items.append(queue.popleft())
        if self._pending_drop_notice and not self.spool_full:
            items.insert(0, self._drop_notice(self._pending_drop_notice))
        if time.monotonic() >= self._next_checkpoint:
            items.append(self._checkpoint_fact(final=False))
            self._next_checkpoint = time.monotonic() + self.settings.checkpoint_interval
        if items:
            self._write_items(items)
        self.spool.sync_if_due()

    def _write_items(self, items: list[Exchange | Lifecycle | _Internal]) -> None:
        chain = self._chain
        assert chain is not None
        saved = chain.head
        created = self._clock()
        records: list[bytes] = []
        noticed = 0
        for item in items:
            try:
                doc = self._document(item, created, chain)
                # Stored in canonical form: the record's bytes are what its hash covers, plus the hash.
                records.append(canonical_json(doc))
            except Exception:
                # A bug in building one document must not take the batch with it;
                # the chain head only moves once a document is sealed, and the loss
                # is counted and goes on record in the next drop notice.
                self.stats.dropped["encode_error"] += 1
                self._pending_drop_notice += 1
                logger.exception("building an audit document failed")
                continue
            if isinstance(item, _Internal):
                noticed += item.reports_dropped
        ticketed = sum(1 for item in items if not isinstance(item, _Internal))
        if records:
            allow_over = self.settings.fail_closed_headroom if self.settings.when_full == "fail_closed" else 0
            try:
                self.spool.append(records, allow_over=allow_over)
            except SpoolFull:
                self._full_at = self.spool.used_bytes
                chain.head = saved
                self.stats.dropped["spool_full"] += ticketed
                self._pending_drop_notice += ticketed
            else:
                self._pending_drop_notice -= noticed
                self.stats.accepted += len(records)
                if self._delivery_waiting and self._loop is not None and (
                    self._stopping or self.spool.next_offset - self._read_from >= self.settings.batch_size
                ):
                    self._delivery_waiting = False
                    self._loop.call_soon_threadsafe(self._appended.set)
        self._finished_tickets += ticketed
        if self._wake_each and self._loop is not None:
            self._loop.call_soon_threadsafe(self._settled_up_to, self._finished_tickets)

    def _document(self, item: Exchange | Lifecycle | _Internal, created: float, chain: Chain) -> dict[str, Any]:
        if isinstance(item, Exchange):
            doc = exchange_document(item, self.identity, created)
        elif isinstance(item, _Internal):
            doc = item.build(self, chain)
        else:
            doc = lifecycle_document(
                self.identity,
                item.at,
                action=item.action,
                category=list(item.category),
                types=list(item.types),
                message=item.message,
                reason=item.reason,
                outcome=item.outcome,
                sidecar=item.sidecar,
                kind=item.kind,
                rule=item.rule,
            )
        for name in self._redacted:
            value = get_path(doc, name)
            if isinstance(value, str):
                set_path(doc, name, self._redact(value))
        chain.seal(doc)
        return doc

    def _redact(self, value: str) -> str:
        # Paths, user agents and messages repeat from request to request; a
        # bounded cache turns most redactions into a dict lookup.
        cache = self._redaction_cache
        redacted = cache.get(value)
        if redacted is None:
            redacted = self._redactor.text(value)
            if len(cache) >= _REDACTION_CACHE_SIZE:
                cache.clear()
            cache[value] = redacted
        return redacted

    def _drop_notice(self, count: int) -> _Internal:
        return _Internal(
            lambda pipeline, chain: lifecycle_document(
                pipeline.identity,
                pipeline._clock(),
                action="audit-events-dropped",
                category=["process"],
                types=["info"],
                message=f"{count} audit event(s) were dropped (policy {pipeline.settings.when_full})",
                sidecar={"audit": {"dropped_events": count}},
            ),
            reports_dropped=count,
        )

    def _checkpoint_fact(self, final: bool) -> _Internal:
        def build(pipeline: AuditPipeline, chain: Chain) -> dict[str, Any]:
            now = pipeline._clock()
            fields = checkpoint_fields(
                pipeline.identity.node_name,
                chain.head,
                iso_time(now),
                pipeline.settings.checkpoint_interval,
                final,
                pipeline._signer,
            )
            pipeline.stats.checkpoints += 1
            return lifecycle_document(
                pipeline.identity,
                now,
                action="audit-checkpoint",
                category=["process"],
                types=["info"],
                message=f"audit checkpoint at sequence {chain.head.sequence}" + (" (final)" if final else ""),
                kind="state",
                sidecar={"checkpoint": fields},
            )

        return _Internal(build)

    # --- hold_response ---------------------------------------------------------

    def _settled_up_to(self, ticket: int) -> None:
        self._settled = max(self._settled, ticket)
        if not self._waiters:
            return
        ready = [future for wanted, future in self._waiters if wanted <= self._settled]
        if ready:
            self._waiters = [(wanted, future) for wanted, future in self._waiters if wanted > self._settled]
            for future in ready:
                if not future.done():
                    future.set_result(None)

    def _release_all(self) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_result(None)
        self._waiters.clear()

    # --- delivery --------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        # A batch goes out when full, or when its oldest record has waited batch_age; the writer
        # signals a full batch, so a quiet pipeline wakes the loop once per batch_age and a busy
        # one once per batch. Up to max_in_flight batches are out at once, so the sink's round
        # trip overlaps the reading and sending of the next; they are committed in spool order, so
        # a restart resends at most the batches that were out (Elasticsearch answers each resent
        # document with 409, counted as stored).
        spool, settings = self.spool, self.settings
        # (last offset, (first offset, when written), task) per batch out, oldest first.
        flights: collections.deque[tuple[int, tuple[int, float], asyncio.Task[None]]] = collections.deque()
        landed: int | None = None  # the newest offset delivered in order and not yet committed
        partial_since: float | None = None
        read_failure: str | None = None
        self._read_from = spool.committed_offset
        try:
            while not self._stop_delivery:
                while flights and flights[0][2].done():
                    landed = flights.popleft()[0]
                if landed is not None:
                    try:
                        await asyncio.to_thread(spool.commit, landed)
                    except Exception:
                        # Delivered but not on record as delivered: try the commit again, and a
                        # restart meanwhile resends them.
                        logger.exception("committing delivered audit records failed", extra={"sink": self.sink.name})
                        await asyncio.sleep(1.0)
                        continue
                    landed = None
                    # The oldest record waiting is the first of the oldest batch still out, or the
                    # next one read.
                    self._oldest = flights[0][1] if flights else None
                if len(flights) >= settings.max_in_flight:
                    await asyncio.wait({flights[0][2]})
                    continue
                # Clear and say so before reading: an append from here on wakes the wait below.
                self._appended.clear()
                self._delivery_waiting = True
                try:
                    records = await asyncio.to_thread(spool.read, self._read_from, settings.batch_size, settings.batch_bytes)
                except OSError as exc:
                    # A spool file gone or unreadable under us (disk failure, someone deleting the
                    # data dir): keep trying, say it once, and let readiness report the data dir.
                    problem = f"{exc.__class__.__name__}: {exc}"
                    if problem != read_failure:
                        logger.error("reading the audit spool failed", extra={"error": problem})
                        read_failure = problem
                    await asyncio.sleep(1.0)
                    continue
                read_failure = None
                if not flights:
                    self._oldest = self._written(records[0]) if records else None
                now = time.monotonic()
                if records and len(records) < settings.batch_size and not self._stopping:
                    partial_since = now if partial_since is None else partial_since
                    ready = now - partial_since >= settings.batch_age
                else:
                    ready = bool(records)
                if ready:
                    self._delivery_waiting = False
                    partial_since = None
                    last = records[-1][0]
                    task = asyncio.create_task(self._deliver_batch(records), name="audit-batch")
                    flights.append((last, self._written(records[0]), task))
                    self._read_from = last + 1
                    continue
                # Wait for a full batch, the oldest batch out to land, or the partial batch's age.
                timeout = settings.batch_age if partial_since is None else partial_since + settings.batch_age - now
                appended = asyncio.ensure_future(self._appended.wait())
                try:
                    await asyncio.wait(
                        {appended, flights[0][2]} if flights else {appended},
                        timeout=max(0.0, timeout),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    appended.cancel()
                    self._delivery_waiting = False
        finally:
            # Batches still out stay in the spool, uncommitted, for the next start.
            out = [task for _, _, task in flights]
            for task in out:
                task.cancel()
            await asyncio.gather(*out, return_exceptions=True)

    def _written(self, record: tuple[int, bytes]) -> tuple[int, float]:
        """(offset, when written) of a spooled record; its event.created, parsed once per offset."""
        offset, payload = record
        known = self._oldest
        if known is not None and known[0] == offset:
            return known
        return offset, _created_at(payload) or self._clock()

    async def _watch_sink(self) -> None:
        # Readers judge the sink when they read it (`sink_up`); this turns the judgement's
        # changes into a log line and, on recovery, a record, whether anyone reads or not.
        tick = min(1.0, self.settings.sink_down_after / 10)
        while True:
            await asyncio.sleep(tick)
            try:
                self._check_sink()
            except Exception:
                logger.exception("judging the audit sink's health failed", extra={"sink": self.sink.name})

    def _check_sink(self) -> None:
        sink, health = self.sink, self.health
        change = health.update(self._clock(), oldest_waiting=self.oldest_undelivered, last_delivery=sink.last_delivery)
        stall = health.stall
        if change is None or stall is None:
            return
        if change is Change.DOWN:
            logger.warning(
                "audit records are not being delivered: %s has taken none for %s; they wait in the spool",
                sink.name,
                format_duration(health.down_after),
                extra={
                    "sink": sink.name,
                    "stalled_since": iso_time(stall.since),
                    "waiting": self.spool.pending_records,
                    "retries": dict(sink.retries),
                },
            )
            return
        until = stall.until or self._clock()
        stalled = until - stall.since
        message = f"audit records reach {sink.name} again after {format_duration(stalled)} without delivery"
        logger.info(message, extra={"sink": sink.name, "stalled_since": iso_time(stall.since)})
        self.record(
            Lifecycle(
                action="audit-sink-recovered",
                category=("process",),
                types=("change",),
                message=message,
                at=until,
                outcome="success",
                sidecar={"audit": {"sink": sink.name, "stalled_seconds": round(stalled, 3)}},
            )
        )

    async def _deliver_batch(self, records: list[tuple[int, bytes]]) -> None:
        """Hand one batch to the sink until it takes it (the sink retries what it can itself)."""
        while True:
            try:
                await self.sink.deliver(records)
                return
            except Exception:
                logger.exception("audit delivery failed", extra={"sink": self.sink.name})
                await asyncio.sleep(1.0)


def _created_at(record: bytes) -> float | None:
    """A spooled document's event.created as Unix time; None if it has none."""
    try:
        created = json.loads(record)["event"]["created"]
        return datetime.datetime.fromisoformat(created).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class _Internal:
    """A document the pipeline writes about itself (checkpoint, drop notice); built against the chain."""

    build: Callable[[AuditPipeline, Chain], dict[str, Any]]
    reports_dropped: int = 0
    """For a drop notice: how many dropped events it puts on record."""
