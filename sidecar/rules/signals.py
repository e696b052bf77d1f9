"""What a rule can watch: each signal's meaning, unit, shape and source, and how an Exchange counts.

The same definitions serve both evaluators: the in-process engine (from
Exchanges, health results, GPU samples and audit readings) and the exported
Prometheus rules (from the series on /metrics). Where the two could disagree,
the definition here is written so that they cannot:

- a bad request is one the service failed, never one a client got wrong
  (`BadEvents`): by default a 5xx answer or an upstream failure whatever its
  status (a stream broken off mid-answer keeps its 200), but not the sidecar's
  own refusals of bad requests (a 501 for a transfer coding it does not
  relay) nor a client that went away. Both evaluators read it from the status
  and the error type (`http_response_status_code` and `error_type` on
  `http_server_request_duration_seconds`); the outcome of each error type is
  `outcome_of_error_type`;
- latency quantiles come from the histograms' own buckets
  (`sidecar.buckets`), interpolated as Prometheus's `histogram_quantile` does;
- a latency SLO's threshold must be one of those bucket bounds, so "good"
  is the same `le` bucket in both.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sidecar.buckets import HTTP_DURATION_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS
from sidecar.config import DEFAULT_BAD_OUTCOMES, DEFAULT_BAD_STATUSES, DEFAULT_GOOD_OUTCOMES, DEFAULT_GOOD_REFUSALS
from sidecar.exchange import Exchange, GpuSample, GpuState, Outcome


class Shape(enum.StrEnum):
    RATE = "rate"
    """Events per second over the window."""
    RATIO = "ratio"
    """Bad over total over the window, 0 to 1; absent while the window holds no requests."""
    QUANTILE = "quantile"
    """A quantile of a latency histogram over the window; absent while it holds no observations."""
    COUNT = "count"
    """Events within the window."""
    GAUGE = "gauge"
    """A reading; the rule's `aggregate` (last, max, min, avg) over the window."""


class Source(enum.StrEnum):
    EXCHANGES = "exchanges"
    HEALTH = "health"
    GPU = "gpu"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    shape: Shape
    source: Source
    unit: str
    description: str
    per_gpu: bool = False
    """One value per GPU, labelled `gpu` and `UUID` (one alert per GPU)."""


_SIGNALS = (
    Signal("request_rate", Shape.RATE, Source.EXCHANGES, "requests/s", "Requests finished per second."),
    Signal("error_ratio", Shape.RATIO, Source.EXCHANGES, "ratio",
           "Share of requests the service failed (not the sidecar's refusals of bad requests, nor clients that "
           "went away); `error_class` narrows it to 5xx answers, upstream timeouts or an unreachable upstream."),
    Signal("request_duration_quantile", Shape.QUANTILE, Source.EXCHANGES, "seconds",
           "A quantile of request duration (first byte in to last byte out), every request."),
    Signal("ttft_quantile", Shape.QUANTILE, Source.EXCHANGES, "seconds",
           "A quantile of time to first token, successful model calls that streamed tokens."),
    Signal("tpot_quantile", Shape.QUANTILE, Source.EXCHANGES, "seconds",
           "A quantile of time per output token after the first, successful model calls."),
    Signal("rate_limit_rejections", Shape.COUNT, Source.EXCHANGES, "requests",
           "Requests refused by the sidecar's rate limits (error type `rate_limited`)."),
    Signal("upstream_up", Shape.GAUGE, Source.HEALTH, "bool",
           "1 while the active health check holds the upstream up, 0 while down; absent until decided."),
    Signal("upstream_consecutive_failures", Shape.GAUGE, Source.HEALTH, "probes",
           "Failed health probes in a row (0 after a success)."),
    Signal("gpu_temperature", Shape.GAUGE, Source.GPU, "celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP).",
           per_gpu=True),
    Signal("gpu_memory_used_percent", Shape.GAUGE, Source.GPU, "percent",
           "Framebuffer memory used: FB_USED / (FB_USED + FB_FREE) x 100.", per_gpu=True),
    Signal("gpu_power_watts", Shape.GAUGE, Source.GPU, "watts", "Power draw (DCGM_FI_DEV_POWER_USAGE).",
           per_gpu=True),
    Signal("gpu_throttled", Shape.GAUGE, Source.GPU, "bool",
           "1 while clocks are held down by a thermal, hardware-slowdown or power-brake reason (not the routine "
           "software power cap).", per_gpu=True),
    Signal("gpu_xid_errors", Shape.COUNT, Source.GPU, "errors", "XID errors reported by the driver.",
           per_gpu=True),
    Signal("gpu_lost", Shape.GAUGE, Source.GPU, "bool", "1 while the GPU is lost (fallen off the bus).",
           per_gpu=True),
    Signal("audit_spool_fill_ratio", Shape.GAUGE, Source.AUDIT, "ratio", "Audit spool bytes used / max_size."),
    Signal("audit_events_dropped", Shape.COUNT, Source.AUDIT, "events",
           "Audit events lost (spool full under fail_open, or unencodable)."),
    Signal("audit_dead_letters", Shape.COUNT, Source.AUDIT, "events",
           "Audit events the sink refused for good (kept in the dead-letter file)."),
    Signal("audit_sink_up", Shape.GAUGE, Source.AUDIT, "bool",
           "0 once audit records have waited `audit.sink_down_after` with none delivered in that time, whatever "
           "the sink answers; 1 otherwise."),
    Signal("audit_delivery_lag_seconds", Shape.GAUGE, Source.AUDIT, "seconds",
           "How long the oldest audit record not yet delivered has waited; 0 when none waits."),
)  # fmt: skip

SIGNALS: Mapping[str, Signal] = MappingProxyType({signal.name: signal for signal in _SIGNALS})

LATENCY_BUCKETS: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "request_duration": HTTP_DURATION_BUCKETS,
    "ttft": TTFT_BUCKETS,
    "tpot": TPOT_BUCKETS,
})  # fmt: skip
"""Each latency histogram's bucket upper bounds (without +Inf)."""

QUANTILE_SIGNALS: Mapping[str, str] = MappingProxyType(
    {"request_duration_quantile": "request_duration", "ttft_quantile": "ttft", "tpot_quantile": "tpot"}
)
"""Quantile signal -> the latency histogram it reads."""


RATE_LIMITED = "rate_limited"
"""The error type the proxy gives requests its rate limits refuse."""

# Clock event reasons that mean trouble: HW slowdown (0x8), SW thermal (0x20), HW thermal (0x40) and
# HW power brake (0x80). The SW power cap (0x4) holds clocks down routinely under full load.
THROTTLE_REASONS_MASK = 0x8 | 0x20 | 0x40 | 0x80
THROTTLE_REASON_BITS = (0x8, 0x20, 0x40, 0x80)


# --- bad requests ------------------------------------------------------------------------------

OUTCOME_ERROR_TYPES: Mapping[Outcome, str] = MappingProxyType({
    Outcome.COMPLETED: "",
    Outcome.CLIENT_CLOSED: "client_closed",
    Outcome.UPSTREAM_UNAVAILABLE: "upstream_connect_error",
    Outcome.UPSTREAM_TIMEOUT: "upstream_.*timeout",
    Outcome.UPSTREAM_ERROR: "upstream_.*",
    Outcome.ABORTED: "drain_timeout|client_write_timeout",
})  # fmt: skip
"""Each outcome's error types (`error_type`, a regular expression matched whole, as PromQL matches),
as the proxy gives them. Read in this order, first match wins: upstream_error is every `upstream_*`
type that is not one of the two before it, and rejected is every error type not listed (the
sidecar's refusals: bad_request, unsupported_transfer_coding, rate_limited, unauthenticated, ...).
The metrics carry the error type, not the outcome; the engine reads the outcome, and
tests/rules/test_signals.py holds the two to the same answer for every error type the proxy gives
(tests/support/endings.py lists them)."""
_OUTCOME_ORDER = (Outcome.COMPLETED, Outcome.CLIENT_CLOSED, Outcome.UPSTREAM_UNAVAILABLE, Outcome.UPSTREAM_TIMEOUT,
                  Outcome.UPSTREAM_ERROR, Outcome.ABORTED)  # fmt: skip


def outcome_of_error_type(error_type: str | None) -> Outcome:
    """The outcome an exchange with this error type (None or "": none) ended with."""
    text = error_type or ""
    for outcome in _OUTCOME_ORDER:
        if re.fullmatch(OUTCOME_ERROR_TYPES[outcome], text):
            return outcome
    return Outcome.REJECTED


def status_codes(patterns: Iterable[str | int]) -> frozenset[int]:
    """The statuses that `503`, `"503"` or `"5xx"` name."""
    codes: set[int] = set()
    for pattern in patterns:
        text = str(pattern).lower()
        if text.endswith("xx"):
            first = int(text[0]) * 100
            codes.update(range(first, first + 100))
        else:
            codes.add(int(text))
    return frozenset(codes)


def status_regex(codes: Iterable[int]) -> str:
    """A regular expression matching exactly `codes` as text: whole classes as `5..`, others listed."""
    wanted = set(codes)
    parts = []
    for first in range(100, 600, 100):
        block = set(range(first, first + 100))
        if block <= wanted:
            parts.append(f"{first // 100}..")
            wanted -= block
    parts.extend(str(code) for code in sorted(wanted))
    return "|".join(sorted(parts, key=lambda part: (part.replace(".", "0"), part)))


@dataclass(frozen=True, slots=True)
class BadEvents:
    """Which finished requests count as bad, read in this order: one that ended with one of
    `good_outcomes` is not; one that ended with one of `outcomes` is, whatever its status; a refusal
    by the sidecar itself (outcome rejected) with one of `good_refusals` is not; any other is bad when
    answered with one of `statuses`.

    `BadEvents.build(statuses=["5xx"])`; `events.is_bad(exchange)`."""

    statuses: frozenset[int] = frozenset()
    outcomes: frozenset[Outcome] = frozenset()
    good_refusals: frozenset[int] = frozenset()
    good_outcomes: frozenset[Outcome] = frozenset()

    @classmethod
    def build(cls, *, statuses: Iterable[str | int] = (), outcomes: Iterable[str] = (),
              good_refusals: Iterable[str | int] = (), good_outcomes: Iterable[str] = ()) -> BadEvents:  # fmt: skip
        return cls(status_codes(statuses), frozenset(map(Outcome, outcomes)), status_codes(good_refusals),
                   frozenset(map(Outcome, good_outcomes)))  # fmt: skip

    def counts(self, status: int, outcome: Outcome) -> bool:
        """Whether a request answered `status` that ended with `outcome` is bad."""
        if outcome in self.good_outcomes:
            return False
        if outcome in self.outcomes:
            return True
        if outcome is Outcome.REJECTED and status in self.good_refusals:
            return False
        return status in self.statuses

    def is_bad(self, exchange: Exchange) -> bool:
        return self.counts(exchange.status, exchange.outcome)

    @property
    def key(self) -> str:
        """This classification in words that name it whatever order it was configured in (the
        column name of its counts in the rules state)."""
        return ";".join((
            f"statuses={status_regex(self.statuses)}",
            f"outcomes={','.join(sorted(self.outcomes))}",
            f"good_refusals={status_regex(self.good_refusals)}",
            f"good_outcomes={','.join(sorted(self.good_outcomes))}",
        ))  # fmt: skip


DEFAULT_BAD_EVENTS = BadEvents.build(
    statuses=DEFAULT_BAD_STATUSES, outcomes=DEFAULT_BAD_OUTCOMES, good_refusals=DEFAULT_GOOD_REFUSALS,
    good_outcomes=DEFAULT_GOOD_OUTCOMES,
)
"""What availability counts as bad unless an SLO says otherwise: the service's failures, not a client's."""

ERROR_CLASSES: Mapping[str, BadEvents] = MappingProxyType({
    "any": DEFAULT_BAD_EVENTS,
    "5xx": BadEvents(statuses=status_codes(["5xx"]), good_refusals=DEFAULT_BAD_EVENTS.good_refusals,
                     good_outcomes=DEFAULT_BAD_EVENTS.good_outcomes),
    "timeout": BadEvents(outcomes=frozenset({Outcome.UPSTREAM_TIMEOUT})),
    "upstream_down": BadEvents(outcomes=frozenset({Outcome.UPSTREAM_UNAVAILABLE})),
})  # fmt: skip
"""The error_ratio signal's `error_class`es: any failure of the service, its 5xx answers, upstream
timeouts, an unreachable upstream."""


def error_classes(exchange: Exchange) -> tuple[str, ...]:
    """The `error_class` values this exchange counts under (empty when it is no failure of the service)."""
    return tuple(name for name, events in ERROR_CLASSES.items() if events.is_bad(exchange))


def latency_observations(exchange: Exchange) -> list[tuple[str, float]]:
    """(histogram, seconds) pairs this exchange adds, under the conditions the metrics observe them."""
    observations = [("request_duration", exchange.duration_s)]
    call = exchange.gen_ai
    if call is not None:
        # As GenAiMetrics: token timings only for calls that ended without an error.
        failed = bool(exchange.error_type) or exchange.status >= 400
        if not failed and call.time_to_first_token_s is not None:
            observations.append(("ttft", call.time_to_first_token_s))
        if not failed and call.time_per_output_token_s is not None:
            observations.append(("tpot", call.time_per_output_token_s))
    return observations


def is_rate_limited(exchange: Exchange) -> bool:
    return exchange.error_type == RATE_LIMITED


def gpu_readings(sample: GpuSample) -> dict[str, float]:
    """The per-GPU gauge signals one sample gives (only those its fields allow)."""
    readings: dict[str, float] = {"gpu_lost": 1.0 if sample.state is GpuState.LOST else 0.0}
    if sample.state is not GpuState.OK:
        return readings
    fields = sample.fields
    temperature = fields.get("DCGM_FI_DEV_GPU_TEMP")
    if temperature is not None:
        readings["gpu_temperature"] = temperature
    used, free = fields.get("DCGM_FI_DEV_FB_USED"), fields.get("DCGM_FI_DEV_FB_FREE")
    if used is not None and free is not None and used + free > 0:
        readings["gpu_memory_used_percent"] = used / (used + free) * 100.0
    power = fields.get("DCGM_FI_DEV_POWER_USAGE")
    if power is not None:
        readings["gpu_power_watts"] = power
    reasons = fields.get("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", fields.get("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"))
    if reasons is not None:
        readings["gpu_throttled"] = 1.0 if int(reasons) & THROTTLE_REASONS_MASK else 0.0
    return readings
