from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest

import sidecar.audit.spool as spool_module
from sidecar.audit.spool import HEADER, MAX_RECORD_BYTES, FsyncPolicy, Spool, SpoolError, SpoolFull

REPO_ROOT = Path(__file__).resolve().parents[2]


def payload(offset: int) -> bytes:
    # Varying lengths, so that byte positions are not a multiple of anything.
    return (b'{"event":{"sequence":%d}}' % offset) * (offset % 5 + 1)


def framed(record: bytes) -> bytes:
    return HEADER.pack(len(record), zlib.crc32(record)) + record


def segment_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.seg"))


def opened(directory: Path, **options: object) -> Spool:
    spool = Spool(directory, **options)  # type: ignore[arg-type]
    spool.open()
    return spool


def read_all(spool: Spool, offset: int = 0) -> list[tuple[int, bytes]]:
    return spool.read(offset, 1_000_000, 1 << 40)


def test_append_read_commit_round_trip(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    assert spool.append([payload(0), payload(1)]) == 1
    assert spool.append([payload(2)]) == 2
    assert spool.next_offset == 3
    assert spool.pending_records == 3
    assert read_all(spool) == [(0, payload(0)), (1, payload(1)), (2, payload(2))]
    assert spool.read(1, 1, 1 << 20) == [(1, payload(1))]

    spool.commit(1)
    assert spool.committed_offset == 2
    assert spool.pending_records == 1
    assert spool.read(spool.committed_offset, 10, 1 << 20) == [(2, payload(2))]
    assert spool.last_record() == (2, payload(2))
    spool.close()


def test_read_respects_byte_budget_but_always_returns_one_record(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([b"a" * 100, b"b" * 100, b"c" * 100])
    assert [offset for offset, _ in spool.read(0, 10, 250)] == [0, 1]
    assert spool.read(0, 10, 10) == [(0, b"a" * 100)]
    assert spool.read(3, 10, 1000) == []
    spool.close()


def test_rejects_oversized_and_empty_records(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    with pytest.raises(ValueError, match=str(MAX_RECORD_BYTES + 1)):
        spool.append([b"ok", b"x" * (MAX_RECORD_BYTES + 1)])
    with pytest.raises(ValueError, match="empty"):
        spool.append([b""])
    assert spool.next_offset == 0
    spool.close()


def test_offsets_and_committed_offset_survive_restart(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([payload(n) for n in range(10)])
    spool.commit(3)
    spool.close()
    assert (tmp_path / "committed").read_text() == "4\n"

    spool = Spool(tmp_path)
    report = spool.open()
    assert (report.committed, report.next_offset, report.records) == (4, 10, 10)
    assert report.quarantined == [] and report.truncated_bytes == 0
    assert spool.committed_offset == 4
    assert spool.pending_records == 6
    assert spool.append([payload(10)]) == 10
    assert read_all(spool, 4) == [(n, payload(n)) for n in range(4, 11)]
    spool.close()


def test_segments_rotate_and_delivered_ones_are_deleted_except_the_newest(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=200)
    for start in range(0, 30, 3):
        spool.append([payload(n) for n in range(start, start + 3)])
    names = segment_files(tmp_path)
    assert len(names) > 3
    assert names[0] == f"{0:020d}.seg"
    assert all(len(name) == len("00000000000000000000.seg") for name in names)
    bases = [int(name[:20]) for name in names]
    assert read_all(spool) == [(n, payload(n)) for n in range(30)]

    # Committing into the third segment deletes the first two only.
    spool.commit(bases[2])
    assert segment_files(tmp_path) == names[2:]
    assert read_all(spool, 0)[0][0] == bases[2]

    spool.commit(29)
    assert segment_files(tmp_path) == names[-1:]
    assert spool.used_bytes == 0
    assert spool.pending_records == 0
    assert spool.last_record() == (29, payload(29))
    spool.close()

    # Offsets go on from where they were, after the deleted segments too.
    spool = opened(tmp_path, segment_bytes=200)
    assert spool.last_record() == (29, payload(29))
    assert spool.append([payload(30)]) == 30
    assert spool.read(spool.committed_offset, 10, 1 << 20) == [(30, payload(30))]
    spool.close()


def test_spool_full_appends_nothing_and_allow_over_gives_headroom(tmp_path: Path) -> None:
    record = b"x" * 92  # 100 bytes framed
    spool = opened(tmp_path, segment_bytes=250, max_bytes=500)
    spool.append([record] * 5)
    assert spool.used_bytes == 500

    with pytest.raises(SpoolFull) as raised:
        spool.append([record])
    assert (raised.value.needed, raised.value.used, raised.value.limit) == (100, 500, 500)
    assert "100" in str(raised.value) and "500" in str(raised.value)
    assert spool.next_offset == 5

    assert spool.append([record], allow_over=100) == 5
    with pytest.raises(SpoolFull):
        spool.append([record], allow_over=100)
    spool.close()


def test_commit_frees_space_for_new_appends(tmp_path: Path) -> None:
    record = b"x" * 92
    spool = opened(tmp_path, segment_bytes=200, max_bytes=400)
    spool.append([record] * 4)
    with pytest.raises(SpoolFull):
        spool.append([record])

    # Delivering the first segment (offsets 0 and 1) frees its 200 bytes.
    spool.commit(1)
    assert spool.used_bytes == 200
    spool.append([record, record])
    with pytest.raises(SpoolFull):
        spool.append([record])

    spool.commit(spool.next_offset - 1)
    assert spool.used_bytes == 0
    spool.append([record] * 4)
    assert spool.used_bytes == 400
    spool.close()


def test_failed_append_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = opened(tmp_path, fsync=FsyncPolicy.ALWAYS)
    spool.append([payload(0)])
    size = (tmp_path / f"{0:020d}.seg").stat().st_size

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module, "_sync_file_data", failing_sync)
    with pytest.raises(OSError, match="Input/output"):
        spool.append([payload(1), payload(2)])
    monkeypatch.undo()

    assert (tmp_path / f"{0:020d}.seg").stat().st_size == size
    assert spool.next_offset == 1
    assert spool.append([payload(1)]) == 1
    assert read_all(spool) == [(0, payload(0)), (1, payload(1))]
    spool.close()


def test_counters_are_read_without_waiting_for_an_fsync_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The event loop reads these for delivery, /metrics and readiness; a slow disk must not stall it.
    spool = opened(tmp_path, fsync=FsyncPolicy.ALWAYS)
    spool.append([payload(0), payload(1)])
    spool.commit(0)
    syncing, release = threading.Event(), threading.Event()

    def slow_sync(fd: int) -> None:
        syncing.set()
        release.wait(10)

    monkeypatch.setattr(spool_module, "_sync_file_data", slow_sync)
    appender = threading.Thread(target=spool.append, args=([payload(2)],))
    appender.start()
    try:
        assert syncing.wait(5)
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.append(spool.levels))
        reader.start()
        reader.join(1.0)
        assert not reader.is_alive(), "reading the spool's counters waited for the fsync"
        # The append is not done until its fsync is: the counters still show the state before it.
        assert seen == [spool_module.SpoolLevels(next_offset=2, committed_offset=1, pending_records=1,
                                                 used_bytes=spool.used_bytes)]  # fmt: skip
        assert (spool.next_offset, spool.committed_offset, spool.pending_records) == (2, 1, 1)
    finally:
        release.set()
        appender.join(5)
    assert (spool.next_offset, spool.committed_offset, spool.pending_records) == (3, 1, 2)
    spool.close()


def test_interval_policy_syncs_when_due(tmp_path: Path) -> None:
    spool = opened(tmp_path, fsync=FsyncPolicy.INTERVAL, fsync_interval=0.05)
    spool.append([payload(0)])
    assert spool.sync_if_due() is False
    time.sleep(0.06)
    assert spool.sync_if_due() is True
    assert spool.sync_if_due() is False
    spool.close()


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path).open()
    spool.close()
    opened(tmp_path).close()


def test_torn_tail_is_quarantined(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([payload(n) for n in range(5)])
    spool.close()
    segment = tmp_path / f"{0:020d}.seg"
    original = segment.read_bytes()
    last_start = len(original) - len(framed(payload(4)))
    os.truncate(segment, len(original) - 7)

    spool = Spool(tmp_path)
    report = spool.open()
    assert report.next_offset == 4
    assert report.truncated_bytes == len(original) - 7 - last_start
    assert report.quarantined == [tmp_path / "quarantine" / f"{segment.name}.{last_start}.bad"]
    assert report.quarantined[0].read_bytes() == original[last_start:-7]
    assert segment.read_bytes() == original[:last_start]
    assert read_all(spool) == [(n, payload(n)) for n in range(4)]
    assert spool.append([b"after"]) == 4
    spool.close()


def test_recovery_logs_what_it_quarantined_at_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = opened(tmp_path)
    spool.append([payload(n) for n in range(5)])
    spool.close()
    segment = tmp_path / f"{0:020d}.seg"
    size = segment.stat().st_size
    os.truncate(segment, size - 7)
    torn = size - 7 - (size - len(framed(payload(4))))

    recovered = Spool(tmp_path)
    with caplog.at_level(logging.INFO, logger="sidecar.audit.spool"):
        report = recovered.open()
    recovered.close()
    [record] = [record for record in caplog.records if record.name == "sidecar.audit.spool"]
    assert record.levelno == logging.WARNING
    assert segment.name in record.getMessage() and str(torn) in record.getMessage()
    assert record.segment == str(segment)  # type: ignore[attr-defined]
    assert record.quarantined_bytes == torn == report.truncated_bytes  # type: ignore[attr-defined]
    assert record.regions == 1 and record.kept_records == 4  # type: ignore[attr-defined]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sidecar.audit.spool"):
        opened(tmp_path).close()
    assert not caplog.records, "a clean recovery says nothing"


def test_garbage_after_the_last_record_is_quarantined(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([payload(n) for n in range(3)])
    spool.close()
    segment = tmp_path / f"{0:020d}.seg"
    original = segment.read_bytes()
    garbage = b"\x00\x00\x00\x00\x13\x37" + os.urandom(300) + b"\xff\xff"
    segment.write_bytes(original + garbage)

    spool = Spool(tmp_path)
    report = spool.open()
    assert report.truncated_bytes == len(garbage)
    assert [path.read_bytes() for path in report.quarantined] == [garbage]
    assert report.quarantined[0].name == f"{segment.name}.{len(original)}.bad"
    assert report.next_offset == 3
    assert read_all(spool) == [(n, payload(n)) for n in range(3)]
    spool.close()
    assert Spool(tmp_path).open().quarantined == []


def test_damaged_record_in_the_middle_is_quarantined_and_the_rest_kept(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=1 << 20)
    records = [payload(n) for n in range(20)]
    spool.append(records)
    spool.close()
    segment = tmp_path / f"{0:020d}.seg"
    original = segment.read_bytes()
    start = sum(len(framed(record)) for record in records[:7])
    end = start + len(framed(records[7]))
    damaged = bytearray(original)
    damaged[start + HEADER.size + 5] ^= 0x40
    segment.write_bytes(bytes(damaged))

    spool = Spool(tmp_path, segment_bytes=1 << 20)
    report = spool.open()
    assert report.quarantined == [tmp_path / "quarantine" / f"{segment.name}.{start}.bad"]
    assert report.quarantined[0].read_bytes() == bytes(damaged[start:end])
    assert report.truncated_bytes == end - start
    # The records after the damage take the next offsets: 8 becomes 7, and so on.
    survivors = records[:7] + records[8:]
    assert read_all(spool) == list(enumerate(survivors))
    assert (report.records, report.next_offset) == (19, 19)
    assert spool.append([b"next"]) == 19
    spool.close()

    report = Spool(tmp_path).open()
    assert report.quarantined == [] and report.records == 20


@pytest.mark.parametrize("seed", range(25))
def test_recovery_keeps_every_valid_record_between_damaged_regions(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    records: list[bytes] = []
    garbage: list[bytes] = []
    content = b""
    for _ in range(rng.randint(3, 12)):
        if rng.random() < 0.6:
            # Binary payloads hold the 0x00 and 0x01 bytes the resync looks for.
            record = rng.randbytes(rng.randint(1, 300))
            records.append(record)
            content += framed(record)
            continue
        kind = rng.choice(["zeros", "random", "text", "torn"])
        if kind == "zeros":
            chunk = bytes(rng.randint(1, 5000))
        elif kind == "random":
            chunk = rng.randbytes(rng.randint(1, 500))
        elif kind == "text":
            chunk = b'{"user":"alice"}' * rng.randint(1, 50)
        else:
            lost = rng.randbytes(rng.randint(2, 300))
            chunk = framed(lost)[: rng.randint(1, len(lost) + HEADER.size - 1)]
        garbage.append(chunk)
        content += chunk
    (tmp_path / f"{0:020d}.seg").write_bytes(content)

    spool = Spool(tmp_path)
    report = spool.open()
    assert read_all(spool) == list(enumerate(records))
    assert b"".join(path.read_bytes() for path in report.quarantined) == b"".join(garbage)
    assert report.truncated_bytes == sum(map(len, garbage))
    spool.close()


def test_damage_before_the_committed_offset_moves_it_back(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    records = [payload(n) for n in range(10)]
    spool.append(records)
    spool.commit(5)
    spool.close()
    segment = tmp_path / f"{0:020d}.seg"
    damaged = bytearray(segment.read_bytes())
    start = sum(len(framed(record)) for record in records[:3])
    damaged[start + HEADER.size] ^= 0x01
    segment.write_bytes(bytes(damaged))

    spool = Spool(tmp_path)
    report = spool.open()
    # Records 4.. became 3..; 4 and 5 were delivered, 6 was not: redeliver from 3.
    assert report.committed_stored == 6
    assert report.committed == 3
    assert any("moved back" in note for note in report.notes)
    assert [value for _, value in spool.read(spool.committed_offset, 100, 1 << 20)] == records[4:]
    spool.close()


def test_committed_offset_past_the_end_is_clamped(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([payload(n) for n in range(3)])
    spool.close()
    (tmp_path / "committed").write_text("99\n")

    spool = Spool(tmp_path)
    report = spool.open()
    assert (report.committed_stored, report.committed, report.next_offset) == (99, 3, 3)
    assert any("clamped" in note for note in report.notes)
    assert spool.pending_records == 0
    spool.close()


def test_missing_committed_file_delivers_from_the_oldest_segment(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=100)
    for n in range(12):
        spool.append([payload(n)])
    spool.commit(6)
    spool.close()
    (tmp_path / "committed").unlink()
    oldest = int(segment_files(tmp_path)[0][:20])

    spool = Spool(tmp_path, segment_bytes=100)
    report = spool.open()
    assert report.committed_stored is None
    assert report.committed == oldest
    assert spool.read(spool.committed_offset, 1, 1 << 20)[0][0] == oldest
    spool.close()


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from sidecar.audit.spool import FsyncPolicy, Spool
    from tests.audit.test_spool import payload

    spool = Spool(Path(sys.argv[1]), segment_bytes=32 * 1024, fsync=FsyncPolicy.ALWAYS)
    spool.open()
    offset = 0
    while True:
        size = offset % 7 + 1
        last = spool.append([payload(n) for n in range(offset, offset + size)])
        offset = last + 1
        print(last, flush=True)
    """
)


def test_every_acknowledged_record_survives_a_kill(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(tmp_path / "spool")],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
    )
    assert writer.stdout is not None
    try:
        assert writer.stdout.readline().strip().isdigit()
        time.sleep(0.5)
    finally:
        writer.send_signal(signal.SIGKILL)
        output = writer.stdout.read()
        writer.wait(timeout=10)
    # A line cut short by the kill was never acknowledged.
    complete = output.decode().split("\n")[:-1]
    acknowledged = max(int(line) for line in complete) if complete else 0
    assert acknowledged > 0

    spool = Spool(tmp_path / "spool", segment_bytes=32 * 1024)
    report = spool.open()
    assert report.next_offset > acknowledged
    recovered = read_all(spool)
    assert recovered[: acknowledged + 1] == [(n, payload(n)) for n in range(acknowledged + 1)]
    spool.close()


def test_concurrent_append_read_and_commit_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=4096, fsync=FsyncPolicy.NEVER)
    total = 3000
    delivered: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + 20

    def produce() -> None:
        try:
            for start in range(0, total, 10):
                spool.append([payload(n) for n in range(start, start + 10)])
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    def deliver() -> None:
        try:
            position = 0
            while len(delivered) < total and time.monotonic() < deadline:
                batch = spool.read(position, 64, 16 * 1024)
                if not batch:
                    time.sleep(0.001)
                    continue
                delivered.extend(batch)
                position = batch[-1][0] + 1
                spool.commit(batch[-1][0])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=produce), threading.Thread(target=deliver)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0.1))
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert delivered == [(n, payload(n)) for n in range(total)]
    assert spool.pending_records == 0
    assert spool.committed_offset == total
    assert len(segment_files(tmp_path)) == 1
    spool.close()


def test_append_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints records/s for 1 KiB records in batches of 100; asserts nothing about speed."""
    record = b"x" * 1024
    batch = [record] * 100
    lines = []
    for policy in FsyncPolicy:
        spool = opened(tmp_path / policy.value, fsync=policy)
        batches = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < 0.3 or batches < 3:
            spool.append(batch)
            batches += 1
        spool.close()
        lines.append(
            f"spool append, fsync={policy.value:<8}: {batches * 100 / elapsed:>10,.0f} records/s "
            f"({batches / elapsed:,.0f} batches/s, {batches * 100 * 1024 / elapsed / 2**20:,.0f} MiB/s)"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
