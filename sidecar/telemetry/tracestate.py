"""The W3C Trace Context `tracestate` grammar, for lists OpenTelemetry's TraceState cannot hold.

    is_valid_tracestate("rojo=00f067aa0ba902b7,congo@t=1")  # True
    is_valid_tracestate("foo=1,foo=2")                      # True: the sender must avoid duplicates
    is_valid_tracestate("foo=bar=baz")                      # False: discard it

OpenTelemetry's `TraceState.from_header` empties the whole list when one key
repeats or a key follows the Level 2 grammar but not the older
`tenant@system` one (`foo@`, `a@b@c`, a tenant over 241 characters). A proxy
must forward the caller's tracestate, so such a list goes on as it came; only
one the spec says to discard is dropped. Called only when the SDK returned an
empty TraceState for a present header, so it costs nothing on the usual path.
"""

from __future__ import annotations

MAX_MEMBERS = 32
# OpenTelemetry's propagator drops a combined tracestate longer than this; so does the sidecar.
MAX_LENGTH = 8192
MAX_KEY = 256
MAX_VALUE = 256

_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_KEY_CHARS = _KEY_FIRST | frozenset("_-*/@")
# Printable ASCII but comma and equals sign; a value's trailing spaces are whitespace around the member.
_VALUE_CHARS = frozenset(chr(code) for code in range(0x20, 0x7F)) - {",", "="}


def is_valid_tracestate(value: str) -> bool:
    """Whether a tracestate (its lines joined with commas) has members and is valid as a whole.

    Valid: at most 32 members (empty ones, between commas, do not count); each
    `key=value` with spaces and tabs around it, the key a lowercase letter or
    digit then up to 255 of `a-z 0-9 _ - * / @`, the value 1 to 256 printable
    ASCII characters but `,` and `=`, not ending in a space.
    """
    if len(value) > MAX_LENGTH:
        return False
    members = 0
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        members += 1
        key, equals, item = member.partition("=")
        if members > MAX_MEMBERS or not equals:
            return False
        if not 0 < len(key) <= MAX_KEY or key[0] not in _KEY_FIRST or not _KEY_CHARS.issuperset(key):
            return False
        if not 0 < len(item) <= MAX_VALUE or not _VALUE_CHARS.issuperset(item):
            return False
    return members > 0
