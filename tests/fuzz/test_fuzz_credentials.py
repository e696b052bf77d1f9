"""Credentials against the authenticator: see tests/fuzz/targets/credentials.py for the properties."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.known_bugs import tolerating_known_bugs
from tests.fuzz.support import corpus_cases, fuzz_settings
from tests.fuzz.targets import credentials as target

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("path", corpus_cases("credentials"))
def test_corpus(path: Path) -> None:
    target.check_bytes(path.read_bytes())


@fuzz_settings(300)
@given(st.binary(max_size=300))
def test_any_header_bytes(data: bytes) -> None:
    tolerating_known_bugs(target.check_bytes, data)


@fuzz_settings(300)
@given(st.lists(st.text(B64URL, max_size=60), min_size=1, max_size=5).map(".".join), st.sampled_from(["Bearer ", "bearer  ", ""]))
def test_jwt_shaped_noise(token: str, scheme: str) -> None:
    tolerating_known_bugs(target.check_header, scheme + token)


@fuzz_settings(200)
@given(
    st.dictionaries(st.sampled_from(["alg", "kid", "typ", "jku", "x5u", "crit", "b64"]), json_values, max_size=4),
    st.dictionaries(st.sampled_from(["tenant", "sub", "tier", "models", "aud", "exp", "nbf", "iat", "jti"]), json_values, max_size=6),
    st.binary(max_size=64),
)
def test_forged_headers_and_claims_with_any_signature(header: dict, claims: dict, signature: bytes) -> None:
    token = ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)])
    tolerating_known_bugs(target.check_header, f"Bearer {token}")


@fuzz_settings(200)
@given(st.dictionaries(st.sampled_from(["tenant", "sub", "tier", "models", "jti", "org"]), json_values, max_size=5),
       st.sampled_from(["hs256", "es256"]))  # fmt: skip
def test_validly_signed_tokens_with_any_claims(claims: dict, kind: str) -> None:
    token = getattr(target, kind)(claims)
    tolerating_known_bugs(target.check_header, f"Bearer {token}")


@fuzz_settings(300)
@given(st.integers(min_value=0), st.text(B64URL + ".=", min_size=1, max_size=3))
def test_a_valid_token_with_any_edit_is_refused_unless_it_still_verifies(position: int, replacement: str) -> None:
    token = target.hs256({"tenant": "acme"})
    cut = position % len(token)
    tolerating_known_bugs(target.check_header, f"Bearer {token[:cut]}{replacement}{token[cut + 1:]}")
