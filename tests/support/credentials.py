"""Key material and credentials for authentication tests: an API key file, JWTs signed with
HS256, RS256 (through a JWKS) and ES256, made with the same PyJWT the sidecar verifies with."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.proxy.auth.keys import digest, new_key

HS_SECRET = "a-shared-secret-that-is-at-least-32-bytes-long"
AUDIENCE = "inference"
ISSUER = "https://login.example"


@dataclass
class Credentials:
    directory: Path
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    keys: dict[str, str]
    """API keys by id, as a client presents them."""

    @property
    def key_file(self) -> Path:
        return self.directory / "keys.yaml"

    @property
    def jwks_file(self) -> Path:
        return self.directory / "jwks.json"

    @property
    def ec_public_key_file(self) -> Path:
        return self.directory / "ec-public.pem"

    def rs256(self, kid: str = "rsa-1", **claims: Any) -> str:
        return jwt.encode(_claims(claims), self.rsa_key, algorithm="RS256", headers={"kid": kid})

    def hs256(self, secret: str = HS_SECRET, **claims: Any) -> str:
        return jwt.encode(_claims(claims), secret, algorithm="HS256")

    def es256(self, **claims: Any) -> str:
        return jwt.encode(_claims(claims), self.ec_key, algorithm="ES256", headers={"kid": "ec-1"})

    def write_keys(self, entries: list[dict[str, Any]]) -> None:
        """Replace the key file with `entries`, each with `key` (the secret) instead of `sha256`."""
        stored = []
        for entry in entries:
            entry = dict(entry)
            key = entry.pop("key")
            self.keys[entry["id"]] = key
            stored.append({**entry, "sha256": digest(key)})
        self.key_file.write_text(json.dumps({"keys": stored}))  # JSON is YAML

    def auth_settings(self, **extra: Any) -> dict[str, Any]:
        """make_sidecar settings for API keys, HS256 and RS256/ES256 JWTs."""
        return {
            "auth__enabled": True,
            "auth__api_keys__file": str(self.key_file),
            "auth__jwt__algorithms": ["HS256", "RS256", "ES256"],
            "auth__jwt__secret": HS_SECRET,
            "auth__jwt__jwks_file": str(self.jwks_file),
            "auth__jwt__audience": [AUDIENCE],
            "auth__jwt__issuer": ISSUER,
            **extra,
        }


def _claims(claims: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300, "sub": "alice", "tenant": "acme"}
    base.update(claims)
    return {name: value for name, value in base.items() if value is not None}


def make_credentials(directory: Path) -> Credentials:
    directory.mkdir(parents=True, exist_ok=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    (directory / "jwks.json").write_text(
        json.dumps({"keys": [{**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
                             {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"}]})  # fmt: skip
    )
    (directory / "ec-public.pem").write_bytes(
        ec_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    credentials = Credentials(directory, rsa_key, ec_key, {})
    credentials.write_keys(
        [
            {"id": "acme-1", "key": new_key(), "tenant": "acme", "user": "alice", "tier": "paid"},
            {"id": "globex-1", "key": new_key(), "tenant": "globex", "tier": "free", "models": ["small-model"]},
        ]
    )
    return credentials


def jwt_segment(data: dict[str, object]) -> str:
    """One base64url segment of a JWT, for tokens made by hand (PyJWT refuses to make bad ones)."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token() -> str:
    """An `alg: none` token with otherwise valid claims: must be refused for its algorithm alone."""
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300, "tenant": "acme"}
    return f"{jwt_segment({'alg': 'none', 'typ': 'JWT'})}.{jwt_segment(claims)}."
