"""The durable spool: an audit event counts as accepted once it is here.

A write-ahead log of opaque records (serialised audit documents) in the
manner of Kafka's log or Vector's disk buffer, much simpler. Producers
append; a sink reads from the committed offset onwards, and the committed
offset moves only once the sink has confirmed delivery.

Directory layout::

    00000000000000000000.seg   segments, named by the offset of their first record
    00000000000000004096.seg
    committed                  offset of the next record to deliver, decimal text
    lock                       flock()ed while a process has the spool open
    quarantine/                bytes recovery removed from the log, kept for inspection

Record framing, with no segment header and nothing between records::

    struct.pack("<II", len(payload), zlib.crc32(payload)) + payload

i.e. the payload length and the CRC32 of the payload, both little-endian
uint32, then the payload. CRC32 is the checksum the standard library computes
at memory speed; it catches torn writes and bit rot, not tampering (the hash
chain is there for that). Payloads are 1 byte to 16 MiB: an empty record would
be indistinguishable from the zero-filled blocks a crashed file system can
leave behind, so it is refused.

Offsets are logical record numbers, as in Kafka: they start at 0 and only
grow, and deleting a delivered segment never renumbers what follows. A record's
offset is its segment's base offset plus its index in the segment, so offsets
are not stored per record; they are rebuilt by scanning every segment at open.

Recovery (`Spool.open`) validates every record's length and CRC. Bytes that do
not parse (a torn tail left by a crash mid-write, or a damaged record anywhere)
are copied to ``quarantine/<segment file>.<byte position>.bad`` and removed
from the log; after damage in the middle of a segment the scan resynchronises
at the next byte position where a whole valid record parses. The number of
records lost in a damaged region cannot be known, so the valid records after
it take consecutive offsets, as if the region had never been there: the
segment ends early and a gap opens before the next segment's base offset. If
that renumbering could make undelivered records look delivered (the committed
offset lies in the renumbered stretch), the committed offset is moved back to
the first renumbered record: some records are delivered twice rather than any
not at all, which is harmless because sinks write with deterministic document
ids. For the same reason a sink must not derive document ids from offsets.
A committed offset past the end of the log (possible only when an unsynced
tail was lost with the machine) is clamped to the end, and the offsets past
it are handed out again.

Space: ``used_bytes`` is the size of the segments that hold undelivered
records; that is what ``max_bytes`` bounds. Delivered segments are deleted on
commit, except the one holding the newest record, which is kept so that a
restarted hash chain can resume from its last document (`Spool.last_record`).

Every public method takes one lock and may block on disk I/O; call them from
worker threads, never from an event loop.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import mmap
import os
import re
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 16 * 1024 * 1024

_LENGTH_HIGH_BYTE = re.compile(rb"[\x00\x01]")
_NON_ZERO_BYTE = re.compile(rb"[^\x00]")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_COMMITTED_FILE = "committed"
_LOCK_FILE = "lock"
_QUARANTINE_DIR = "quarantine"
_TEMP_SUFFIX = ".tmp"
# Large enough that a typical batch (100 records of ~1 KiB) leaves the process
# in one write(2) at the flush instead of one every 8 KiB.
_WRITE_BUFFER_BYTES = 1024 * 1024
# Audit records name users and tenants; nobody else on the host needs to read them.
_FILE_MODE = 0o600
# Appends only grow a file, and fdatasync covers the size change that makes the
# new bytes reachable, without also flushing timestamps as fsync would.
_sync_file_data = getattr(os, "fdatasync", os.fsync)


class FsyncPolicy(StrEnum):
    """When appended records are forced from the page cache to the disk."""

    ALWAYS = "always"
    """After every append batch, before `Spool.append` returns."""
    INTERVAL = "interval"
    """At most every `fsync_interval` seconds, checked on append and by `Spool.sync_if_due`."""
    NEVER = "never"
    """Left to the operating system (and to `Spool.close`)."""


class SpoolError(Exception):
    """The spool cannot do what was asked."""


class SpoolFull(SpoolError):
    """Appending would take the spool past its size limit; nothing was appended."""

    def __init__(self, directory: Path, *, needed: int, used: int, limit: int) -> None:
        super().__init__(
            f"audit spool {directory} is full: the batch needs {needed} bytes, "
            f"{used} of {limit} bytes are in use by undelivered records"
        )
        self.needed = needed
        self.used = used
        self.limit = limit


class SpoolCorrupt(SpoolError):
    """Bytes on disk do not match what the spool wrote or expects."""


@dataclass(frozen=True)
class RecoveryReport:
    """What `Spool.open` found and did."""

    segments: int
    """Segment files on disk after recovery."""
    records: int
    """Records on disk after recovery, delivered ones in the newest segment included."""
    committed: int
    """The committed offset in effect: the offset of the next record to deliver."""
    next_offset: int
    """The offset the next append gets."""
    quarantined: list[Path]
    """Files in the quarantine directory written by this recovery, one per damaged region."""
    truncated_bytes: int
    """Bytes removed from segments (the total size of `quarantined`)."""
    committed_stored: int | None = None
    """The committed offset as read from disk; None when there was no readable file.
    It differs from `committed` when recovery had to move it."""
    notes: list[str] = field(default_factory=list)
    """One line per adjustment worth logging: a clamped or moved committed offset,
    a missing committed file, ignored files, removed empty segments."""


@dataclass(eq=False)
class _Segment:
    base: int
    path: Path
    positions: array[int]
    """Byte position of each record's header; record i has offset base + i."""
    size: int
    read_fd: int | None = None

    @property
    def count(self) -> int:
        return len(self.positions)

    @property
    def end(self) -> int:
        """The offset after this segment's last record."""
        return self.base + len(self.positions)

    def record_end(self, index: int) -> int:
        return self.positions[index + 1] if index + 1 < len(self.positions) else self.size


@dataclass
class _Scan:
    positions: list[int]
    bad: list[tuple[int, int]]
    """Byte ranges [start, end) that failed validation, in file order."""
    first_renumbered: int | None
    """Index of the first valid record that follows a bad range (its offset shifted)."""


@dataclass(frozen=True)
class _Checkpoint:
    segments: int
    size: int
    records: int


def _segment_name(base: int) -> str:
    return f"{base:020d}.seg"


def _fsync_directory(directory: Path) -> None:
    # A created, renamed or deleted file is only durable once its directory is.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE), "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _framed_length_at(data: mmap.mmap, position: int, size: int) -> int:
    """The length (header included) of the valid record at `position`, or 0 if none parses there."""
    if size - position < HEADER.size:
        return 0
    length: int
    crc: int
    length, crc = HEADER.unpack_from(data, position)
    end = position + HEADER.size + length
    if not 0 < length <= MAX_RECORD_BYTES or end > size:
        return 0
    if zlib.crc32(data[position + HEADER.size : end]) != crc:
        return 0
    return end - position


def _next_record_position(data: mmap.mmap, start: int, size: int) -> int:
    """The first position from `start` where a valid record parses, or `size` if there is none."""
    position = start
    while position + HEADER.size <= size:
        # A valid length field's high byte is 0 or 1; finding the next such byte
        # runs at C speed, so text never pays for a CRC check at every position.
        high_byte = _LENGTH_HIGH_BYTE.search(data, position + 3)
        if high_byte is None:
            return size
        position = high_byte.start() - 3
        if _framed_length_at(data, position, size):
            return position
        if data[position : position + 4] == b"\x00\x00\x00\x00":
            # Zero-filled blocks (a common crash leftover) match everywhere; the
            # next candidate needs a non-zero byte in its length field.
            non_zero = _NON_ZERO_BYTE.search(data, position + 4)
            if non_zero is None:
                return size
            position = max(position + 1, non_zero.start() - 3)
        else:
            position += 1
    return size


def _scan_segment(data: mmap.mmap, size: int) -> _Scan:
    positions: list[int] = []
    bad: list[tuple[int, int]] = []
    first_renumbered: int | None = None
    position = 0
    while position < size:
        framed = _framed_length_at(data, position, size)
        if framed:
            if bad and first_renumbered is None:
                first_renumbered = len(positions)
            positions.append(position)
            position += framed
            continue
        resync = _next_record_position(data, position + 1, size)
        bad.append((position, resync))
        position = resync
    return _Scan(positions, bad, first_renumbered)


@dataclass(frozen=True, slots=True)
class SpoolLevels:
    """The spool's counters at one moment, published whole after each change."""

    next_offset: int
    committed_offset: int
    pending_records: int
    used_bytes: int


class Spool:
    """A segmented, checksummed, append-only log of records with a committed offset.

    Appends, commits and reads take a lock, and an append holds it through
    its fsync. The counters (`next_offset`, `committed_offset`,
    `pending_records`, `used_bytes`) are read on the event loop by delivery,
    /metrics, readiness and the status page, which must never wait for a
    disk: they come from one immutable `SpoolLevels`, replaced under the lock
    after each change and read without it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        max_bytes: int = 1024 * 1024 * 1024,
        fsync: FsyncPolicy = FsyncPolicy.INTERVAL,
        fsync_interval: float = 0.1,
    ) -> None:
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if fsync_interval < 0:
            raise ValueError(f"fsync_interval must be zero or more seconds, got {fsync_interval}")
        self._directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._fsync = FsyncPolicy(fsync)
        self._fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._is_open = False
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []
        self._writer: BinaryIO | None = None
        self._committed = 0
        self._next_offset = 0
        self._pending = 0
        self._total_bytes = 0
        self._dirty = False
        self._last_sync = 0.0
        self._levels = SpoolLevels(0, 0, 0, 0)

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Create the directory if needed, recover every segment and load the committed offset."""
        with self._lock:
            if self._is_open:
                raise SpoolError(f"audit spool {self._directory} is already open")
            self._directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._acquire_directory_lock()
            try:
                report = self._recover()
            except BaseException:
                self._release_handles()
                raise
            self._is_open = True
            self._publish_levels()
            return report

    def close(self) -> None:
        """Force everything appended to disk and release the directory."""
        with self._lock:
            if not self._is_open:
                return
            self._is_open = False
            try:
                if self._writer is not None:
                    self._writer.flush()
                    _sync_file_data(self._writer.fileno())
            finally:
                self._release_handles()

    # -- writing ---------------------------------------------------------------

    def append(self, records: Sequence[bytes], *, allow_over: int = 0) -> int:
        """Append every record or none; return the offset of the last one.

        `allow_over` is headroom past `max_bytes` for records that matter more
        than the limit (for example the notice that events were dropped).
        """
        if not records:
            raise ValueError("append needs at least one record")
        if allow_over < 0:
            raise ValueError(f"allow_over must be zero or more bytes, got {allow_over}")
        needed = 0
        for record in records:
            length = len(record)
            if length == 0:
                raise ValueError("cannot spool an empty record")
            if length > MAX_RECORD_BYTES:
                raise ValueError(
                    f"record of {length} bytes is larger than the spool's limit of {MAX_RECORD_BYTES} bytes"
                )
            needed += HEADER.size + length
        with self._lock:
            self._require_open()
            limit = self._max_bytes + allow_over
            if self._used_bytes_after(needed) > limit:
                raise SpoolFull(self._directory, needed=needed, used=self._used_bytes(), limit=limit)
            checkpoint = self._checkpoint()
            try:
                self._write_batch(records)
            except BaseException:
                self._roll_back(checkpoint)
                raise
            self._next_offset += len(records)
            self._pending += len(records)
            self._total_bytes += needed
            # The append has succeeded; a segment that could not be deleted now
            # is tried again at the next commit.
            with suppress(OSError):
                self._drop_delivered_segments()
            self._publish_levels()
            return self._next_offset - 1

    def sync(self) -> None:
        """Force the active segment to disk now."""
        with self._lock:
            self._require_open()
            self._sync_active()

    def sync_if_due(self) -> bool:
        """Under the interval policy, force unsynced appends to disk if the interval has passed."""
        with self._lock:
            if not self._is_open or not self._sync_due():
                return False
            self._sync_active()
            return True

    def commit(self, offset: int) -> None:
        """Mark every record up to and including `offset` as delivered."""
        with self._lock:
            self._require_open()
            if offset >= self._next_offset:
                raise ValueError(
                    f"cannot commit offset {offset} in audit spool {self._directory}: "
                    f"the newest offset is {self._next_offset - 1}"
                )
            committed = offset + 1
            if committed <= self._committed:
                return
            self._write_committed(committed)
            self._pending -= self._records_between(self._committed, committed)
            self._committed = committed
            try:
                self._drop_delivered_segments()
            finally:
                self._publish_levels()

    # -- reading ---------------------------------------------------------------

    def read(self, offset: int, max_records: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Records with offsets from `offset` on, in order, as (offset, payload).

        Stops at `max_records` or before the payloads pass `max_bytes`, but
        returns at least one record when there is one, however large, so that
        a reader can never be stuck behind a big record.
        """
        with self._lock:
            self._require_open()
            records: list[tuple[int, bytes]] = []
            if max_records <= 0 or not self._segments:
                return records
            budget = max_bytes
            start = max(bisect.bisect_right(self._segments, offset, key=lambda s: s.base) - 1, 0)
            for segment in self._segments[start:]:
                first = max(offset - segment.base, 0)
                if first >= segment.count:
                    continue
                stop = first
                taken = 0
                while stop < segment.count and len(records) + stop - first < max_records:
                    payload = segment.record_end(stop) - segment.positions[stop] - HEADER.size
                    if (records or stop > first) and taken + payload > budget:
                        break
                    taken += payload
                    stop += 1
                if stop == first:
                    break
                records.extend(self._read_records(segment, first, stop))
                budget -= taken
                if stop < segment.count or len(records) >= max_records:
                    break
            return records

    def last_record(self) -> tuple[int, bytes] | None:
        """The newest record still on disk, delivered or not."""
        with self._lock:
            self._require_open()
            if not self._segments or not self._segments[-1].count:
                return None
            segment = self._segments[-1]
            return self._read_records(segment, segment.count - 1, segment.count)[0]

    # -- state -----------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def max_bytes(self) -> int:
        """The limit on `used_bytes`, before any `allow_over` headroom."""
        return self._max_bytes

    @property
    def levels(self) -> SpoolLevels:
        """Every counter from the same moment; never waits for an append or its fsync."""
        return self._levels

    @property
    def committed_offset(self) -> int:
        """The offset of the next record to deliver (the last committed offset + 1)."""
        return self._levels.committed_offset

    @property
    def next_offset(self) -> int:
        """The offset the next appended record gets."""
        return self._levels.next_offset

    @property
    def used_bytes(self) -> int:
        """Bytes of the segments that hold undelivered records: what counts against `max_bytes`."""
        return self._levels.used_bytes

    @property
    def pending_records(self) -> int:
        """Records appended and not yet committed."""
        return self._levels.pending_records

    # -- internals: writing ----------------------------------------------------

    def _require_open(self) -> None:
        if not self._is_open:
            raise SpoolError(f"audit spool {self._directory} is not open")

    def _publish_levels(self) -> None:
        # One reference assignment: a reader sees the old levels or the new, never a mix.
        self._levels = SpoolLevels(self._next_offset, self._committed, self._pending, self._used_bytes())

    def _used_bytes(self) -> int:
        # Delivered segments are deleted at every commit and append except the
        # newest, so either every segment on disk holds undelivered records, or
        # none does and the one left is the delivered newest segment.
        return self._total_bytes if self._pending else 0

    def _used_bytes_after(self, needed: int) -> int:
        if self._pending:
            return self._total_bytes + needed
        active = self._segments[-1] if self._segments else None
        if active is not None and active.size < self._segment_bytes:
            # The delivered newest segment takes the new records, so it counts again.
            return active.size + needed
        return needed

    def _write_batch(self, records: Sequence[bytes]) -> None:
        offset = self._next_offset
        for record in records:
            if self._writer is None or self._segments[-1].size >= self._segment_bytes:
                self._roll(offset)
            assert self._writer is not None
            segment = self._segments[-1]
            self._writer.write(HEADER.pack(len(record), zlib.crc32(record)))
            self._writer.write(record)
            segment.positions.append(segment.size)
            segment.size += HEADER.size + len(record)
            offset += 1
        assert self._writer is not None
        self._writer.flush()
        self._dirty = True
        if self._fsync is FsyncPolicy.ALWAYS or self._sync_due():
            self._sync_active()

    def _roll(self, base: int) -> None:
        """Seal the active segment (if any) and start a new one whose first record is `base`."""
        if self._writer is not None:
            self._writer.flush()
            if self._fsync is not FsyncPolicy.NEVER:
                # Later appends only sync the new segment; this one must already be safe.
                _sync_file_data(self._writer.fileno())
            self._writer.close()
            self._writer = None
        path = self._directory / _segment_name(base)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        self._segments.append(_Segment(base, path, array("Q"), 0))
        self._writer = open(fd, "ab", buffering=_WRITE_BUFFER_BYTES)
        if self._fsync is not FsyncPolicy.NEVER:
            _fsync_directory(self._directory)

    def _checkpoint(self) -> _Checkpoint:
        if not self._segments:
            return _Checkpoint(0, 0, 0)
        active = self._segments[-1]
        return _Checkpoint(len(self._segments), active.size, active.count)

    def _roll_back(self, checkpoint: _Checkpoint) -> None:
        """Undo a partly written batch so that an append is all or nothing."""
        try:
            self._discard_writer()
            while len(self._segments) > checkpoint.segments:
                segment = self._segments.pop()
                self._close_read_fd(segment)
                segment.path.unlink(missing_ok=True)
            if self._segments:
                active = self._segments[-1]
                os.truncate(active.path, checkpoint.size)
                del active.positions[checkpoint.records :]
                active.size = checkpoint.size
                self._open_writer(active)
        except OSError as error:
            # The log may now end in a partial record; recovery at the next open
            # quarantines it, so stop here rather than append after it.
            self._is_open = False
            self._release_handles()
            raise SpoolError(
                f"audit spool {self._directory} could not undo a failed append ({error}); reopen it to recover"
            ) from error

    def _discard_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        # Closing flushes what is still buffered (the truncation that follows
        # removes it) and closes the file even when that flush fails.
        with suppress(OSError):
            writer.close()

    def _open_writer(self, segment: _Segment) -> None:
        fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        self._writer = open(fd, "ab", buffering=_WRITE_BUFFER_BYTES)

    def _sync_due(self) -> bool:
        return (
            self._dirty
            and self._fsync is FsyncPolicy.INTERVAL
            and time.monotonic() - self._last_sync >= self._fsync_interval
        )

    def _sync_active(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            _sync_file_data(self._writer.fileno())
        self._dirty = False
        self._last_sync = time.monotonic()

    def _write_committed(self, committed: int) -> None:
        path = self._directory / _COMMITTED_FILE
        temporary = path.with_name(path.name + _TEMP_SUFFIX)
        _write_synced(temporary, f"{committed}\n".encode())
        # Readers see the old file or the new one, never a half-written one.
        os.replace(temporary, path)
        _fsync_directory(self._directory)

    def _records_between(self, low: int, high: int) -> int:
        """How many records on disk have offsets in [low, high)."""
        total = 0
        for segment in self._segments:
            total += max(0, min(segment.end, high) - max(segment.base, low))
        return total

    def _drop_delivered_segments(self) -> None:
        while len(self._segments) > 1 and self._segments[0].end <= self._committed:
            segment = self._segments[0]
            self._close_read_fd(segment)
            segment.path.unlink(missing_ok=True)
            self._segments.pop(0)
            self._total_bytes -= segment.size

    # -- internals: reading ----------------------------------------------------

    def _read_records(self, segment: _Segment, first: int, stop: int) -> list[tuple[int, bytes]]:
        """Records first..stop-1 of `segment`, read with one pread and checked against their CRCs."""
        start = segment.positions[first]
        end = segment.record_end(stop - 1)
        if segment.read_fd is None:
            segment.read_fd = os.open(segment.path, os.O_RDONLY)
        data = os.pread(segment.read_fd, end - start, start)
        records: list[tuple[int, bytes]] = []
        for index in range(first, stop):
            position = segment.positions[index] - start
            length, crc = HEADER.unpack_from(data, position) if len(data) >= position + HEADER.size else (-1, 0)
            payload = data[position + HEADER.size : position + HEADER.size + length]
            expected = segment.record_end(index) - segment.positions[index] - HEADER.size
            if length != expected or len(payload) != length or zlib.crc32(payload) != crc:
                raise SpoolCorrupt(
                    f"{segment.path}: record {segment.base + index} at byte {segment.positions[index]} "
                    "changed on disk since it was written; reopen the spool to quarantine it"
                )
            records.append((segment.base + index, payload))
        return records

    def _close_read_fd(self, segment: _Segment) -> None:
        if segment.read_fd is not None:
            os.close(segment.read_fd)
            segment.read_fd = None

    def _release_handles(self) -> None:
        self._discard_writer()
        for segment in self._segments:
            self._close_read_fd(segment)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- internals: recovery ---------------------------------------------------

    def _acquire_directory_lock(self) -> int:
        # Two writers would interleave records and each would believe its own
        # offsets, so a second process (or a second Spool) is refused.
        path = self._directory / _LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"audit spool {self._directory} is in use by another writer ({path} is locked)") from None
        return fd

    def _recover(self) -> RecoveryReport:
        self._segments = []
        self._writer = None
        self._dirty = False
        self._last_sync = time.monotonic()
        notes: list[str] = []
        quarantined: list[Path] = []
        removed = 0

        found: list[tuple[int, Path]] = []
        for entry in self._directory.iterdir():
            if entry.name.endswith(_TEMP_SUFFIX):
                # Left by a crash mid-rewrite or mid-commit; the original is intact.
                entry.unlink()
            elif entry.name.endswith(".seg"):
                match = _SEGMENT_NAME.match(entry.name)
                if match is None:
                    notes.append(f"ignored {entry}: not named <20-digit base offset>.seg")
                else:
                    found.append((int(match.group(1)), entry))
        found.sort()

        log_end: int | None = None
        renumbered_from: dict[int, int] = {}
        for base, path in found:
            segment, bad_files, bad_bytes, first_renumbered = self._recover_segment(base, path)
            if bad_files:
                # The records those bytes held are lost to the trail (the chain shows the gap).
                logger.warning(
                    "audit spool recovery moved %d corrupt bytes of segment %s to quarantine",
                    bad_bytes,
                    path.name,
                    extra={
                        "segment": str(path),
                        "quarantined_bytes": bad_bytes,
                        "regions": len(bad_files),
                        "kept_records": segment.count,
                        "quarantine": str(self._directory / _QUARANTINE_DIR),
                    },
                )
            quarantined.extend(bad_files)
            removed += bad_bytes
            log_end = max(log_end or 0, segment.end)
            if not segment.count:
                path.unlink()
                notes.append(f"removed {path}: it held no valid records")
                continue
            if self._segments and self._segments[-1].end > base:
                raise SpoolCorrupt(
                    f"audit spool {self._directory}: {self._segments[-1].path} holds offsets up to "
                    f"{self._segments[-1].end - 1}, past the base offset of {path}"
                )
            if first_renumbered is not None:
                renumbered_from[len(self._segments)] = base + first_renumbered
            self._segments.append(segment)

        stored = self._read_committed(notes)
        if stored is None:
            committed = self._segments[0].base if self._segments else (log_end or 0)
            if self._segments:
                notes.append(f"no committed offset on disk: delivering from the oldest record, offset {committed}")
        else:
            committed = stored
            for index, renumbered in renumbered_from.items():
                following = self._segments[index + 1].base if index + 1 < len(self._segments) else None
                if renumbered < committed and (following is None or committed < following):
                    notes.append(
                        f"committed offset {committed} moved back to {renumbered}: records from there on in "
                        f"{self._segments[index].path} were renumbered after a damaged region and are redelivered"
                    )
                    committed = renumbered
            if log_end is not None and committed > log_end:
                notes.append(f"committed offset {committed} clamped to {log_end}, the end of the log")
                committed = log_end
        self._committed = committed
        self._next_offset = log_end if log_end is not None else committed
        self._total_bytes = sum(segment.size for segment in self._segments)
        self._pending = self._records_between(committed, self._next_offset)
        self._drop_delivered_segments()
        if self._segments:
            self._open_writer(self._segments[-1])
        return RecoveryReport(
            segments=len(self._segments),
            records=sum(segment.count for segment in self._segments),
            committed=self._committed,
            next_offset=self._next_offset,
            quarantined=quarantined,
            truncated_bytes=removed,
            committed_stored=stored,
            notes=notes,
        )

    def _recover_segment(self, base: int, path: Path) -> tuple[_Segment, list[Path], int, int | None]:
        """Validate one segment, quarantine and remove what does not parse.

        Returns the segment, the quarantine files written, the bytes removed,
        and the index of the first record whose offset shifted (if any).
        """
        size = path.stat().st_size
        if size == 0:
            return _Segment(base, path, array("Q"), 0), [], 0, None
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            scan = _scan_segment(data, size)
            if not scan.bad:
                return _Segment(base, path, array("Q", scan.positions), size), [], 0, None
            bad_files = [self._quarantine(path.name, start, data[start:end]) for start, end in scan.bad]
            tail_only = len(scan.bad) == 1 and scan.bad[0][1] == size
            if not tail_only:
                self._rewrite_without(path, data, scan.bad, size)
        if tail_only:
            # Truncating is the whole repair for a torn tail, and it cannot leave
            # the segment half-rewritten.
            os.truncate(path, scan.bad[0][0])
        removed = sum(end - start for start, end in scan.bad)
        positions = array("Q")
        bad = iter(scan.bad)
        shift = 0
        pending_bad = next(bad, None)
        for position in scan.positions:
            while pending_bad is not None and pending_bad[0] < position:
                shift += pending_bad[1] - pending_bad[0]
                pending_bad = next(bad, None)
            positions.append(position - shift)
        return _Segment(base, path, positions, size - removed), bad_files, removed, scan.first_renumbered

    def _rewrite_without(self, path: Path, data: mmap.mmap, bad: list[tuple[int, int]], size: int) -> None:
        temporary = path.with_name(path.name + _TEMP_SUFFIX)
        with temporary.open("wb") as out:
            kept_from = 0
            for start, end in bad:
                out.write(data[kept_from:start])
                kept_from = end
            out.write(data[kept_from:size])
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        _fsync_directory(self._directory)

    def _quarantine(self, segment_name: str, position: int, payload: bytes) -> Path:
        directory = self._directory / _QUARANTINE_DIR
        created = not directory.exists()
        directory.mkdir(exist_ok=True)
        path = directory / f"{segment_name}.{position}.bad"
        suffix = 1
        # A rewritten segment can be damaged again at the same position; keep
        # both incidents. An identical file is this same incident, redone after
        # a crash during recovery.
        while path.exists() and path.read_bytes() != payload:
            path = directory / f"{segment_name}.{position}.{suffix}.bad"
            suffix += 1
        _write_synced(path, payload)
        # The bytes must be safe in quarantine before the segment loses them.
        _fsync_directory(directory)
        if created:
            _fsync_directory(self._directory)
        return path

    def _read_committed(self, notes: list[str]) -> int | None:
        path = self._directory / _COMMITTED_FILE
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            notes.append(f"ignored {path}: {error}")
            return None
        try:
            value = int(text.strip())
        except ValueError:
            value = -1
        if value < 0:
            notes.append(f"ignored {path}: expected a non-negative decimal offset, found {text.strip()[:40]!r}")
            return None
        return value
