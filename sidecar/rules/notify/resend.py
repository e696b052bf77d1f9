"""Which alerts go to the Alertmanagers, and when: Prometheus's `needsSending` and `sendAlerts`
(rules/alerting.go).

Pending alerts are never sent. A firing alert goes out when it never has, then again once
`resend_delay` has passed (strictly: `last_sent + resend_delay < now`, Go's `Before`). A resolved
alert goes out as soon as its resolution has not been sent, then every `resend_delay` while the
engine keeps it. "Sent" means handed to the senders, whatever became of the POST. A firing alert's
endsAt is `now + 4 x max(resend_delay, interval)` (ValidUntil): Alertmanager resolves it by itself
if two evaluations or sends in a row go missing.

Unlike Prometheus, the schedule survives a restart (`dump`/`load`), so a restart does not resend
everything at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.rules.alert import Alert, AlertState
from sidecar.rules.notify.payload import Fingerprinted, postable_alert
from sidecar.rules.notify.state import mapping_at, seconds_at


@dataclass(slots=True)
class _Sent:
    active_at: float
    """Which instance of the alert was sent: a resolved alert that fires again is a new one."""
    last_sent_at: float


class ResendSchedule:
    """When each alert last went to the Alertmanagers, and which alerts are due now."""

    def __init__(self, resend_delay: float, external_url: str) -> None:
        self._resend_delay = resend_delay
        self._external_url = external_url
        self._sent: dict[str, _Sent] = {}

    def due(self, alerts: Sequence[Fingerprinted], now: float, interval_s: float) -> list[dict[str, Any]]:
        """The API v2 alerts to send at `now`, marking them sent; forgets alerts no longer listed."""
        valid_until = now + 4 * max(self._resend_delay, interval_s)
        due: list[dict[str, Any]] = []
        listed: set[str] = set()
        for fingerprint, alert in alerts:
            if alert.state is AlertState.PENDING or alert.fired_at is None:
                continue
            listed.add(fingerprint)
            sent = self._sent.get(fingerprint)
            last_sent = sent.last_sent_at if sent is not None and sent.active_at == alert.active_at else None
            if not self._needs_sending(alert, last_sent, now):
                continue
            self._sent[fingerprint] = _Sent(alert.active_at, now)
            resolved = alert.state is AlertState.RESOLVED and alert.resolved_at is not None
            ends_at = alert.resolved_at if resolved and alert.resolved_at is not None else valid_until
            due.append(postable_alert(alert, ends_at=ends_at, external_url=self._external_url))
        for fingerprint in self._sent.keys() - listed:
            del self._sent[fingerprint]
        return due

    def _needs_sending(self, alert: Alert, last_sent: float | None, now: float) -> bool:
        if last_sent is None:
            return True
        if alert.state is AlertState.RESOLVED and alert.resolved_at is not None and alert.resolved_at > last_sent:
            return True
        return last_sent + self._resend_delay < now

    def dump(self) -> dict[str, Any]:
        return {fp: {"active_at": s.active_at, "last_sent_at": s.last_sent_at} for fp, s in self._sent.items()}

    def load(self, data: Mapping[str, Any], where: str) -> None:
        sent: dict[str, _Sent] = {}
        for fingerprint, entry in mapping_at(data, where).items():
            entry = mapping_at(entry, f"{where}.{fingerprint}")
            sent[fingerprint] = _Sent(
                seconds_at(entry.get("active_at"), f"{where}.{fingerprint}.active_at"),
                seconds_at(entry.get("last_sent_at"), f"{where}.{fingerprint}.last_sent_at"),
            )
        self._sent = sent
