"""Tamper evidence: a hash chain over every audit document, and signed checkpoints.

Each document carries `event.sequence` (0, 1, 2, ... per chain, no gaps),
`sidecar.chain.prev_hash` (the previous document's hash) and `event.hash`,
the SHA-256 of the document's canonical JSON without `event.hash`. Changing
a document changes its hash; hiding that by recomputing the hash breaks the
next document's `prev_hash`; deleting one leaves a gap in the sequence.

Deleting the newest documents leaves no gap, so the chain is closed
periodically by a checkpoint document signed with a key the auditor trusts
(Ed25519; HMAC-SHA256 where a shared secret is all there is). A checkpoint
promises the next one within `interval_s`; a chain whose last checkpoint is
overdue and not final (written at a clean stop) has lost its tail.

A chain is identified by `sidecar.chain.id`, drawn at random when a chain
starts (first start, or after the spool was wiped), so a restarted chain is
never confused with the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no whitespace, UTF-8, numbers in shortest round-trip form (orjson's output):
    the bytes every hash and signature is taken over, and the form records are stored in."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def document_hash(doc: dict[str, Any]) -> str:
    """SHA-256 (hex) of the document's canonical JSON with `event.hash` left out."""
    event = doc.get("event")
    if isinstance(event, dict) and "hash" in event:
        event = {key: value for key, value in event.items() if key != "hash"}
        doc = {**doc, "event": event}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainHead:
    chain_id: str
    sequence: int
    """Sequence of the newest document; -1 before the first."""
    hash: str


def new_chain() -> ChainHead:
    return ChainHead(os.urandom(8).hex(), -1, GENESIS_HASH)


def head_of(doc: dict[str, Any]) -> ChainHead:
    """The chain head a stored document leaves behind (to resume after a restart)."""
    return ChainHead(doc["sidecar"]["chain"]["id"], doc["event"]["sequence"], doc["event"]["hash"])


class Chain:
    """Seals documents in order. Used by one thread (the audit writer)."""

    def __init__(self, head: ChainHead) -> None:
        self.head = head

    def seal(self, doc: dict[str, Any]) -> str:
        """Give `doc` its sequence, link and hash; returns the hash."""
        head = self.head
        sequence = head.sequence + 1
        doc["event"]["sequence"] = sequence
        doc["sidecar"]["chain"] = {"id": head.chain_id, "prev_hash": head.hash}
        digest = document_hash(doc)
        doc["event"]["hash"] = digest
        self.head = ChainHead(head.chain_id, sequence, digest)
        return digest


# --- checkpoint signatures ---------------------------------------------------


class Signer(Protocol):
    algorithm: str
    key_id: str

    def sign(self, payload: bytes) -> bytes: ...


class Verifier(Protocol):
    algorithm: str
    key_id: str

    def verify(self, payload: bytes, signature: bytes) -> bool: ...


def _key_id(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()[:16]


class Ed25519Signer:
    algorithm = "ed25519"

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.key_id = _key_id(self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def sign(self, payload: bytes) -> bytes:
        return self._key.sign(payload)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class Ed25519Verifier:
    algorithm = "ed25519"

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.key_id = _key_id(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, payload)
        except Exception:
            return False
        return True


class HmacKey:
    """HMAC-SHA256 signs and verifies with the same shared key."""

    algorithm = "hmac-sha256"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError(f"an HMAC key needs at least 16 bytes, this one has {len(key)}")
        self._key = key
        self.key_id = _key_id(key)

    def sign(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, payload, "sha256")

    def verify(self, payload: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(self.sign(payload), signature)


def load_ed25519_signer(path: Path) -> Ed25519Signer:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: expected an Ed25519 private key, found {type(key).__name__}")
    return Ed25519Signer(key)


def create_ed25519_key(path: Path) -> Ed25519Signer:
    """Generate a key at `path` (mode 0600) and its public key at `path` with suffix .pub."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    signer = Ed25519Signer(key)
    path.with_suffix(".pub").write_bytes(signer.public_pem())
    return signer


def load_verifier(path: Path, *, hmac_key: bool = False) -> Verifier:
    """A verifier from an Ed25519 public key (PEM), or from a shared HMAC key file."""
    try:
        material = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
    if hmac_key:
        return HmacKey(material.strip())
    try:
        key = serialization.load_pem_public_key(material)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: expected an Ed25519 public key, found {type(key).__name__}")
    return Ed25519Verifier(key)


def checkpoint_payload(instance: str, checkpoint: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers: its fields (minus the signature) and the instance."""
    unsigned = {key: value for key, value in checkpoint.items() if key != "signature"}
    return canonical_json({"instance": instance, **unsigned})


def checkpoint_fields(
    instance: str,
    head: ChainHead,
    time_iso: str,
    interval_s: float,
    final: bool,
    signer: Signer,
) -> dict[str, Any]:
    """The `sidecar.checkpoint` object for a checkpoint covering `head`, signed."""
    fields: dict[str, Any] = {
        "chain_id": head.chain_id,
        "sequence": head.sequence,
        "head_hash": head.hash,
        "time": time_iso,
        "interval_s": interval_s,
        "final": final,
        "algorithm": signer.algorithm,
        "key_id": signer.key_id,
    }
    fields["signature"] = base64.b64encode(signer.sign(checkpoint_payload(instance, fields))).decode()
    return fields
