"""The /metrics encoders: prometheus-client's, plus counters that keep their exact names.

    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(registry)

dcgm-exporter writes `# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter` above
samples of that very name. prometheus-client's Prometheus text encoder cannot: it
writes every counter family as `<name>_total`. A collector that wants
dcgm-exporter's form yields a counter family whose samples all carry the family's
own name (an exact-name counter), and these encoders write it:

- in the Prometheus text format, as dcgm-exporter does: `# TYPE <name> counter`
  above samples named `<name>`;
- in OpenMetrics, as `unknown` under the same names: OpenMetrics requires `_total`
  on every counter sample, and renaming the series would break every query
  written against them.

Every other family is written by prometheus-client, unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from prometheus_client import exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

Encoder = Callable[[Collector], bytes]

_OPENMETRICS = "application/openmetrics-text"


def choose_encoder(accept: str) -> tuple[Encoder, str]:
    """The encoder and content type for a scraper's Accept header, chosen as prometheus-client chooses."""
    encoder, content_type = exposition.choose_encoder(accept)
    if content_type.startswith(_OPENMETRICS):
        return partial(_openmetrics, encoder), content_type
    return partial(_prometheus_text, encoder), content_type


def is_exact_name_counter(family: Metric) -> bool:
    """A counter family whose samples are all named as the family is, with no `_total`."""
    return family.type == "counter" and bool(family.samples) and all(s.name == family.name for s in family.samples)


def _openmetrics(encoder: Encoder, registry: Collector) -> bytes:
    families, _ = _untyped(registry.collect())
    return encoder(_Families(families))


def _prometheus_text(encoder: Encoder, registry: Collector) -> bytes:
    families, retyped = _untyped(registry.collect())
    text = encoder(_Families(families))
    for name in retyped:
        # The text encoder writes an unknown family's type as `untyped`. A line that starts with
        # `# TYPE <name> ` can only be that family's own: HELP texts and label values escape newlines.
        text = text.replace(f"\n# TYPE {name} untyped\n".encode(), f"\n# TYPE {name} counter\n".encode(), 1)
    return text


def _untyped(families: Iterable[Metric]) -> tuple[list[Metric], list[str]]:
    """The families with each exact-name counter retyped `unknown`, and the names retyped."""
    served: list[Metric] = []
    retyped: list[str] = []
    for family in families:
        if is_exact_name_counter(family):
            family = copy.copy(family)  # the collector's family stays as it yielded it
            family.type = "unknown"
            retyped.append(family.name)
        served.append(family)
    return served, retyped


class _Families(Collector):
    """Families already collected, handed to an encoder."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
