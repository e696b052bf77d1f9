"""Credentials in, a principal or a refusal out: API keys and JWTs (HS256, RS256/ES256 via JWKS)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.config import AuthConfig
from sidecar.proxy.auth.authenticator import Authenticator, AuthFailure, AuthSetupError
from sidecar.proxy.auth.keys import digest, new_key
from tests.support.credentials import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    Credentials,
    jwt_segment,
    make_credentials,
    unsigned_token,
)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(tmp_path_factory.mktemp("credentials"))


def _authenticator(credentials: Credentials, **jwt_settings: object) -> Authenticator:
    settings = credentials.auth_settings()
    jwt_config = {
        "algorithms": settings["auth__jwt__algorithms"],
        "secret": HS_SECRET,
        "jwks_file": credentials.jwks_file,
        "audience": [AUDIENCE],
        "issuer": ISSUER,
        **jwt_settings,
    }
    return Authenticator(AuthConfig(enabled=True, api_keys={"file": credentials.key_file}, jwt=jwt_config))


def _refusal(authenticator: Authenticator, headers: dict[str, str]) -> AuthFailure:
    with pytest.raises(AuthFailure) as caught:
        authenticator.authenticate(headers)
    return caught.value


def test_an_api_key_names_its_tenant_user_tier_and_models(credentials: Credentials) -> None:
    authenticator = _authenticator(credentials)
    for headers in ({"Authorization": f"Bearer {credentials.keys['globex-1']}"}, {"X-API-Key": credentials.keys["globex-1"]}):
        identity = authenticator.authenticate(headers)
        assert identity.principal.tenant == "globex"
        assert identity.principal.tier == "free"
        assert identity.principal.auth_method == "api_key"
        assert identity.principal.credential_id == "globex-1"
        assert identity.models == frozenset({"small-model"})


@pytest.mark.parametrize("kind", ["hs256", "rs256", "es256"])
def test_valid_tokens_map_claims_to_the_principal(credentials: Credentials, kind: str) -> None:
    token = getattr(credentials, kind)(tenant="initech", sub="bob", tier="paid", jti="t-1", models=["m"])
    identity = _authenticator(credentials).authenticate({"Authorization": f"Bearer {token}"})
    assert (identity.principal.tenant, identity.principal.user, identity.principal.tier) == ("initech", "bob", "paid")
    assert identity.principal.auth_method == "jwt"
    assert identity.principal.credential_id == "t-1"
    assert identity.models == frozenset({"m"})


def test_claim_names_are_configurable_and_may_be_nested(credentials: Credentials) -> None:
    authenticator = _authenticator(credentials, tenant_claim="org.id", user_claim="email", tier_claim="plan")
    token = credentials.hs256(org={"id": "umbrella"}, email="eve@example.com", plan="free")
    principal = authenticator.authenticate({"Authorization": f"Bearer {token}"}).principal
    assert (principal.tenant, principal.user, principal.tier) == ("umbrella", "eve@example.com", "free")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda c: c.rs256(exp=int(time.time()) - 120), "expired"),
        (lambda c: c.hs256(secret="another-secret-that-is-also-32-bytes-long!"), "bad_signature"),
        (lambda c: c.rs256(aud="someone-else"), "wrong_audience"),
        (lambda c: c.rs256(aud=None), "missing_claim"),
        (lambda c: c.rs256(iss="https://evil.example"), "wrong_issuer"),
        (lambda c: c.rs256(exp=None), "missing_claim"),
        (lambda c: c.rs256(nbf=int(time.time()) + 3600), "not_yet_valid"),
        (lambda c: c.rs256(kid="rotated-away"), "unknown_kid"),
        (lambda c: unsigned_token(), "algorithm_not_allowed"),
        (lambda c: c.rs256()[:-4] + "AAAA", "bad_signature"),
        (lambda c: "abc.def.ghi", "malformed"),
        (lambda c: c.rs256(tenant="bad\nname"), "invalid_claim"),
        (lambda c: "sk-sidecar-not-a-key", "unknown_key"),
    ],
)
def test_bad_tokens_get_401_with_a_challenge_that_never_quotes_them(credentials: Credentials, make, reason: str) -> None:
    token = make(credentials)
    failure = _refusal(_authenticator(credentials), {"Authorization": f"Bearer {token}"})
    assert (failure.status, failure.reason, failure.error_type) == (401, reason, "unauthenticated")
    assert failure.challenge.startswith('Bearer realm="inference-sidecar", error="invalid_token"')
    assert token not in failure.message and token not in failure.challenge


def test_a_token_outside_the_skew_allowance_expires_and_inside_it_does_not(credentials: Credentials) -> None:
    authenticator = _authenticator(credentials, leeway="30s")
    authenticator.authenticate({"Authorization": f"Bearer {credentials.rs256(exp=int(time.time()) - 10)}"})
    assert _refusal(authenticator, {"Authorization": f"Bearer {credentials.rs256(exp=int(time.time()) - 60)}"}).reason == "expired"


def test_algorithm_confusion_hs256_signed_with_the_public_key_is_refused(credentials: Credentials, tmp_path: Path) -> None:
    # The classic attack: sign HS256 with the server's public key as the HMAC secret.
    public_pem = credentials.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "rsa.pem").write_bytes(public_pem)
    authenticator = Authenticator(
        AuthConfig(enabled=True, jwt={"algorithms": ["RS256"], "public_key_file": tmp_path / "rsa.pem",
                                      "audience": [AUDIENCE]})  # fmt: skip
    )
    claims = {"aud": AUDIENCE, "exp": int(time.time()) + 60}
    # PyJWT itself refuses to sign like this, so the forgery is made by hand.
    signing_input = f"{jwt_segment({'alg': 'HS256', 'typ': 'JWT'})}.{jwt_segment(claims)}"
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    forged = f"{signing_input}.{signature.rstrip(b'=').decode()}"
    assert _refusal(authenticator, {"Authorization": f"Bearer {forged}"}).reason == "algorithm_not_allowed"
    authenticator.authenticate({"Authorization": f"Bearer {jwt.encode(claims, credentials.rsa_key, algorithm='RS256')}"})


def test_es256_with_a_pem_public_key(credentials: Credentials) -> None:
    authenticator = Authenticator(
        AuthConfig(enabled=True, jwt={"algorithms": ["ES256"], "public_key_file": credentials.ec_public_key_file,
                                      "audience": [AUDIENCE]})  # fmt: skip
    )
    token = jwt.encode({"aud": AUDIENCE, "exp": int(time.time()) + 60, "tenant": "t"}, credentials.ec_key, algorithm="ES256")
    assert authenticator.authenticate({"Authorization": f"Bearer {token}"}).principal.tenant == "t"


@pytest.mark.parametrize(
    ("headers", "reason", "challenge"),
    [
        ({}, "missing", 'Bearer realm="inference-sidecar"'),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "malformed", 'Bearer realm="inference-sidecar", error="invalid_request"'),
        ({"Authorization": "Bearer "}, "malformed", 'Bearer realm="inference-sidecar", error="invalid_request"'),
        ({"Authorization": "Bearer " + "x" * 20_000}, "malformed", 'Bearer realm="inference-sidecar", error="invalid_request"'),
    ],
)
def test_missing_or_malformed_credentials(credentials: Credentials, headers, reason: str, challenge: str) -> None:
    failure = _refusal(_authenticator(credentials), headers)
    assert failure.reason == reason
    assert failure.challenge.startswith(challenge)


def test_revoked_and_expired_keys_are_refused(credentials: Credentials, tmp_path: Path) -> None:
    revoked, expired, fine = new_key(), new_key(), new_key()
    entries = [
        {"id": "r", "sha256": digest(revoked), "tenant": "t", "disabled": True},
        {"id": "e", "sha256": digest(expired), "tenant": "t", "expires": "2026-01-31"},
        {"id": "f", "sha256": digest(fine), "tenant": "t", "expires": "2026-02-01"},
    ]
    (tmp_path / "keys.yaml").write_text(json.dumps({"keys": entries}))
    authenticator = Authenticator(
        AuthConfig(enabled=True, api_keys={"file": tmp_path / "keys.yaml"}), today=lambda: dt.date(2026, 1, 31)
    )
    assert _refusal(authenticator, {"X-API-Key": revoked}).reason == "revoked_key"
    assert _refusal(authenticator, {"X-API-Key": expired}).reason == "expired"
    assert authenticator.authenticate({"X-API-Key": fine}).principal.credential_id == "f"
    assert authenticator.failures == {"revoked_key": 1, "expired": 1}


def test_model_allowlist_gives_403_insufficient_scope(credentials: Credentials) -> None:
    authenticator = _authenticator(credentials)
    identity = authenticator.authenticate({"X-API-Key": credentials.keys["globex-1"]})
    authenticator.check_model(identity, "small-model")
    for model in ("big-model", None):
        with pytest.raises(AuthFailure) as caught:
            authenticator.check_model(identity, model)
        assert caught.value.status == 403
        assert 'error="insufficient_scope"' in caught.value.challenge
    unrestricted = authenticator.authenticate({"X-API-Key": credentials.keys["acme-1"]})
    authenticator.check_model(unrestricted, "big-model")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("keys: [{id: a, sha256: abc, tenant: t}]", "keys.0.sha256"),
        ("keys: [{id: a, tenant: t}]", "keys.0.sha256: Field required"),
        ("keys: [{id: a, sha256: '" + "0" * 64 + "', tenant: t, colour: red}]", "keys.0.colour"),
        ("keys: {a: b}", "keys:"),
        ("keys: [", "not valid YAML"),
        ("keys: [{id: a, sha256: '" + "0" * 64 + "', tenant: t}, {id: a, sha256: '" + "1" * 64 + "', tenant: t}]",
         "keys.1.id: 'a' is used by an earlier entry"),
    ],
)
def test_a_bad_key_file_is_refused_naming_the_file_and_entry(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(AuthSetupError) as caught:
        Authenticator(AuthConfig(enabled=True, api_keys={"file": path}))
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_bad_jwks_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    for content in ("not json", '{"keys": []}', '{"keys": [{"kty": "RSA", "n": "x"}]}', "[]"):
        (tmp_path / "jwks.json").write_text(content)
        with pytest.raises(AuthSetupError) as caught:
            Authenticator(AuthConfig(enabled=True, jwt={"jwks_file": tmp_path / "jwks.json"}))
        assert "auth.jwt.jwks_file" in str(caught.value) and str(tmp_path / "jwks.json") in str(caught.value)


def test_reload_picks_up_a_changed_key_file_and_keeps_the_old_one_when_the_new_is_broken(
    credentials: Credentials, tmp_path: Path
) -> None:
    first, second = new_key(), new_key()
    path = tmp_path / "keys.yaml"
    path.write_text(json.dumps({"keys": [{"id": "one", "sha256": digest(first), "tenant": "t"}]}))
    authenticator = Authenticator(AuthConfig(enabled=True, api_keys={"file": path}))
    assert not authenticator.changed_files()
    path.write_text(json.dumps({"keys": [{"id": "two", "sha256": digest(second), "tenant": "t"}]}) + "\n")
    assert authenticator.changed_files()
    assert authenticator.reload()
    assert authenticator.authenticate({"X-API-Key": second}).principal.credential_id == "two"
    assert _refusal(authenticator, {"X-API-Key": first}).reason == "unknown_key"
    path.write_text("keys: [")
    assert not authenticator.reload()
    assert authenticator.authenticate({"X-API-Key": second}).principal.credential_id == "two"


def test_exempt_paths_match_only_normalised_paths(credentials: Credentials) -> None:
    authenticator = Authenticator(AuthConfig(enabled=True, api_keys={"file": credentials.key_file}, exempt_paths=["/health"]))
    assert authenticator.exempt("/health", "/health")
    assert authenticator.exempt("/health", "/health?verbose=1")
    for raw in ("/health/.", "//health", "/%2e/health", "/x/../health", "/health%2f", "\\health"):
        assert not authenticator.exempt("/health", raw), raw
    assert not authenticator.exempt("/v1/chat/completions", "/v1/chat/completions")


def test_a_remembered_token_still_expires(credentials: Credentials) -> None:
    from sidecar.config import JwtConfig
    from sidecar.proxy.auth.tokens import TokenRejected, TokenVerifier

    now = [time.time()]
    verifier = TokenVerifier(JwtConfig(algorithms=["HS256"], secret=HS_SECRET, audience=[AUDIENCE], leeway=5),
                             clock=lambda: now[0])  # fmt: skip
    token = credentials.hs256(exp=int(now[0]) + 60, tenant="t")
    assert verifier.verify(token).tenant == "t"
    now[0] += 60  # within exp + leeway: the remembered answer holds
    assert verifier.verify(token).tenant == "t"
    now[0] += 10
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token)
    assert caught.value.reason == "expired"


def test_rotating_a_key_out_of_the_jwks_refuses_its_tokens_at_once(credentials: Credentials, tmp_path: Path) -> None:
    jwks = json.loads(credentials.jwks_file.read_text())
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    authenticator = Authenticator(AuthConfig(enabled=True, jwt={"jwks_file": path, "audience": [AUDIENCE]}))
    token = credentials.rs256()
    authenticator.authenticate({"Authorization": f"Bearer {token}"})
    path.write_text(json.dumps({"keys": [key for key in jwks["keys"] if key["kid"] != "rsa-1"]}))
    assert authenticator.reload()
    assert _refusal(authenticator, {"Authorization": f"Bearer {token}"}).reason == "unknown_kid"
