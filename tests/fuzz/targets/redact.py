"""The Redactor, as build_redactor makes it from the audit.redaction config.

The properties, for any text and for three configurations (the defaults; keyed hashes with IP
addresses and a custom pattern; credentials only):
- it never raises, and `text` is idempotent: redacting the output again changes nothing;
- `findings` are ordered, disjoint spans inside the text;
- no credential of an unmistakable shape survives when it stands alone between whitespace:
  OpenAI/Anthropic-style `sk-` keys, AWS access key ids, GitHub tokens, JWTs, bearer tokens,
  PEM private key bodies, passwords in URLs; nor, where e-mail masking is on, an e-mail address.
  These shapes are written here independently of redact.py's patterns (an oracle), and are
  looked for in the output: a masked value leaves a tag, which never stands alone.

Timing on adversarial input is checked by the hypothesis test (100 KB of near-matches each in
under a second), not here: atheris has its own per-input timeout for hangs.

Bytes format (atheris, corpus): the text, UTF-8, undecodable bytes kept as surrogates.
"""

from __future__ import annotations

import re
import tempfile
from functools import cache
from pathlib import Path

from sidecar.audit.build import build_redactor
from sidecar.audit.redact import Redactor
from sidecar.config import RedactionConfig

_ALONE_BEFORE, _ALONE_AFTER = r"(?<!\S)", r"(?!\S)"
CREDENTIAL_SHAPES = {
    "sk-key": re.compile(_ALONE_BEFORE + r"sk-(?:proj-|ant-api03-)?[A-Za-z0-9]{32,}" + _ALONE_AFTER),
    "aws-key-id": re.compile(_ALONE_BEFORE + r"AKIA[A-Z0-9]{16}" + _ALONE_AFTER),
    "github-token": re.compile(_ALONE_BEFORE + r"gh[pousr]_[A-Za-z0-9]{36}" + _ALONE_AFTER),
    "jwt": re.compile(_ALONE_BEFORE + r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}" + _ALONE_AFTER),
    "bearer": re.compile(_ALONE_BEFORE + r"[Bb]earer [A-Za-z0-9]{7,}[0-9][A-Za-z0-9]*" + _ALONE_AFTER),
    "private-key": re.compile(r"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----\s*[A-Za-z0-9+/=]{16,}"),
    "url-password": re.compile(_ALONE_BEFORE + r"https?://[a-z]{1,12}:[A-Za-z0-9]{6,}@[a-z]{1,12}\.[a-z]{2,6}" + _ALONE_AFTER),
}
TAG = re.compile(r"\[REDACTED:[A-Za-z0-9_.-]+\]|\[[A-Za-z0-9_.-]+:[0-9a-f]{16}\]")
"""What the redactor writes in place of a value (see redact.py's _OWN_TOKEN)."""
EMAIL_SHAPE = re.compile(_ALONE_BEFORE + r"[a-z0-9]{1,16}(?:\.[a-z0-9]{1,8})?@[a-z0-9]{1,12}\.(?:com|org|net|io)" + _ALONE_AFTER)

CONFIGS = {
    "defaults": RedactionConfig(),
    "keyed-ip-custom": RedactionConfig(replacement="keyed_hash", ip_address=True, custom={"employee_id": r"EMP-[0-9]{6}"}),
    "credentials-only": RedactionConfig(email=False, phone=False, national_id=False, credit_card=False),
}


@cache
def redactor(name: str) -> Redactor:
    """Built once per process, as the sidecar builds it (the keyed hash's key file in a scratch dir)."""
    directory = tempfile.TemporaryDirectory(prefix="sidecar-fuzz-redact-")
    _KEEP.append(directory)
    return build_redactor(CONFIGS[name], Path(directory.name))


_KEEP: list[tempfile.TemporaryDirectory[str]] = []


def check_text(text: str, name: str) -> str:
    redact = redactor(name)
    out = redact.text(text)
    assert isinstance(out, str)
    assert redact.text(out) == out, "redaction must be idempotent"
    previous_end = 0
    for kind, start, end in redact.findings(text):
        assert previous_end <= start < end <= len(text), (kind, start, end)
        previous_end = end
    for shape, pattern in CREDENTIAL_SHAPES.items():
        survivor = pattern.search(out)
        assert survivor is None, f"{shape} {survivor.group()!r} survived in {out!r}"  # type: ignore[union-attr]
    if CONFIGS[name].email:
        survivor = EMAIL_SHAPE.search(out)
        assert survivor is None, f"e-mail {survivor.group()!r} survived in {out!r}"  # type: ignore[union-attr]
    return out


def check_bytes(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for name in CONFIGS:
        check_text(text, name)
