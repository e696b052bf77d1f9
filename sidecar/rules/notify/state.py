"""Checks for the notifier's saved state: a bad file is named, key by key, not half loaded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def mapping_at(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"notifier state: expected an object at {where}, got {type(value).__name__}")
    return value


def seconds_at(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"notifier state: expected a number (Unix seconds) at {where}, got {value!r}")
    return float(value)


def fingerprints_at(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"notifier state: expected a list of fingerprints at {where}, got {value!r}")
    return frozenset(value)
