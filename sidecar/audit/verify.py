"""Walks audit chains and reports what was altered, deleted or cut off.

Input is any iterable of stored documents (JSON Lines files, an
Elasticsearch index), in any order and possibly holding several instances and
chains; the walk groups them by (`service.node.name`, `sidecar.chain.id`)
and orders each group by `event.sequence`. What it checks, per chain:

- every document's `event.hash` matches its content (altered documents);
- sequences run 0, 1, 2, ... with nothing missing (deleted documents);
- each `prev_hash` equals the previous document's hash (a document replaced,
  its hash recomputed to hide it);
- each checkpoint names the right head hash and carries a valid signature
  (when a key is given);
- the tail after the last checkpoint: a chain must end in a final checkpoint
  (clean stop) or its last checkpoint must not be overdue; otherwise the
  newest documents may have been deleted.

Memory: a few hundred bytes per document, as the walk keeps one small
summary per document until its chain is complete.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.audit.chain import GENESIS_HASH, Verifier, checkpoint_payload, document_hash

# A checkpoint is overdue once two intervals have passed and then some slack
# (slow disks, a paused VM): the interval itself, up to ten seconds.
_OVERDUE_SLACK_MAX_S = 10.0


@dataclass(slots=True)
class _Entry:
    sequence: int
    stored_hash: str
    computed_hash: str
    prev_hash: str | None
    checkpoint: dict[str, Any] | None


@dataclass
class ChainReport:
    instance: str
    chain_id: str
    records: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    checkpoints: int = 0
    unsigned_tail: int = 0
    findings: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    chains: list[ChainReport]
    records: int
    signatures_checked: bool
    unreadable: list[str]
    """Documents that are not chain documents at all (missing sequence, hash or chain id)."""

    @property
    def findings(self) -> list[str]:
        found = [f"{chain.instance}/{chain.chain_id}: {text}" for chain in self.chains for text in chain.findings]
        return found + [f"unreadable document: {text}" for text in self.unreadable]

    @property
    def ok(self) -> bool:
        return not self.findings and bool(self.chains)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "signatures_checked": self.signatures_checked,
            "chains": [chain.__dict__ for chain in self.chains],
            "findings": self.findings,
        }

    def text(self) -> str:
        lines = [f"records checked: {self.records}"]
        for chain in self.chains:
            lines.append(
                f"chain {chain.instance}/{chain.chain_id}: {chain.records} records, "
                f"sequence {chain.first_sequence}..{chain.last_sequence}, {chain.checkpoints} checkpoints, "
                f"unsigned tail {chain.unsigned_tail}"
            )
        if not self.signatures_checked:
            lines.append("checkpoint signatures not checked (no --public-key or --hmac-key given)")
        if not self.chains:
            lines.append("no audit records found")
        lines.extend(f"FINDING {text}" for text in self.findings)
        lines.append("OK" if self.ok else f"{len(self.findings) or 1} finding(s)")
        return "\n".join(lines)


def _parse_time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _ranges(missing: list[int]) -> str:
    spans: list[str] = []
    start = previous = missing[0]
    for number in missing[1:] + [None]:  # type: ignore[list-item]
        if number is not None and number == previous + 1:
            previous = number
            continue
        spans.append(str(start) if start == previous else f"{start}..{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(spans)


def verify_documents(
    documents: Iterable[dict[str, Any]],
    *,
    verifier: Verifier | None,
    now: float,
    instance: str | None = None,
    allow_missing_head: bool = False,
) -> VerifyReport:
    """Check every chain found in `documents` (only `instance`'s when given)."""
    chains: dict[tuple[str, str], list[_Entry]] = {}
    unreadable: list[str] = []
    total = 0
    for doc in documents:
        try:
            node = doc["service"]["node"]["name"]
            event = doc["event"]
            chain = doc["sidecar"]["chain"]
            entry = _Entry(
                sequence=int(event["sequence"]),
                stored_hash=str(event["hash"]),
                computed_hash=document_hash(doc),
                prev_hash=chain.get("prev_hash"),
                checkpoint=doc["sidecar"].get("checkpoint"),
            )
            key = (str(node), str(chain["id"]))
        except (KeyError, TypeError, ValueError):
            unreadable.append(str(doc.get("event", {}).get("id", "?")) if isinstance(doc, dict) else "?")
            continue
        if instance is not None and key[0] != instance:
            continue
        total += 1
        chains.setdefault(key, []).append(entry)
    reports = [
        _verify_chain(node, chain_id, entries, verifier, now, allow_missing_head)
        for (node, chain_id), entries in sorted(chains.items())
    ]
    return VerifyReport(reports, total, verifier is not None, unreadable)


def _verify_chain(
    instance: str,
    chain_id: str,
    entries: list[_Entry],
    verifier: Verifier | None,
    now: float,
    allow_missing_head: bool,
) -> ChainReport:
    entries.sort(key=lambda entry: entry.sequence)
    report = ChainReport(instance, chain_id, records=len(entries))
    report.first_sequence, report.last_sequence = entries[0].sequence, entries[-1].sequence
    by_sequence: dict[int, _Entry] = {}
    altered: list[int] = []
    broken: list[int] = []
    missing: list[int] = []
    expected = report.first_sequence if allow_missing_head else 0
    previous: _Entry | None = None
    for entry in entries:
        known = by_sequence.get(entry.sequence)
        if known is not None:
            # The same document stored twice (a file and its replay) is no finding.
            if (entry.stored_hash, entry.computed_hash) != (known.stored_hash, known.computed_hash):
                report.findings.append(f"sequence {entry.sequence} appears twice with different content")
            continue
        by_sequence[entry.sequence] = entry
        if entry.stored_hash != entry.computed_hash:
            altered.append(entry.sequence)
        if entry.sequence > expected:
            missing.extend(range(expected, entry.sequence))
        elif previous is not None and entry.prev_hash != previous.stored_hash:
            broken.append(entry.sequence)
        if entry.sequence == 0 and entry.prev_hash != GENESIS_HASH:
            broken.append(0)
        expected = entry.sequence + 1
        previous = entry
    if altered:
        report.findings.append(f"altered records (content does not match event.hash): sequence {_ranges(altered)}")
    if missing:
        report.findings.append(f"missing records (deleted): sequence {_ranges(missing)}")
    if broken:
        report.findings.append(f"broken links (prev_hash does not match the record before): sequence {_ranges(broken)}")
    _check_checkpoints(report, entries, by_sequence, verifier, now)
    return report


def _check_checkpoints(
    report: ChainReport,
    entries: list[_Entry],
    by_sequence: dict[int, _Entry],
    verifier: Verifier | None,
    now: float,
) -> None:
    last: _Entry | None = None
    for entry in by_sequence.values():
        checkpoint = entry.checkpoint
        if checkpoint is None:
            continue
        report.checkpoints += 1
        covered = by_sequence.get(int(checkpoint.get("sequence", -2)))
        if checkpoint.get("chain_id") != report.chain_id:
            report.findings.append(f"checkpoint at {entry.sequence} names another chain")
        if covered is not None and covered.stored_hash != checkpoint.get("head_hash"):
            report.findings.append(
                f"checkpoint at {entry.sequence} signs a different head hash for sequence {covered.sequence}"
            )
        if verifier is not None:
            if checkpoint.get("key_id") != verifier.key_id or checkpoint.get("algorithm") != verifier.algorithm:
                report.findings.append(
                    f"checkpoint at {entry.sequence} is signed with key {checkpoint.get('key_id')} "
                    f"({checkpoint.get('algorithm')}), not the given {verifier.key_id} ({verifier.algorithm})"
                )
            else:
                try:
                    signature = base64.b64decode(checkpoint.get("signature", ""), validate=True)
                except ValueError:
                    signature = b""
                if not verifier.verify(checkpoint_payload(report.instance, checkpoint), signature):
                    report.findings.append(f"checkpoint at {entry.sequence} has an invalid signature")
        last = entry
    if last is None:
        report.unsigned_tail = len(by_sequence)
        report.findings.append("no checkpoint: the chain is unsigned and its tail cannot be vouched for")
        return
    report.unsigned_tail = sum(1 for sequence in by_sequence if sequence > last.sequence)
    checkpoint = last.checkpoint or {}
    if checkpoint.get("final") and report.unsigned_tail == 0:
        return
    try:
        interval = float(checkpoint["interval_s"])
        due = _parse_time(str(checkpoint["time"])) + interval * 2 + min(interval, _OVERDUE_SLACK_MAX_S)
    except (KeyError, ValueError):
        report.findings.append(f"checkpoint at {last.sequence} has no readable time or interval")
        return
    if checkpoint.get("final"):
        report.findings.append(
            f"{report.unsigned_tail} record(s) after the final checkpoint at {last.sequence}"
        )
    elif now > due:
        report.findings.append(
            f"tail cut off or unsigned: the last checkpoint (sequence {last.sequence}, {checkpoint['time']}) "
            f"promised another within {float(checkpoint['interval_s']):g}s and none follows; "
            f"{report.unsigned_tail} record(s) after it are unsigned"
        )
