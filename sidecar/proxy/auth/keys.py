"""API keys from a file, stored as SHA-256 digests.

The file never holds a key, only its digest, so a leaked copy of it (or of
a backup, or of the ConfigMap it ships in) grants nothing. A fast hash is
right here, unlike for passwords: keys are 256 random bits (`sidecar auth
new-key`), so there is nothing to guess, and GitHub and Stripe hash theirs
the same way. A presented key is hashed and looked up by digest; what the
lookup's timing could reveal is a digest's bucket, which says nothing about
any key, and the match is confirmed with a constant-time comparison.

File format (YAML)::

    keys:
      - id: acme-prod-1          # names the key in audit records and logs; not secret
        sha256: 3b7f...e1         # hex digest of the key (64 characters)
        tenant: acme
        user: alice               # optional
        tier: paid                # optional: the rate-limit tier
        models: [llama-3.1-8b]    # optional: the only models this key may call
        expires: 2027-06-30       # optional: refused from this date (UTC)
        disabled: false           # optional: revoked without deleting the entry
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sidecar.exchange import well_formed

KEY_PREFIX = "sk-sidecar-"


class KeyFileError(Exception):
    """The key file cannot be used; the message names the file, the entry and what was expected."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str = Field(min_length=1, max_length=128)
    user: str | None = Field(None, max_length=256)
    tier: str | None = Field(None, max_length=64)
    models: list[str] | None = None
    expires: dt.date | None = None
    disabled: bool = False


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[_Entry] = []


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key's entry, without the key."""

    id: str
    digest: str
    tenant: str
    user: str | None
    tier: str | None
    models: frozenset[str] | None
    expires: dt.date | None
    disabled: bool


def digest(key: str) -> str:
    """The hex SHA-256 digest a key file stores for `key`."""
    # surrogateescape: header bytes that are not UTF-8 arrive as lone surrogates; such a key
    # matches nothing, and must not raise.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe, recognisable by its prefix (secret scanners key on it)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeyTable:
    """The keys of one file, by digest."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._by_digest = {key.digest: key for key in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, presented: str) -> ApiKey | None:
        """The entry of `presented`, or None for an unknown key."""
        presented_digest = digest(presented)
        entry = self._by_digest.get(presented_digest)
        if entry is None or not hmac.compare_digest(entry.digest, presented_digest):
            return None
        return entry


def load_key_file(path: Path) -> ApiKeyTable:
    """Read and check a key file; KeyFileError names each problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"auth.api_keys.file: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"auth.api_keys.file: {path} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeyFileError(f"{path}: not valid YAML: {exc}") from None
    try:
        parsed = _File.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            problems.append(f"{path}: {where}: {error['msg']}")
        hint = "expected `keys:` with entries of id, sha256 (64 hex digits), tenant and optional user, tier, " \
               "models, expires, disabled"  # fmt: skip
        raise KeyFileError("\n".join(problems) + f"\n{hint}") from None
    seen_ids: set[str] = set()
    seen_digests: set[str] = set()
    keys = []
    for index, entry in enumerate(parsed.keys):
        if entry.id in seen_ids:
            raise KeyFileError(f"{path}: keys.{index}.id: {entry.id!r} is used by an earlier entry; ids must be unique")
        if entry.sha256 in seen_digests:
            raise KeyFileError(f"{path}: keys.{index}.sha256: the same key digest appears twice (entry {entry.id!r})")
        for value in (entry.tenant, entry.user, entry.tier, *(entry.models or ())):
            if value is not None and well_formed(value) != value:
                raise KeyFileError(f"{path}: keys.{index}: {value!r} is not valid Unicode text (a lone surrogate)")
        seen_ids.add(entry.id)
        seen_digests.add(entry.sha256)
        keys.append(
            ApiKey(
                id=entry.id,
                digest=entry.sha256,
                tenant=entry.tenant,
                user=entry.user,
                tier=entry.tier,
                models=frozenset(entry.models) if entry.models is not None else None,
                expires=entry.expires,
                disabled=entry.disabled,
            )
        )
    return ApiKeyTable(keys)
