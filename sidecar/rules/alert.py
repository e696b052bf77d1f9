"""An alert instance as Prometheus keeps one, and the change records the engine hands on.

One rule can have many alerts at once (one per GPU, say): an alert is a rule's
name plus a label set. States follow Prometheus: a condition that starts to
hold makes a pending alert (`active_at`); held for the rule's `for`, it fires
(`fired_at`); when it stops holding (and `keep_firing_for` has passed) it is
resolved (`resolved_at`) and kept a while so receivers hear of the resolution.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1
_SEPARATOR = 0xFF


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set (prometheus/common `LabelSet.Fingerprint`):
    FNV-1a 64 over the sorted names and values, each followed by byte 0xff; 16 hex digits.
    Labels with an empty value are left out, as Alertmanager removes them from every alert it
    receives (removeEmptyLabels) before fingerprinting it."""
    digest = _FNV_OFFSET
    for name in sorted(labels):
        if not labels[name]:
            continue
        for part in (name, labels[name]):
            for byte in part.encode():
                digest = ((digest ^ byte) * _FNV_PRIME) & _MASK
            digest = ((digest ^ _SEPARATOR) * _FNV_PRIME) & _MASK
    return f"{digest:016x}"


class AlertState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(slots=True)
class Alert:
    name: str
    """The rule's name, also `labels["alertname"]`."""
    labels: Mapping[str, str]
    """The full label set: alertname, severity, instance, external labels, the rule's own and the
    signal's (gpu, UUID for per-GPU signals; slo for burn-rate alerts)."""
    annotations: Mapping[str, str]
    """Rendered with the value at the last evaluation that held."""
    state: AlertState
    value: float
    active_at: float
    """When the condition started to hold (Unix seconds); kept across restarts."""
    fired_at: float | None = None
    resolved_at: float | None = None
    last_held_at: float = 0.0
    """The last evaluation at which the condition held."""
    keep_firing_since: float | None = None
    """The first evaluation at which a firing alert's condition no longer held (Prometheus's
    KeepFiringSince): it keeps firing while now - keep_firing_since < keep_firing_for. None while
    the condition holds."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    def snapshot(self) -> Alert:
        return replace(self)


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert moved from `previous` (None: it is new) to its current state at `at`."""

    alert: Alert
    """A snapshot, safe to keep."""
    previous: AlertState | None
    at: float
