"""JSON Web Tokens, verified with PyJWT against a shared secret, a PEM key or a local JWKS.

Key material is chosen by the token's algorithm family, never by the token
alone: an HS* token is checked only against `secret` and every other
algorithm only against the public keys, so a token signed with HS256 using
the public key as its secret (algorithm confusion) fails, and `alg: none`
is not among the accepted algorithms at all. A JWKS key is picked by the
token's `kid`; a token without one is accepted only when the set has a
single key.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sidecar.config import JwtConfig
from sidecar.exchange import well_formed

_CLAIM_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
# Verified tokens remembered; a client holds one token at a time, so this covers that many clients.
_REMEMBERED = 4096


class TokenRejected(Exception):
    """A token that does not pass; `reason` is a short label for metrics, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyMaterialError(Exception):
    """The configured key or JWKS file cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    tenant: str | None
    user: str | None
    tier: str | None
    models: frozenset[str] | None
    token_id: str | None
    """`jti`, when the token has one (recorded, never the token)."""


def _load_public_key(path: Path) -> Any:
    try:
        return load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyMaterialError(f"auth.jwt.public_key_file: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise KeyMaterialError(f"auth.jwt.public_key_file: {path} is not a PEM public key: {exc}") from None


def _load_jwks(path: Path) -> dict[str, jwt.PyJWK]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyMaterialError(f"auth.jwt.jwks_file: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise KeyMaterialError(f"auth.jwt.jwks_file: {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyMaterialError(f'auth.jwt.jwks_file: {path}: expected a JWK set, {{"keys": [...]}}')
    keys: dict[str, jwt.PyJWK] = {}
    for index, entry in enumerate(data["keys"]):
        try:
            key = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError) as exc:
            raise KeyMaterialError(f"auth.jwt.jwks_file: {path}: keys[{index}] is not a usable JWK: {exc}") from None
        kid = key.key_id or ""
        if kid in keys:
            raise KeyMaterialError(f"auth.jwt.jwks_file: {path}: keys[{index}]: kid {kid!r} appears twice")
        keys[kid] = key
    if not keys:
        raise KeyMaterialError(f"auth.jwt.jwks_file: {path}: the key set is empty")
    return keys


def _claim(claims: Mapping[str, Any], dotted: str) -> Any:
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = _claim(claims, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TokenRejected("invalid_claim", f"claim {name!r} must be a string")
    text = str(value)
    if not _CLAIM_VALUE.fullmatch(text) or well_formed(text) != text:
        raise TokenRejected("invalid_claim", f"claim {name!r} must be 1 to 256 printable characters")
    return text


class TokenVerifier:
    """Verifies tokens against the key material of one `auth.jwt` config."""

    def __init__(self, config: JwtConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._verified: OrderedDict[bytes, tuple[VerifiedToken, float]] = OrderedDict()
        self._hmac_algorithms = [name for name in config.algorithms if name.startswith("HS")]
        self._key_algorithms = [name for name in config.algorithms if not name.startswith("HS")]
        self._secret = config.secret.encode() if config.secret else None
        self._public_key = _load_public_key(config.public_key_file) if config.public_key_file else None
        self._jwks = _load_jwks(config.jwks_file) if config.jwks_file else None
        self._audience = list(config.audience) or None
        self._issuer = config.issuer or None
        self._options: Any = {"require": ["exp"]}

    def describe(self) -> str:
        sources = []
        if self._secret is not None:
            sources.append("a shared secret")
        if self._public_key is not None:
            sources.append(f"the key in {self.config.public_key_file}")
        if self._jwks is not None:
            sources.append(f"{len(self._jwks)} key(s) in {self.config.jwks_file}")
        return ", ".join(sources)

    def verify(self, token: str) -> VerifiedToken:
        fingerprint = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(fingerprint)
        if remembered is not None:
            verified, valid_until = remembered
            if self._clock() <= valid_until:
                return verified
            del self._verified[fingerprint]
            raise TokenRejected("expired", "the token has expired")
        verified, expires = self._verify(token)
        self._verified[fingerprint] = (verified, expires + self.config.leeway)
        if len(self._verified) > _REMEMBERED:
            self._verified.popitem(last=False)
        return verified

    def _verify(self, token: str) -> tuple[VerifiedToken, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed", "the token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.config.algorithms:
            raise TokenRejected(
                "algorithm_not_allowed",
                f"the token's algorithm {str(algorithm)[:20]!r} is not accepted "
                f"(accepted: {', '.join(self.config.algorithms)})",
            )
        key = self._key_for(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self.config.leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not_yet_valid", "the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("wrong_audience", "the token's audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("wrong_issuer", "the token's issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected("missing_claim", f"the token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature", "the token's signature does not verify") from None
        except (jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
            raise TokenRejected("bad_signature", "the token's signature does not verify with the configured key") from None
        except jwt.PyJWTError:
            raise TokenRejected("malformed", "the token is not a valid JWT") from None
        config = self.config
        models = _claim(claims, config.models_claim)
        if models is not None and not (
            isinstance(models, list) and all(isinstance(m, str) and well_formed(m) == m for m in models)
        ):
            raise TokenRejected("invalid_claim", f"claim {config.models_claim!r} must be a list of model names")
        token_id = claims.get("jti")
        verified = VerifiedToken(
            tenant=_text_claim(claims, config.tenant_claim),
            user=_text_claim(claims, config.user_claim),
            tier=_text_claim(claims, config.tier_claim),
            models=frozenset(models) if models is not None else None,
            token_id=token_id[:128] if isinstance(token_id, str) else None,
        )
        return verified, float(claims["exp"])  # required, and checked to be a number by PyJWT

    def _key_for(self, algorithm: str, kid: object) -> Any:
        if algorithm.startswith("HS"):
            if self._secret is None:
                raise TokenRejected("algorithm_not_allowed", f"no shared secret is configured for {algorithm}")
            return self._secret
        if self._jwks is not None:
            if isinstance(kid, str):
                key = self._jwks.get(kid)
                if key is None:
                    if self._public_key is not None:
                        return self._public_key
                    raise TokenRejected("unknown_kid", "the token's key id (kid) is not in the key set")
                return key
            if len(self._jwks) == 1:
                return next(iter(self._jwks.values()))
            if self._public_key is None:
                raise TokenRejected("unknown_kid", "the token names no key id (kid) and the key set has several keys")
        if self._public_key is None:
            raise TokenRejected("algorithm_not_allowed", f"no public key is configured for {algorithm}")
        return self._public_key
