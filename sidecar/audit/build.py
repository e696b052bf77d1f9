"""Builds the audit pipeline's parts from the config: keys, redactor, spool, sink.

Key material the operator did not provide is generated once under
`<data_dir>/audit/` (mode 0600) and reused on every start, so signatures
and keyed hashes stay comparable across restarts.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.audit.chain import HmacKey, Signer, create_ed25519_key, load_ed25519_signer
from sidecar.audit.elastic import ElasticSink
from sidecar.audit.events import AuditIdentity
from sidecar.audit.pipeline import AuditPipeline, PipelineSettings
from sidecar.audit.redact import RedactionSettings, Redactor, Replacement
from sidecar.audit.sinks import DeadLetters, FileSink, Sink
from sidecar.audit.spool import FsyncPolicy, Spool
from sidecar.config import AuditConfig, CheckpointConfig, Config, RedactionConfig


class AuditSetupError(Exception):
    """A key or directory the audit needs is unusable; the message names it."""


def audit_directory(config: Config) -> Path:
    return config.data_dir / "audit"


def _read_key(path: Path, key: str) -> bytes:
    try:
        material = path.read_bytes().strip()
    except OSError as exc:
        raise AuditSetupError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if len(material) < 16:
        raise AuditSetupError(f"{key}: {path} holds {len(material)} bytes; a key needs at least 16")
    return material


def _generated_secret(path: Path) -> bytes:
    """A random key kept at `path`, created (mode 0600) on first use."""
    if path.exists():
        return _read_key(path, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    material = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(material)
    return material


def checkpoint_signer(checkpoint: CheckpointConfig, directory: Path) -> Signer:
    if checkpoint.hmac_key_file is not None:
        return HmacKey(_read_key(checkpoint.hmac_key_file, "audit.checkpoint.hmac_key_file"))
    path = checkpoint.signing_key_file or directory / "checkpoint.key"
    if checkpoint.signing_key_file is None and not path.exists():
        return create_ed25519_key(path)
    try:
        return load_ed25519_signer(path)
    except ValueError as exc:
        raise AuditSetupError(f"audit.checkpoint.signing_key_file: {exc}") from None


def build_redactor(redaction: RedactionConfig, directory: Path) -> Redactor:
    hash_key = None
    if redaction.replacement == "keyed_hash":
        hash_key = (
            _read_key(redaction.hash_key_file, "audit.redaction.hash_key_file")
            if redaction.hash_key_file is not None
            else _generated_secret(directory / "redaction.key")
        )
    settings = RedactionSettings(
        email=redaction.email,
        phone=redaction.phone,
        national_id=redaction.national_id,
        credit_card=redaction.credit_card,
        ip_address=redaction.ip_address,
        custom=tuple(redaction.custom.items()),
        replacement=Replacement(redaction.replacement),
        hash_key=hash_key,
    )
    try:
        return Redactor(settings)
    except ValueError as exc:
        raise AuditSetupError(f"audit.redaction: {exc}") from None


def build_sink(audit: AuditConfig, directory: Path, clock: Callable[[], float] = time.time) -> Sink:
    if audit.elasticsearch.url:
        return ElasticSink(audit.elasticsearch, DeadLetters(directory / "dead-letter.jsonl"), clock=clock)
    return FileSink(audit.file.directory or directory / "events", int(audit.file.max_file_size), clock=clock)


def build_pipeline(
    config: Config, identity: AuditIdentity, redactor: Redactor, *, clock: Callable[[], float] = time.time
) -> AuditPipeline:
    """The pipeline `config` describes; `clock` (Unix time) stamps records and judges the sink's health."""
    audit = config.audit
    directory = audit_directory(config)
    spool = Spool(
        directory / "spool",
        segment_bytes=int(audit.spool.segment_size),
        max_bytes=int(audit.spool.max_size),
        fsync=FsyncPolicy(audit.spool.fsync),
        fsync_interval=audit.spool.fsync_interval,
    )
    settings = PipelineSettings(
        when_full=audit.spool.when_full,
        queue_size=audit.queue_size,
        checkpoint_interval=audit.checkpoint.interval,
        batch_size=audit.elasticsearch.batch_size,
        batch_bytes=int(audit.elasticsearch.batch_bytes),
        batch_age=audit.elasticsearch.batch_age,
        fail_closed_headroom=max(int(audit.spool.max_size) // 10, 1 << 20),
        # Files are written in order, one batch at a time.
        max_in_flight=audit.elasticsearch.max_in_flight if audit.elasticsearch.url else 1,
        sink_down_after=audit.sink_down_after,
        sink_down_fails_ready=audit.sink_down_fails_ready,
    )
    return AuditPipeline(
        settings,
        spool=spool,
        sink=build_sink(audit, directory, clock),
        identity=identity,
        redactor=redactor,
        signer=checkpoint_signer(audit.checkpoint, directory),
        clock=clock,
    )
