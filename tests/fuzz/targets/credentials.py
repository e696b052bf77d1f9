"""Credentials: what a client puts in `Authorization` (or `X-API-Key`) against the authenticator.

Input: the header value, decoded as aiohttp decodes header bytes (UTF-8, surrogateescape); a
first byte of 0x00 sends the rest as `X-API-Key` instead.

Properties:
- the authenticator answers with an identity or an AuthFailure, never anything else;
- a refusal's challenge is a legal header value (printable ASCII) that never quotes the
  credential, and its status is 401 or 403;
- it accepts exactly what an independent check accepts: PyJWT with the right key and
  algorithm for a JWT, the key table for an API key (so a token made valid by luck, e.g. a
  base64 padding bit, is no bug, and one refused by both is none either);
- an accepted caller's tenant, user and tier are text that encodes (metric labels, audit).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from tempfile import mkdtemp

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.config import AuthConfig
from sidecar.proxy.auth.authenticator import Authenticator, AuthFailure
from sidecar.proxy.auth.keys import digest

HS_SECRET = "fuzzing-secret-of-at-least-32-bytes-length"
AUDIENCE = "inference"
API_KEY = "sk-sidecar-fuzz-0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
FAR_FUTURE = 4102444800  # 2100-01-01: seeds signed with it stay valid
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _setup() -> Authenticator:
    directory = Path(mkdtemp(prefix="sidecar-fuzz-credentials-"))
    (directory / "keys.yaml").write_text(json.dumps({"keys": [{"id": "fuzz", "sha256": digest(API_KEY), "tenant": "t"}]}))
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    (directory / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "ec-1", "alg": "ES256"}]}))
    return Authenticator(
        AuthConfig(
            enabled=True,
            api_keys={"file": directory / "keys.yaml"},
            jwt={"algorithms": ["HS256", "ES256"], "secret": HS_SECRET, "jwks_file": directory / "jwks.json",
                 "audience": [AUDIENCE]},  # fmt: skip
        )
    )


AUTHENTICATOR = _setup()


def es256(claims: dict[str, object], kid: str = "ec-1") -> str:
    return jwt.encode({"aud": AUDIENCE, "exp": FAR_FUTURE, **claims}, EC_KEY, algorithm="ES256", headers={"kid": kid})


def hs256(claims: dict[str, object]) -> str:
    return jwt.encode({"aud": AUDIENCE, "exp": FAR_FUTURE, **claims}, HS_SECRET, algorithm="HS256")


def _oracle_accepts(credential: str) -> bool:
    if credential == API_KEY:
        return True
    try:
        header = jwt.get_unverified_header(credential)
    except Exception:
        return False
    algorithm = header.get("alg")
    keys = {"HS256": HS_SECRET, "ES256": EC_KEY.public_key()}
    if algorithm not in keys or (algorithm == "ES256" and header.get("kid") not in ("ec-1", None)):
        return False
    try:
        jwt.decode(credential, keys[algorithm], algorithms=[algorithm], audience=[AUDIENCE], leeway=30,
                   options={"require": ["exp"]})  # fmt: skip
    except Exception:
        return False
    return True


def check_header(value: str, *, as_api_key: bool = False) -> None:
    headers = {"X-API-Key": value} if as_api_key else {"Authorization": value}
    try:
        identity = AUTHENTICATOR.authenticate(headers)
    except AuthFailure as failure:
        assert failure.status in (401, 403), failure.status
        assert failure.challenge.isascii() and failure.challenge.isprintable(), repr(failure.challenge)
        credential = value.strip().partition(" ")[2].strip() if not as_api_key else value.strip()
        if len(credential) >= 8:
            assert credential not in failure.challenge and credential not in failure.message
        return
    credential = value.strip() if as_api_key else value.strip().partition(" ")[2].strip()
    assert _oracle_accepts(credential), f"accepted a credential PyJWT and the key table refuse: {value[:200]!r}"
    principal = identity.principal
    for text in (principal.tenant, principal.user, principal.tier, principal.credential_id):
        if text is not None:
            text.encode("utf-8")  # raises on a lone surrogate


def check_bytes(data: bytes) -> None:
    as_api_key = data[:1] == b"\x00"
    value = (data[1:] if as_api_key else data).decode("utf-8", "surrogateescape")
    if "\r" in value or "\n" in value:
        return  # no parser delivers a header value with a line break
    check_header(value, as_api_key=as_api_key)


def seeds() -> dict[str, bytes]:
    """The corpus, made with the keys above (regenerate with `python -m tests.fuzz.targets.credentials DIR`)."""
    return {
        "api-key.txt": f"Bearer {API_KEY}".encode(),
        "api-key-header.txt": b"\x00" + API_KEY.encode(),
        "hs256-valid.txt": f"Bearer {hs256({'tenant': 'acme', 'sub': 'u'})}".encode(),
        "hs256-nested-claims.txt": f"Bearer {hs256({'tenant': {'id': 1}, 'models': 'x'})}".encode(),
        "hs256-expired.txt": f"Bearer {hs256({'exp': int(time.time()) - 3600})}".encode(),
        "es256-unknown-kid.txt": f"Bearer {es256({}, kid='rotated')}".encode(),
        "alg-none.txt": b"Bearer eyJhbGciOiJub25lIn0.eyJhdWQiOiJpbmZlcmVuY2UiLCJleHAiOjQxMDI0NDQ4MDB9.",
        "basic.txt": b"Basic YWxpY2U6c2VjcmV0",
        "empty-bearer.txt": b"Bearer ",
        "three-dots.txt": b"Bearer ...",
        "not-utf8.txt": b"Bearer \xff\xfe.abc.def",
    }


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for name, content in seeds().items():
        (target / name).write_bytes(content)
