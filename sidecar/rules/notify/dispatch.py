"""Grouping and deduplication for a webhook receiver, as Alertmanager's dispatcher and notification
log do them for a route without matchers. No I/O: it decides, `WebhookSender` delivers.

Alertmanager's behaviour, reproduced:

- An alert belongs to the group of its `group_by` label values (`...`: all its labels). A group is
  made by a firing alert; its first flush comes `group_wait` later, or at once if an alert in it
  started (fired) more than `group_wait` ago; after that it flushes every `group_interval`.
- At each flush the notification log decides (`DedupStage.needsUpdate`): notify when a firing
  alert is new to the receiver; when everything resolved and the receiver had been told of firing
  alerts; when a resolved alert is new and `send_resolved`; otherwise only once the last
  notification is older than `repeat_interval` (strictly, so with Alertmanager's timings a repeat
  lands on the first flush after `repeat_interval`).
- A notification enters the log only when delivered; an undelivered one is superseded by the
  group's next flush. Without `send_resolved`, resolved alerts are left out of the payload and a
  notification of only resolved alerts is logged without being sent.
- After a flush that completed, resolved alerts are removed from the group (unless they changed
  meanwhile) and an empty group is deleted. Prometheus re-sends resolved alerts while it keeps
  them, which puts them back; here the engine lists them every evaluation, with the same effect.
- Log entries expire `2 x repeat_interval` after they were written.

Differences, because the sidecar is its own alert source: alerts come every evaluation instead of
every resend_delay (so group timing has the evaluation interval's granularity), and a firing alert
that disappears from the engine's list (its rule was removed) is resolved at once instead of when
its endsAt passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sidecar.config import WebhookConfig
from sidecar.rules.alert import Alert, AlertState
from sidecar.rules.notify.payload import (
    Fingerprinted,
    group_key,
    group_labels,
    sorted_as_alertmanager,
    webhook_message,
)
from sidecar.rules.notify.state import fingerprints_at, mapping_at, seconds_at


@dataclass(frozen=True, slots=True)
class LogEntry:
    """What the receiver was last told about a group (an nflog entry)."""

    timestamp: float
    firing: frozenset[str]
    resolved: frozenset[str]


@dataclass(frozen=True, slots=True)
class GroupNotification:
    """One flush's notification for one group."""

    key: str
    payload: dict[str, Any]
    """The webhook message (empty when nothing is to be POSTed)."""
    firing: frozenset[str]
    resolved: frozenset[str]
    resolved_at: tuple[tuple[str, float], ...]
    """(fingerprint, resolved_at) of the resolved alerts flushed, to remove them once delivered."""

    @property
    def alert_count(self) -> int:
        return len(self.payload.get("alerts", ()))


@dataclass(slots=True)
class _Group:
    key: str
    labels: dict[str, str]
    next_flush: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    has_flushed: bool = False


def _same(kept: Alert, alert: Alert) -> bool:
    """Whether `alert` says what the snapshot `kept` says (its value aside, which no payload shows)."""
    return (
        kept.state is alert.state
        and kept.fired_at == alert.fired_at
        and kept.resolved_at == alert.resolved_at
        and kept.annotations == alert.annotations
    )


class WebhookDispatcher:
    def __init__(self, config: WebhookConfig, *, external_url: str, clock: Callable[[], float]) -> None:
        self.config = config
        self._external_url = external_url
        self._clock = clock
        self._groups: dict[str, _Group] = {}
        self._log: dict[str, LogEntry] = {}
        self._keys: dict[str, tuple[str, dict[str, str]]] = {}
        """fingerprint -> (group key, group labels), for the alerts of the last update."""

    @property
    def group_keys(self) -> list[str]:
        return list(self._groups)

    def entry(self, key: str) -> LogEntry | None:
        return self._log.get(key)

    def update(self, alerts: Sequence[Fingerprinted], now: float) -> list[tuple[str, GroupNotification | None]]:
        """Take the engine's current alerts; returns, for every group whose flush is due, what to
        deliver (None: nothing, and whatever was still being delivered for it is superseded)."""
        config = self.config
        listed: dict[str, dict[str, Alert]] = {}
        labels_of: dict[str, dict[str, str]] = {}
        known_keys, keys = self._keys, {}
        for fingerprint, alert in alerts:
            if alert.state is AlertState.PENDING or alert.fired_at is None:
                continue
            if fingerprint in known_keys:
                key, labels = keys[fingerprint] = known_keys[fingerprint]
            else:
                labels = group_labels(alert.labels, config.group_by)
                key, _ = keys[fingerprint] = (group_key(labels), labels)
            listed.setdefault(key, {})[fingerprint] = alert
            labels_of.setdefault(key, labels)
        self._keys = keys

        for key, group in self._groups.items():
            present = listed.get(key, {})
            for fingerprint, kept in list(group.alerts.items()):
                if fingerprint not in present and kept.state is AlertState.FIRING:
                    group.alerts[fingerprint] = replace(kept, state=AlertState.RESOLVED, resolved_at=now)

        for key, members in listed.items():
            group = self._groups.get(key)
            if group is None:
                # A group of resolved alerts only would never notify (nothing firing to tell of).
                if not any(alert.state is AlertState.FIRING for alert in members.values()):
                    continue
                group = self._groups[key] = _Group(key, labels_of[key], now + config.group_wait)
            for fingerprint, alert in members.items():
                kept = group.alerts.get(fingerprint)
                if kept is None or not _same(kept, alert):
                    group.alerts[fingerprint] = alert.snapshot()  # the engine updates its alerts in place
                if not group.has_flushed and alert.fired_at is not None and alert.fired_at + config.group_wait < now:
                    group.next_flush = min(group.next_flush, now)

        due: list[tuple[str, GroupNotification | None]] = []
        for key, group in list(self._groups.items()):
            if group.next_flush > now:
                continue
            following = group.next_flush + config.group_interval
            group.next_flush = following if following > now else now + config.group_interval
            group.has_flushed = True
            due.append((key, self._flush(group, now)))

        horizon = now - 2 * config.repeat_interval
        for key in [key for key, entry in self._log.items() if entry.timestamp < horizon]:
            del self._log[key]
        return due

    def delivered(self, notification: GroupNotification) -> None:
        """The receiver accepted `notification`: log it and let go of the resolved alerts it carried."""
        self._log[notification.key] = LogEntry(self._clock(), notification.firing, notification.resolved)
        self._forget_resolved(notification.key, notification.resolved_at)

    def _flush(self, group: _Group, now: float) -> GroupNotification | None:
        alerts = sorted_as_alertmanager(group.alerts.items())
        firing = frozenset(fp for fp, alert in group.alerts.items() if alert.state is AlertState.FIRING)
        resolved_at = tuple(
            (fp, alert.resolved_at or 0.0) for fp, alert in group.alerts.items() if alert.state is AlertState.RESOLVED
        )
        resolved = frozenset(fp for fp, _ in resolved_at)
        if not self._needs_update(self._log.get(group.key), firing, resolved, now):
            self._forget_resolved(group.key, resolved_at)
            return None
        if not self.config.send_resolved:
            alerts = [(fp, alert) for fp, alert in alerts if alert.state is AlertState.FIRING]
        if not alerts:
            # Alertmanager's RetryStage: nothing to send, but logged, so the firing alerts the
            # receiver heard of are cleared from the log.
            self.delivered(GroupNotification(group.key, {}, firing, resolved, resolved_at))
            return None
        payload = webhook_message(
            alerts,
            receiver=self.config.name,
            key=group.key,
            labels=group.labels,
            external_url=self._external_url,
            max_alerts=self.config.max_alerts,
        )
        return GroupNotification(group.key, payload, firing, resolved, resolved_at)

    def _needs_update(
        self, entry: LogEntry | None, firing: frozenset[str], resolved: frozenset[str], now: float
    ) -> bool:
        if entry is None:
            return bool(firing)
        if not firing <= entry.firing:
            return True
        if not firing:
            # Fired and resolved between two flushes: the receiver never heard of them.
            return bool(entry.firing)
        if self.config.send_resolved and not resolved <= entry.resolved:
            return True
        return entry.timestamp < now - self.config.repeat_interval

    def _forget_resolved(self, key: str, resolved_at: Sequence[tuple[str, float]]) -> None:
        group = self._groups.get(key)
        if group is None:
            return
        for fingerprint, at in resolved_at:
            kept = group.alerts.get(fingerprint)
            # Only if it did not fire again meanwhile (Alertmanager's DeleteIfNotModified).
            if kept is not None and kept.state is AlertState.RESOLVED and (kept.resolved_at or 0.0) == at:
                del group.alerts[fingerprint]
        if not group.alerts:
            del self._groups[key]

    def dump(self) -> dict[str, Any]:
        return {
            key: {"timestamp": entry.timestamp, "firing": sorted(entry.firing), "resolved": sorted(entry.resolved)}
            for key, entry in self._log.items()
        }

    def restore(self, log: Mapping[str, LogEntry]) -> None:
        """Take the notification log saved before a restart (see `log_from_state`)."""
        self._log = dict(log)


def log_from_state(data: object, where: str) -> dict[str, LogEntry]:
    """A notification log from `WebhookDispatcher.dump()`'s output; ValueError names a bad key."""
    log: dict[str, LogEntry] = {}
    for key, entry in mapping_at(data, where).items():
        at = f"{where}[{key!r}]"
        entry = mapping_at(entry, at)
        log[key] = LogEntry(
            seconds_at(entry.get("timestamp"), f"{at}.timestamp"),
            fingerprints_at(entry.get("firing", []), f"{at}.firing"),
            fingerprints_at(entry.get("resolved", []), f"{at}.resolved"),
        )
    return log
