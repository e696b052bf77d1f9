"""Fuzz targets by name; each module has `check_bytes(data: bytes) -> None`.

`check_bytes` raises AssertionError (or whatever the code under test raised) when a property
fails, and KnownBugHit for a listed bug. It is what the atheris harness calls for every input
and what the corpus replay calls for every seed file.

To add a target: write `targets/<name>.py` with `check_bytes`, add
a `Target` here, put seeds in `corpus/<name>/` and a `test_fuzz_<name>.py` in tests/fuzz;
test_atheris.py runs every target listed here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Target:
    module: str
    instrument: tuple[str, ...]
    """Module prefixes the atheris harness instruments for coverage feedback: the sidecar's own
    code plus the third-party parsers the target drives. Only modules first imported inside the
    harness's instrumentation block are instrumented, so nothing here may be imported earlier."""


TARGETS: dict[str, Target] = {
    "trace_context": Target(
        "tests.fuzz.targets.trace_context",
        ("sidecar", "opentelemetry.propagators", "opentelemetry.baggage", "opentelemetry.trace"),
    ),
    "streams": Target("tests.fuzz.targets.streams", ("sidecar",)),
    "request_body": Target("tests.fuzz.targets.request_body", ("sidecar",)),
    "config": Target("tests.fuzz.targets.config", ("sidecar", "yaml")),
    "redact": Target("tests.fuzz.targets.redact", ("sidecar",)),
    "credentials": Target("tests.fuzz.targets.credentials", ("sidecar", "jwt")),
}


def load(name: str) -> ModuleType:
    return importlib.import_module(TARGETS[name].module)
