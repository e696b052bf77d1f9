"""What every fuzz target shares: the seed corpus, hypothesis settings, reproducer markers.

A target is a name (`trace_context`, `streams`, ...) with
- `tests/fuzz/corpus/<name>/`: seed files, raw bytes, each one input as the atheris harness
  feeds it (README.md says how each target reads its bytes);
- `tests/fuzz/targets/<name>.py`: `check_bytes(data)`, the properties, used by both the
  atheris harness and the corpus replay, plus typed `check_*` functions for hypothesis;
- `tests/fuzz/test_fuzz_<name>.py`: hypothesis tests and `corpus_cases(<name>)` replay.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.fuzz.known_bugs import KNOWN_BUGS, KnownBugHit

FUZZ_DIR = Path(__file__).parent
CORPUS_DIR = FUZZ_DIR / "corpus"

BUG_PREFIX = "bug-"

# FUZZ_HYPOTHESIS_SCALE=50 runs fifty times the examples, for a longer search than CI's.
SCALE = float(os.environ.get("FUZZ_HYPOTHESIS_SCALE", "1"))


def fuzz_settings(max_examples: int, **overrides: object) -> settings:
    """Hypothesis settings for this directory, sized by the caller to keep the whole run short.

    No example database: the fuzz tests run in CI on fresh checkouts, a database would only
    write `.hypothesis/` into the working tree; a failure prints its reproduction blob instead.
    """
    options: dict[str, object] = {
        "max_examples": max(1, round(max_examples * SCALE)),
        "deadline": None,
        "database": None,
        "print_blob": True,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    }
    options.update(overrides)
    return settings(**options)  # type: ignore[arg-type]


def corpus_files(target: str) -> list[Path]:
    """The seed files of `target`, sorted; README.md and dot files are not seeds."""
    directory = CORPUS_DIR / target
    if not directory.is_dir():
        return []
    return sorted(
        path for path in directory.iterdir() if path.is_file() and not path.name.startswith(".") and path.name != "README.md"
    )


def bug_id_of(path: Path) -> str | None:
    """`bug-<id>-<anything>` names a reproducer of KNOWN_BUGS[<id>]; the longest listed id wins."""
    if not path.name.startswith(BUG_PREFIX):
        return None
    rest = path.name[len(BUG_PREFIX) :]
    matches = [bug_id for bug_id in KNOWN_BUGS if rest.startswith(bug_id + "-") or rest.split(".")[0] == bug_id]
    return max(matches, key=len) if matches else rest.split(".")[0]


def corpus_cases(target: str) -> list[object]:
    """pytest params, one per seed file; a known bug's reproducer is a strict xfail."""
    cases: list[object] = []
    for path in corpus_files(target):
        bug_id = bug_id_of(path)
        marks = []
        if bug_id is not None:
            bug = KNOWN_BUGS.get(bug_id)
            reason = bug.summary if bug else f"no known bug {bug_id!r}: rename the file (see README.md)"
            marks.append(pytest.mark.xfail(strict=True, raises=KnownBugHit, reason=reason))
        cases.append(pytest.param(path, id=path.name, marks=marks))
    return cases


def reproducer(bug_id: str) -> pytest.MarkDecorator:
    """Marks a test that shows a known bug: strict, so a fix makes it fail until the marker goes."""
    return pytest.mark.xfail(strict=True, raises=KnownBugHit, reason=KNOWN_BUGS[bug_id].summary)
