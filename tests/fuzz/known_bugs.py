"""Bugs the fuzzers found that are not fixed yet, so that fuzzing keeps looking for new ones.

A target's check calls `hit(bug_id, detail)` when an input runs into one of these (an
exception the bug is known to raise, or a property it is known to break). That raises
`KnownBugHit`: the hypothesis tests and the atheris harness run every check through
`tolerating_known_bugs`, which counts the hit and moves on, while each bug's reproducer (a
`bug-<id>-*` file in the corpus, or a test) runs the check plainly and is marked
`xfail(strict=True, raises=KnownBugHit)`.

When a fix lands, the reproducers start passing and their strict xfail fails the run: delete
the bug's entry here, drop the xfail markers, and rename its corpus files from `bug-<id>-...`
to `regression-<id>-...`, so they keep guarding the fix as ordinary seeds.

Nothing here imports the sidecar, so the atheris harness can import this module before it
starts instrumenting.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True)
class KnownBug:
    id: str
    target: str
    summary: str


KNOWN_BUGS: dict[str, KnownBug] = {}
"""Open bugs by id. Empty: the fourteen the fuzzers found (config loading and showing, trace
headers, request prefixes and their cost, stream text) are fixed; their reproducers are
`regression-*` seeds and plain tests now."""


class KnownBugHit(AssertionError):
    """An input ran into a bug listed in KNOWN_BUGS."""

    def __init__(self, bug_id: str, detail: str = "") -> None:
        bug = KNOWN_BUGS[bug_id]  # a KeyError here: the bug was fixed and its entry deleted
        super().__init__(f"known bug {bug_id}: {bug.summary}" + (f" [{detail}]" if detail else ""))
        self.bug_id = bug_id


def is_open(bug_id: str) -> bool:
    """Whether the bug is still listed; checks use it to skip inputs that would hang on it."""
    return bug_id in KNOWN_BUGS


def hit(bug_id: str, detail: str = "") -> None:
    """Report that the current input ran into `bug_id` (only while that bug is listed)."""
    if is_open(bug_id):
        raise KnownBugHit(bug_id, detail)


def raised_in(exc: BaseException, *path_parts: str) -> bool:
    """Whether any frame of `exc`'s traceback is in a file whose path contains one of `path_parts`."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(part in frame.filename.replace("\\", "/") for frame in frames for part in path_parts)


class Tally:
    """How often each known bug was hit (hypothesis reports it through `event`)."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}

    def add(self, bug_id: str) -> None:
        self.hits[bug_id] = self.hits.get(bug_id, 0) + 1


TALLY = Tally()


def tolerating_known_bugs(check: Callable[..., _T], *args: object, **kwargs: object) -> _T | None:
    """Run `check`; a KnownBugHit is counted and swallowed, anything else propagates."""
    try:
        return check(*args, **kwargs)
    except KnownBugHit as known:
        TALLY.add(known.bug_id)
        try:
            from hypothesis import event

            event(f"known bug {known.bug_id}")
        except Exception:  # outside a hypothesis test (atheris, corpus replay)
            pass
        return None
