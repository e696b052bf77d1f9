"""Alert notifications: Alertmanager's API v2 and receivers of Alertmanager's webhook payload.

`Notifier` is the one entry point; the modules are the stages, as in Alertmanager's packages:
`resend` (what Prometheus would send, and when), `alertmanager` (the sender per Alertmanager),
`dispatch` (grouping and deduplication per webhook), `webhook` (delivery with retries),
`payload` (the JSON), `stats` (counters for /metrics).
"""

from sidecar.rules.notify.notifier import Notifier
from sidecar.rules.notify.stats import LatencyHistogram, ReceiverStats

__all__ = ["LatencyHistogram", "Notifier", "ReceiverStats"]
