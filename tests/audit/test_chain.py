"""The hash chain, checkpoint signatures and the verifier, on documents built in memory."""

from __future__ import annotations

import base64
import copy
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit.chain import (
    GENESIS_HASH,
    Chain,
    HmacKey,
    canonical_json,
    checkpoint_fields,
    create_ed25519_key,
    document_hash,
    head_of,
    load_verifier,
    new_chain,
)
from sidecar.audit.events import iso_time
from sidecar.audit.verify import verify_documents

INSTANCE = "node-a"


def _doc(number: int) -> dict[str, Any]:
    return {
        "@timestamp": iso_time(1_700_000_000 + number),
        "message": f"GET /item/{number} 200",
        "event": {"kind": "event", "action": "http-request", "duration": 1000 + number},
        "service": {"node": {"name": INSTANCE}},
        "http": {"response": {"status_code": 200}},
        "sidecar": {"timing": {"proxy_overhead_ms": 0.125}},
    }


def _checkpoint(chain: Chain, signer: Any, *, at: float, interval: float = 60.0, final: bool = False) -> dict[str, Any]:
    doc = {
        "@timestamp": iso_time(at),
        "event": {"kind": "state", "action": "audit-checkpoint"},
        "service": {"node": {"name": INSTANCE}},
        "sidecar": {"checkpoint": checkpoint_fields(INSTANCE, chain.head, iso_time(at), interval, final, signer)},
    }
    chain.seal(doc)
    return doc


def _chain_of(count: int, signer: Any, *, final: bool = True, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    chain = Chain(new_chain())
    docs = [_checkpoint(chain, signer, at=now)]
    for number in range(count):
        doc = _doc(number)
        chain.seal(doc)
        docs.append(doc)
    if final:
        docs.append(_checkpoint(chain, signer, at=now, final=True))
    return docs


@pytest.fixture
def signer(tmp_path: Path) -> Any:
    return create_ed25519_key(tmp_path / "checkpoint.key")


@pytest.fixture
def verifier(tmp_path: Path, signer: Any) -> Any:
    return load_verifier(tmp_path / "checkpoint.pub")


def test_canonical_json_is_independent_of_key_order_and_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    assert canonical_json({"a": {"c": "é", "d": [1, 2]}, "b": 1}) == canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}})


def test_sealing_links_each_document_to_the_one_before() -> None:
    chain = Chain(new_chain())
    first, second = _doc(0), _doc(1)
    chain.seal(first)
    chain.seal(second)
    assert first["event"]["sequence"] == 0 and second["event"]["sequence"] == 1
    assert first["sidecar"]["chain"]["prev_hash"] == GENESIS_HASH
    assert second["sidecar"]["chain"]["prev_hash"] == first["event"]["hash"]
    assert document_hash(second) == second["event"]["hash"]
    assert head_of(second) == chain.head


def test_hash_covers_every_field_but_itself() -> None:
    chain = Chain(new_chain())
    doc = _doc(0)
    chain.seal(doc)
    changed = copy.deepcopy(doc)
    changed["http"]["response"]["status_code"] = 500
    assert document_hash(changed) != doc["event"]["hash"]
    changed = copy.deepcopy(doc)
    changed["event"]["hash"] = "f" * 64
    assert document_hash(changed) == doc["event"]["hash"]


def test_an_intact_chain_verifies_with_its_signatures(signer: Any, verifier: Any) -> None:
    docs = _chain_of(50, signer)
    report = verify_documents(reversed(docs), verifier=verifier, now=time.time())
    assert report.ok, report.text()
    (chain,) = report.chains
    assert (chain.records, chain.first_sequence, chain.last_sequence, chain.checkpoints) == (52, 0, 51, 2)
    assert chain.unsigned_tail == 0


def test_an_altered_record_is_reported(signer: Any, verifier: Any) -> None:
    docs = _chain_of(20, signer)
    docs[7]["http"]["response"]["status_code"] = 403
    report = verify_documents(docs, verifier=verifier, now=time.time())
    assert not report.ok
    assert any("altered records" in finding and "sequence 7" in finding for finding in report.findings)


def test_an_altered_record_with_a_recomputed_hash_breaks_the_next_link(signer: Any, verifier: Any) -> None:
    docs = _chain_of(20, signer)
    docs[7]["http"]["response"]["status_code"] = 403
    docs[7]["event"]["hash"] = document_hash(docs[7])
    report = verify_documents(docs, verifier=verifier, now=time.time())
    assert any("broken links" in finding and "sequence 8" in finding for finding in report.findings)


def test_a_deleted_record_is_a_gap(signer: Any, verifier: Any) -> None:
    docs = _chain_of(20, signer)
    del docs[10:12]
    report = verify_documents(docs, verifier=verifier, now=time.time())
    assert any("missing records" in finding and "10..11" in finding for finding in report.findings)


def test_a_cut_tail_is_reported_once_the_next_checkpoint_is_overdue(signer: Any, verifier: Any) -> None:
    written = time.time() - 1000
    docs = _chain_of(20, signer, now=written)[:-10]
    fresh = verify_documents(docs, verifier=verifier, now=written + 5)
    assert fresh.ok, "within the checkpoint interval, a tail is simply not signed yet"
    assert fresh.chains[0].unsigned_tail == 11
    late = verify_documents(docs, verifier=verifier, now=written + 200)
    assert any("tail cut off" in finding for finding in late.findings)


def test_a_forged_checkpoint_signature_is_reported(signer: Any, verifier: Any) -> None:
    docs = _chain_of(5, signer)
    checkpoint = docs[-1]["sidecar"]["checkpoint"]
    checkpoint["signature"] = base64.b64encode(b"\0" * 64).decode()
    docs[-1]["event"]["hash"] = document_hash(docs[-1])
    report = verify_documents(docs, verifier=verifier, now=time.time())
    assert any("invalid signature" in finding for finding in report.findings)


def test_a_checkpoint_signed_by_another_key_is_reported(tmp_path: Path, verifier: Any) -> None:
    other = create_ed25519_key(tmp_path / "other.key")
    report = verify_documents(_chain_of(5, other), verifier=verifier, now=time.time())
    assert any("not the given" in finding for finding in report.findings)


def test_hmac_checkpoints_verify_with_the_shared_key(tmp_path: Path) -> None:
    key = HmacKey(b"0123456789abcdef0123456789abcdef")
    (tmp_path / "hmac.key").write_bytes(b"0123456789abcdef0123456789abcdef\n")
    report = verify_documents(_chain_of(5, key), verifier=load_verifier(tmp_path / "hmac.key", hmac_key=True), now=time.time())
    assert report.ok, report.text()


def test_a_chain_without_any_checkpoint_is_a_finding() -> None:
    chain = Chain(new_chain())
    docs = [_doc(n) for n in range(3)]
    for doc in docs:
        chain.seal(doc)
    report = verify_documents(docs, verifier=None, now=time.time())
    assert any("no checkpoint" in finding for finding in report.findings)


def test_the_same_document_twice_is_no_finding_but_a_conflicting_one_is(signer: Any) -> None:
    docs = _chain_of(5, signer)
    assert verify_documents(docs + [copy.deepcopy(docs[3])], verifier=None, now=time.time()).ok
    conflicting = copy.deepcopy(docs[3])
    conflicting["message"] = "something else"
    report = verify_documents(docs + [conflicting], verifier=None, now=time.time())
    assert any("appears twice" in finding for finding in report.findings)


def test_an_empty_input_is_not_ok() -> None:
    report = verify_documents([], verifier=None, now=time.time())
    assert not report.ok and "no audit records" in report.text()
