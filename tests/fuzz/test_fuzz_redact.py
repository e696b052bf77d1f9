"""Redaction of hostile text: see tests/fuzz/targets/redact.py for the properties.

tests/audit/test_redact.py fuzzes the Redactor's detectors one by one; this file drives the
redactor the sidecar builds from its config, with the credential oracle, planted secrets in
hostile surroundings, and timing on long runs of near-matches.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.fuzz.known_bugs import tolerating_known_bugs
from tests.fuzz.support import corpus_cases, fuzz_settings
from tests.fuzz.targets import redact as target

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# The characters redact.py's patterns turn on, so random text keeps brushing against them.
HOSTILE = ALNUM[:6] + "0123456789 -+.:@_=\"'[]()/\\{},;&%\n\teyJkKsSpPAB"
configs = st.sampled_from(sorted(target.CONFIGS))
hostile_text = st.one_of(st.text(HOSTILE, max_size=80), st.text(max_size=40))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def credentials(draw: st.DrawFn) -> tuple[str, str]:
    """(text to plant, the part of it that must not survive)."""
    kind = draw(st.sampled_from(["sk", "aws", "github", "jwt", "bearer", "pem", "url", "pair"]))
    token = draw(st.text(ALNUM, min_size=36, max_size=48))
    if kind == "sk":
        value = draw(st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-"])) + token
        return value, value
    if kind == "aws":
        value = "AKIA" + draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16))
        return value, value
    if kind == "github":
        value = draw(st.sampled_from(["ghp_", "gho_", "ghs_"])) + token[:36]
        return value, value
    if kind == "jwt":
        claims = json.dumps({"sub": draw(st.text(ALNUM, min_size=1, max_size=8)), "iat": draw(st.integers(0, 2**31))})
        value = ".".join([b64url(b'{"alg":"HS256","typ":"JWT"}'), b64url(claims.encode()), b64url(draw(st.binary(min_size=16, max_size=32)))])
        return value, value
    if kind == "bearer":
        secret = token[:20] + "7"
        return draw(st.sampled_from(["Bearer ", "bearer ", "Authorization: Bearer "])) + secret, secret
    if kind == "pem":
        body = base64.b64encode(draw(st.binary(min_size=48, max_size=96))).decode()
        return f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----", body[:40]
    if kind == "url":
        password = token[:12]
        return f"https://admin:{password}@db.internal/x", password
    name = draw(st.sampled_from(["password", "api_key", "client_secret", "X-Api-Key", "token"]))
    secret = token[:24]
    form = draw(st.sampled_from(["{n}={v}", "{n}: {v}", '"{n}": "{v}"', "{n}={v}&next=1", '{{"{n}":"{v}"}}']))
    return form.format(n=name, v=secret), secret


emails = st.builds(lambda local, domain, tld: f"{local}@{domain}.{tld}", st.text("abcxyz019", min_size=2, max_size=10),
                   st.text("abcxyz", min_size=2, max_size=8), st.sampled_from(["com", "org", "io"]))  # fmt: skip


@fuzz_settings(150)
@given(st.lists(hostile_text, min_size=1, max_size=5), st.lists(credentials(), min_size=1, max_size=3),
       st.lists(emails, max_size=2), configs, st.data())  # fmt: skip
def test_planted_credentials_never_survive(pieces: list[str], planted: list[tuple[str, str]], planted_emails: list[str],
                                           name: str, data: st.DataObject) -> None:  # fmt: skip
    secrets = [secret for _, secret in planted] + (planted_emails if target.CONFIGS[name].email else [])
    assume(not any(secret in "".join(pieces) for secret in secrets))
    for written in [text for text, _ in planted] + planted_emails:
        separator = data.draw(st.sampled_from([" ", "\n", "\t", "  "]))
        index = data.draw(st.integers(0, len(pieces)))
        pieces.insert(index, separator + written + separator)
    text = "".join(pieces)
    out = tolerating_known_bugs(target.check_text, text, name)
    if out is None:
        return
    untagged = target.TAG.sub("\x00", out)
    for secret in secrets:
        assert secret not in untagged, (secret, text, out)


@fuzz_settings(150)
@given(st.one_of(st.text(HOSTILE, max_size=300), st.text(max_size=200),
                 st.binary(max_size=200).map(lambda data: data.decode("utf-8", "surrogateescape"))), configs)  # fmt: skip
def test_any_text_is_redacted_idempotently(text: str, name: str) -> None:
    tolerating_known_bugs(target.check_text, text, name)


# Fragments that start a match and then fall just short of one, so that each position of a long
# run looks like a candidate: the input that makes a backtracking regex go quadratic or worse.
NEAR_MISSES = ["eyJ", "eyJa.", "a.", "sk-", "sk-a", "Bearer ", "Basic a", "a@", "a@b.", "@b.c", "password=", "key: ",
               "token is ", "+1 ", "+86 138", "4111 ", "4111-", "1-", "12-34-", "-----BEGIN PRIVATE KEY-----", "-----",
               "://a:", "://", "AKIA", "ghp_", "xoxb-", "[REDACTED:", "[email:", "\\\"", '"pass": "', "::", "ab:",
               "192.168.", "1.", "x" * 15 + "1", "Aa1" * 6, "Authorization: ", "Cookie: a=", "EMP-12345", " "]  # fmt: skip
HUNDRED_KB = 100_000


@fuzz_settings(20)
@given(st.lists(st.sampled_from(NEAR_MISSES), min_size=1, max_size=4).map("".join), configs)
def test_long_runs_of_near_matches_are_redacted_in_bounded_time(unit: str, name: str) -> None:
    text = (unit * (HUNDRED_KB // len(unit) + 1))[:HUNDRED_KB]
    redactor = target.redactor(name)
    redactor.text("warm up")
    # CPU time, not wall time: other processes on a busy machine do not count against the
    # redactor, while backtracking (seconds to hours for 100 KB) does.
    started = time.process_time()
    out = redactor.text(text)
    elapsed = time.process_time() - started
    assert elapsed < 1.0, f"{elapsed:.2f} s of CPU for 100 KB of {unit!r}"
    assert redactor.text(out) == out


@pytest.mark.parametrize("path", corpus_cases("redact"))
def test_corpus(path: Path) -> None:
    target.check_bytes(path.read_bytes())
