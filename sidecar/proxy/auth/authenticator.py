"""Who is calling: credentials from the request headers in, a Principal out.

A Bearer value shaped like a JWT (three base64url segments) is verified as
one when JWTs are configured; any other Bearer value, or an `X-API-Key`
header, is looked up as an API key. Failures carry the HTTP answer they
deserve: 401 with an RFC 6750 `WWW-Authenticate` challenge for missing or
bad credentials, 403 (`insufficient_scope`) for a model the caller may not
use. Neither the message nor the reason ever quotes the credential.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import AuthConfig
from sidecar.exchange import Principal
from sidecar.proxy.auth.keys import ApiKeyTable, KeyFileError, load_key_file
from sidecar.proxy.auth.tokens import KeyMaterialError, TokenRejected, TokenVerifier

logger = logging.getLogger(__name__)

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Longest credential looked at: a JWT with many claims fits; anything longer is refused unread.
_MAX_CREDENTIAL = 16 * 1024
# A path that could mean something else once an upstream normalises it never matches an exempt path.
_UNNORMALISED = re.compile(r"//|/\.\.?(?:/|$)|%2[eEfF]|%5[cC]|\\")


class AuthSetupError(Exception):
    """The key file or key material cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    principal: Principal
    models: frozenset[str] | None
    """The models the caller may use; None: any."""


class AuthFailure(Exception):
    """Credentials missing, bad, or not enough for the request."""

    def __init__(self, status: int, reason: str, message: str, challenge: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.challenge = challenge

    @property
    def error_type(self) -> str:
        return "forbidden" if self.status == 403 else "unauthenticated"


_NOT_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _description(text: str) -> str:
    """`text` with only the characters RFC 6750 allows in error_description (no quotes, no controls)."""
    return _NOT_DESCRIPTION.sub("?", text)


class Authenticator:
    """Checks credentials against the configured API keys and JWT keys."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        today: Callable[[], dt.date] | None = None,
        failures: Counter[str] | None = None,
    ) -> None:
        self.config = config
        self._today = today or (lambda: dt.datetime.now(dt.UTC).date())
        self.failures: Counter[str] = failures if failures is not None else Counter()
        """Failed authentications by reason, for `sidecar_auth_failures_total`."""
        self._keys: ApiKeyTable | None = None
        self._tokens: TokenVerifier | None = None
        self._stamps: dict[Path, tuple[int, int]] = {}
        self._realm = config.realm  # validated: no quotes, backslashes or controls
        self._exempt = frozenset(config.exempt_paths)
        self._load()

    # --- key material -------------------------------------------------------

    def _watched(self) -> list[Path]:
        files = [self.config.api_keys.file, self.config.jwt.public_key_file, self.config.jwt.jwks_file]
        return [path for path in files if path is not None]

    def _stamp(self, path: Path) -> tuple[int, int]:
        try:
            stat = os.stat(path)
        except OSError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def _load(self) -> None:
        config = self.config
        try:
            keys = load_key_file(config.api_keys.file) if config.api_keys.file is not None else None
            tokens = TokenVerifier(config.jwt) if config.jwt.enabled else None
        except (KeyFileError, KeyMaterialError) as exc:
            raise AuthSetupError(str(exc)) from None
        self._keys, self._tokens = keys, tokens
        self._stamps = {path: self._stamp(path) for path in self._watched()}

    def reload(self) -> bool:
        """Re-read the key file and key material; on an error keep what is loaded and say why."""
        try:
            self._load()
        except AuthSetupError as exc:
            logger.error("reloading credentials failed; keeping the loaded ones", extra={"problem": str(exc)})
            return False
        logger.info("credentials reloaded", extra={"api_keys": len(self._keys) if self._keys is not None else 0})
        return True

    def describe(self) -> str:
        """What is loaded, in a line: for `sidecar auth check` and the log."""
        parts = []
        if self._keys is not None:
            parts.append(f"{len(self._keys)} API key(s) from {self.config.api_keys.file}")
        if self._tokens is not None:
            parts.append(f"JWTs ({', '.join(self.config.jwt.algorithms)}): {self._tokens.describe()}")
        return "; ".join(parts)

    def changed_files(self) -> bool:
        """Whether a watched file changed since it was read (stat calls: run it off the event loop)."""
        return any(self._stamp(path) != stamp for path, stamp in self._stamps.items())

    # --- requests -----------------------------------------------------------

    def exempt(self, path: str, raw_path: str) -> bool:
        """Whether the request may go without credentials."""
        if not self._exempt or path not in self._exempt:
            return False
        return not _UNNORMALISED.search(raw_path.partition("?")[0])

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity, or AuthFailure."""
        credential, scheme = self._credential(headers)
        if len(credential) > _MAX_CREDENTIAL:
            raise self._fail("malformed", "the credential is too long", error="invalid_request")
        if scheme == "bearer" and self._tokens is not None and _JWT_SHAPE.fullmatch(credential):
            try:
                verified = self._tokens.verify(credential)
            except TokenRejected as exc:
                raise self._fail(exc.reason, str(exc), error="invalid_token") from None
            return Identity(
                Principal(verified.tenant, verified.user, verified.tier, "jwt", verified.token_id), verified.models
            )
        if self._keys is None:
            raise self._fail("unknown_credential", "the bearer token is not a valid JWT", error="invalid_token")
        key = self._keys.find(credential)
        if key is None:
            raise self._fail("unknown_key", "the API key is not valid", error="invalid_token")
        if key.disabled:
            raise self._fail("revoked_key", "the API key has been revoked", error="invalid_token")
        if key.expires is not None and self._today() >= key.expires:
            raise self._fail("expired", "the API key has expired", error="invalid_token")
        return Identity(Principal(key.tenant, key.user, key.tier, "api_key", key.id), key.models)

    def check_model(self, identity: Identity, model: str | None) -> None:
        """403 unless the caller may use `model` (None: the request named none)."""
        allowed = identity.models
        if allowed is None or (model is not None and model in allowed):
            return
        detail = f"model {model[:200]!r} is not allowed" if model is not None else "the request names no model"
        self.failures["model_not_allowed"] += 1
        raise AuthFailure(
            403,
            "model_not_allowed",
            f"{detail} for these credentials; allowed: {', '.join(sorted(allowed)) or 'none'}",
            f'Bearer realm="{self._realm}", error="insufficient_scope", '
            f'error_description="model not allowed for these credentials"',
        )

    def _credential(self, headers: Mapping[str, str]) -> tuple[str, str]:
        authorization = headers.get("Authorization")
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise self._fail(
                    "malformed", "expected `Authorization: Bearer <API key or JWT>`", error="invalid_request"
                )
            return value.strip(), "bearer"
        api_key = headers.get("X-API-Key")
        if api_key is not None and api_key.strip():
            return api_key.strip(), "api_key"
        self.failures["missing"] += 1
        # RFC 6750 §3.1: no error code when the request carried no credentials at all.
        raise AuthFailure(
            401, "missing", "credentials required: send `Authorization: Bearer <API key or JWT>`",
            f'Bearer realm="{self._realm}"',
        )  # fmt: skip

    def _fail(self, reason: str, message: str, *, error: str) -> AuthFailure:
        self.failures[reason] += 1
        return AuthFailure(
            401, reason, message, f'Bearer realm="{self._realm}", error="{error}", error_description="{_description(message)}"'
        )
