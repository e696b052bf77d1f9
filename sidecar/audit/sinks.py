"""What a sink promises the pipeline, and the JSON Lines file sink.

A sink takes a batch of spooled records and returns only when every one of
them is either stored or set aside in the dead-letter file; until then it
retries. The pipeline moves the spool's committed offset after that, so a
record leaves the spool only once it is somewhere else for good.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

logger = logging.getLogger(__name__)

SpooledRecord = tuple[int, bytes]

# Every record is a JSON document written by the pipeline, whose only key named
# exactly "hash" is event.hash: inside JSON strings a quote is always escaped,
# so this byte pattern cannot come from a value.
_EVENT_HASH = re.compile(rb'"hash":"([0-9a-f]{64})"')


def document_id(record: bytes) -> str:
    """The Elasticsearch `_id` of a record: its event.hash, so a retry or replay never duplicates."""
    match = _EVENT_HASH.search(record)
    if match is None:
        raise ValueError("audit record without event.hash")
    return match.group(1).decode()


class Sink(Protocol):
    name: str
    stored: int
    """Records stored (counting those the destination already held)."""
    duplicates: int
    """Of those, records the destination already held (a retry after a lost answer)."""
    retries: dict[str, int]
    """Failed attempts by reason: rejected (429), server_error (5xx), connection."""
    last_delivery: float
    """When the sink last stored or dead-lettered a record (Unix time; 0.0: not since start).
    The pipeline judges the sink's health by it, not by whether the sink answers."""

    @property
    def dead_lettered(self) -> int: ...

    async def start(self) -> None: ...

    async def deliver(self, records: Sequence[SpooledRecord]) -> None:
        """Return once every record is stored or dead-lettered; retry until then."""

    async def close(self) -> None: ...


class DeadLetters:
    """Records a sink refused for good, with the reason, appended to a JSON Lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def write(self, entries: Sequence[tuple[bytes, int | str, Any]]) -> None:
        """(record, status, error) per entry; fsynced before returning. Runs in a worker thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with open(self.path, "ab") as file:
            for record, status, error in entries:
                line = {
                    "@timestamp": now,
                    "status": status,
                    "error": error,
                    "document": json.loads(record),
                }
                file.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())
        self.count += len(entries)


class FileSink:
    """Rotated JSON Lines files of the audit documents, one per line, fsynced per batch.

    Files are named by the UTC time they were opened (`audit-20261123T183000.123456Z.jsonl`)
    so that a directory listing is in write order; they are never deleted here.
    """

    name = "file"

    dead_lettered = 0
    duplicates = 0

    def __init__(self, directory: Path, max_file_size: int, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_file_size = max_file_size
        self.stored = 0
        self.retries = {"rejected": 0, "server_error": 0, "connection": 0}
        self.last_delivery = 0.0
        self._clock = clock
        self._file: IO[bytes] | None = None
        self._size = 0

    async def start(self) -> None:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def deliver(self, records: Sequence[SpooledRecord]) -> None:
        delay = 0.1
        while True:
            try:
                await asyncio.to_thread(self._write, records)
            except OSError:
                # A full or failing disk: the records stay in the spool; try again.
                logger.exception("writing audit records to %s failed; they stay in the spool", self.directory)
                self.retries["server_error"] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.stored += len(records)
            self.last_delivery = self._clock()
            return

    def _write(self, records: Sequence[SpooledRecord]) -> None:
        if self._file is None or self._size >= self.max_file_size:
            self._rotate()
        file = self._file
        assert file is not None
        for _, record in records:
            file.write(record)
            file.write(b"\n")
            self._size += len(record) + 1
        file.flush()
        os.fsync(file.fileno())

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        # Microseconds in the name keep files in write order even across fast restarts.
        moment = time.time_ns() // 1000
        while True:
            seconds, micros = divmod(moment, 1_000_000)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
            path = self.directory / f"audit-{stamp}.{micros:06d}Z.jsonl"
            if not path.exists():
                break
            moment += 1
        self._file = open(path, "ab")  # noqa: SIM115 - kept open across batches
        self._size = 0

    async def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)


def audit_files(path: Path) -> list[Path]:
    """The JSON Lines files at `path`: the file itself, or a directory's `*.jsonl` in name order."""
    if path.is_dir():
        return sorted(candidate for candidate in path.iterdir() if candidate.suffix == ".jsonl")
    return [path]


def read_documents(paths: Sequence[Path], problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Documents from JSON Lines files; unparsable lines are reported in `problems`, not skipped silently."""
    for path in paths:
        with open(path, "rb") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    document = json.loads(line)
                except ValueError as exc:
                    if problems is not None:
                        problems.append(f"{path}:{number}: not JSON ({exc})")
                    continue
                if isinstance(document, dict):
                    yield document
                elif problems is not None:
                    problems.append(f"{path}:{number}: not a JSON object")
