"""The JSON the receivers get, byte for byte where it matters: Alertmanager's API v2 alerts and the
webhook message (version 4) Alertmanager's webhook notifier posts.

Only formatting lives here; which alerts go out, and when, is decided elsewhere. Where Alertmanager's
Go code has an observable quirk (the receiver name passed through `regexp.QuoteMeta`, Go's
`strconv.Quote` in the group key, RFC 3339 with trailing zeros trimmed, the sort order of alerts)
it is reproduced, so that a receiver written against Alertmanager sees no difference.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sidecar.rules.alert import Alert, AlertState

WEBHOOK_VERSION = "4"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
"""How Go marshals `time.Time{}`: the endsAt of a firing alert in a webhook message."""
ROOT_ROUTE_KEY = "{}"
"""Alertmanager's key for a route without matchers (the root route): `Matchers.String()` of none."""
GROUP_BY_ALL = "..."

Fingerprinted = tuple[str, Alert]
"""An alert with its fingerprint, computed once per evaluation (FNV-1a in Python is not free)."""

_QUOTE_META = re.compile(r"([\\.+*?()|\[\]{}^$])")
_NEEDS_NO_ESCAPE = re.compile(r'[ !#-\[\]-~]*')
"""Printable ASCII but for the quote and the backslash: strconv.Quote leaves such text as it is."""
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               '"': '\\"', "\\": "\\\\"}  # fmt: skip


def fingerprinted(alerts: Iterable[Alert]) -> list[Fingerprinted]:
    return [(alert.fingerprint, alert) for alert in alerts]


# --- times ---------------------------------------------------------------------------------------


def unix_millis(seconds: float) -> int:
    """Milliseconds since the epoch, truncated as Go's `Format` truncates (no rounding up).

    Rounding to microseconds first keeps 1.123 (stored as 1.12299999...) at 1123.
    """
    return round(seconds * 1_000_000) // 1000


def rfc3339_millis(seconds: float) -> str:
    """`2024-05-01T12:00:00.120Z`: what Prometheus posts (go-openapi's strfmt.DateTime, always 3 digits)."""
    millis = unix_millis(seconds)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"


def rfc3339_go(seconds: float) -> str:
    """`2024-05-01T12:00:00.12Z`: how Alertmanager writes back a time it received with milliseconds
    (Go's `time.Time` JSON, RFC 3339 with trailing zeros of the fraction trimmed)."""
    millis = unix_millis(seconds)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    fraction = f"{millis % 1000:03d}".rstrip("0")
    return f"{moment:%Y-%m-%dT%H:%M:%S}{'.' + fraction if fraction else ''}Z"


def generator_url(external_url: str, alertname: str) -> str:
    """Where a receiver links back to: the sidecar's status page, opened at this alert."""
    return f"{external_url.rstrip('/')}/?alert={quote(alertname, safe='')}"


# --- Alertmanager API v2 ---------------------------------------------------------------------------


def postable_alert(alert: Alert, *, ends_at: float, external_url: str) -> dict[str, Any]:
    """One element of the list POSTed to `/api/v2/alerts`, as Prometheus's notifier builds it:
    startsAt is when the alert fired, endsAt when it resolved or, while firing, how long it stays
    valid without a resend (Prometheus's ValidUntil)."""
    assert alert.fired_at is not None, "pending alerts are never sent"
    return {
        "labels": dict(sorted(alert.labels.items())),
        "annotations": dict(sorted(alert.annotations.items())),
        "startsAt": rfc3339_millis(alert.fired_at),
        "endsAt": rfc3339_millis(ends_at),
        "generatorURL": generator_url(external_url, alert.name),
    }


# --- grouping ------------------------------------------------------------------------------------


def go_quote(text: str) -> str:
    """Go's `strconv.Quote`: printable characters as they are, others as Go escapes."""
    if _NEEDS_NO_ESCAPE.fullmatch(text):
        return f'"{text}"'
    out = ['"']
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():  # Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols, ' '
            out.append(char)
        else:
            code = ord(char)
            if code < 0x20 or code == 0x7F:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def label_set_string(labels: Mapping[str, str]) -> str:
    """prometheus/common `LabelSet.String()`: `{alertname="X", severity="y"}`, names sorted."""
    return "{" + ", ".join(f"{name}={go_quote(labels[name])}" for name in sorted(labels)) + "}"


def group_labels(labels: Mapping[str, str], group_by: Sequence[str]) -> dict[str, str]:
    """The labels that make an alert's group; a `group_by` label the alert lacks is left out,
    as Alertmanager's `getGroupLabels` does."""
    if GROUP_BY_ALL in group_by:
        return dict(sorted(labels.items()))
    return {name: labels[name] for name in sorted(group_by) if name in labels}


def group_key(labels: Mapping[str, str], route_key: str = ROOT_ROUTE_KEY) -> str:
    """Alertmanager's `aggrGroup.GroupKey()`: `<route key>:<group labels>`."""
    return f"{route_key}:{label_set_string(labels)}"


# --- webhook message -----------------------------------------------------------------------------


def _labels_before(left: Mapping[str, str], right: Mapping[str, str]) -> bool:
    """prometheus/common `LabelSet.Before`: fewer labels first, then by sorted names and values."""
    if len(left) != len(right):
        return len(left) < len(right)
    for name in sorted([*left, *right]):
        if name not in left:
            return True
        if name not in right:
            return False
        if left[name] != right[name]:
            return left[name] < right[name]
    return False


def _alert_less(left: Alert, right: Alert) -> bool:
    """Alertmanager's `AlertSlice.Less`: by job, then instance (alerts lacking one go last), then labels."""
    for name in ("job", "instance"):
        a, b = left.labels.get(name), right.labels.get(name)
        if a is None and b is None:
            continue
        if a is None:
            return False
        if b is None:
            return True
        if a != b:
            return a < b
    return _labels_before(left.labels, right.labels)


def _compare(left: Fingerprinted, right: Fingerprinted) -> int:
    return -1 if _alert_less(left[1], right[1]) else 1 if _alert_less(right[1], left[1]) else 0


def sorted_as_alertmanager(alerts: Iterable[Fingerprinted]) -> list[Fingerprinted]:
    """The order of alerts in a notification (`sort.Stable(alertsSlice)` in the dispatcher's flush)."""
    return sorted(alerts, key=functools.cmp_to_key(_compare))


def _common(mappings: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not mappings:
        return {}
    common = dict(mappings[0])
    for other in mappings[1:]:
        common = {key: value for key, value in common.items() if other.get(key) == value}
    return dict(sorted(common.items()))


def webhook_alert(fingerprint: str, alert: Alert, external_url: str) -> dict[str, Any]:
    assert alert.fired_at is not None, "pending alerts are never notified"
    resolved = alert.state is AlertState.RESOLVED and alert.resolved_at is not None
    return {
        "status": "resolved" if resolved else "firing",
        "labels": dict(sorted(alert.labels.items())),
        "annotations": dict(sorted(alert.annotations.items())),
        "startsAt": rfc3339_go(alert.fired_at),
        # The dispatcher zeroes EndsAt of alerts still firing ("don't resolve as time moves forward").
        "endsAt": rfc3339_go(alert.resolved_at) if resolved and alert.resolved_at is not None else GO_ZERO_TIME,
        "generatorURL": generator_url(external_url, alert.name),
        "fingerprint": fingerprint,
    }


def webhook_message(
    alerts: Sequence[Fingerprinted],
    *,
    receiver: str,
    key: str,
    labels: Mapping[str, str],
    external_url: str,
    max_alerts: int = 0,
) -> dict[str, Any]:
    """Alertmanager's webhook `Message`: `template.Data` plus version, groupKey and truncatedAlerts.

    `alerts` are in notification order; status and the common labels are computed over the alerts
    that remain after truncation, as Alertmanager computes them. Keys are in the order Go writes them.
    """
    truncated = 0
    if max_alerts and len(alerts) > max_alerts:
        alerts, truncated = alerts[:max_alerts], len(alerts) - max_alerts
    entries = [webhook_alert(fingerprint, alert, external_url) for fingerprint, alert in alerts]
    return {
        "receiver": _QUOTE_META.sub(r"\\\1", receiver),  # template.Data passes it through regexp.QuoteMeta
        "status": "firing" if any(entry["status"] == "firing" for entry in entries) else "resolved",
        "alerts": entries,
        "groupLabels": dict(sorted(labels.items())),
        "commonLabels": _common([alert.labels for _, alert in alerts]),
        "commonAnnotations": _common([alert.annotations for _, alert in alerts]),
        "externalURL": external_url,
        "version": WEBHOOK_VERSION,
        "groupKey": key,
        "truncatedAlerts": truncated,
    }
