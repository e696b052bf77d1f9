"""The W3C Level 2 tracestate grammar, at its edges (through the proxy: test_trace_context_conformance.py)."""

from __future__ import annotations

import pytest

from sidecar.telemetry.tracestate import is_valid_tracestate

VALID = [
    "foo=1",
    "foo=1,foo=1",  # keys are unique by the sender's care; a repeat does not void the list
    "foo@=1",
    "a@b@c=1",
    "1abc=1",
    "z" * 256 + "=1",
    "t" * 242 + "@v=1",
    "k=" + "v" * 256,
    "k= leading spaces are part of the value",
    "k=" + "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",="),
    " \t foo=1 \t , \t bar=2 \t ",
    ",,foo=1, ,",  # empty members are allowed
    ",".join(f"k{n}=v" for n in range(32)),
]
INVALID = [
    "",
    " , ,",  # no member
    "@foo=1",
    "_foo=1",
    "Foo=1",
    "foo.bar=1",
    "foo =1",
    "z" * 257 + "=1",
    "k=" + "v" * 257,
    "foo",
    "foo=",
    "=1",
    "foo=bar=baz",
    "foo=,bar=3",
    "foo=a\tb",
    "foo=é",
    ",".join(f"k{n}=v" for n in range(33)),
    "k=" + "v" * 200 + "," + ",".join(["a=b"] * 20) + " " * 8000,  # over 8192 characters
]


@pytest.mark.parametrize("value", VALID, ids=lambda value: value[:40])
def test_valid_lists(value: str) -> None:
    assert is_valid_tracestate(value)


@pytest.mark.parametrize("value", INVALID, ids=lambda value: value[:40])
def test_invalid_lists(value: str) -> None:
    assert not is_valid_tracestate(value)
