"""A clock tests set by hand, for the parts that take a `clock` callable."""

from __future__ import annotations

T0 = 1_700_000_000.0
"""A round Unix time: a multiple of 10 s, 5 min and 1 h, so window slots start on it."""


class Clock:
    """Returns `now`; a test moves time by assigning or adding to it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
