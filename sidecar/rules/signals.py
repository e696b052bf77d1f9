"""What a rule can watch: each signal's meaning, unit, shape and source, and how an Exchange counts.

The same definitions serve both evaluators: the in-process engine (from
Exchanges, health results, GPU samples and audit readings) and the exported
Prometheus rules (from the series on /metrics). Where the two could disagree,
the definition here is written so that they cannot:

- a server-side failure is a 5xx answer, or an upstream failure whatever its
  status (a stream broken off mid-answer keeps its 200): `is_server_error`,
  the same test as `http_response_status_code=~"5.."` plus
  `error_type=~"upstream_.*"` on `http_server_request_duration_seconds`;
- latency quantiles come from the histograms' own buckets
  (`sidecar.buckets`), interpolated as Prometheus's `histogram_quantile` does;
- a latency SLO's threshold must be one of those bucket bounds, so "good"
  is the same `le` bucket in both.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sidecar.buckets import HTTP_DURATION_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS
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
           "Share of requests that failed server-side; `error_class` narrows it to 5xx answers, upstream "
           "timeouts or an unreachable upstream."),
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
    Signal("audit_sink_up", Shape.GAUGE, Source.AUDIT, "bool", "1 when the last delivery attempt reached the sink."),
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

ERROR_CLASSES = ("any", "5xx", "timeout", "upstream_down")

RATE_LIMITED = "rate_limited"
"""The error type the proxy gives requests its rate limits refuse."""

# Clock event reasons that mean trouble: HW slowdown (0x8), SW thermal (0x20), HW thermal (0x40) and
# HW power brake (0x80). The SW power cap (0x4) holds clocks down routinely under full load.
THROTTLE_REASONS_MASK = 0x8 | 0x20 | 0x40 | 0x80
THROTTLE_REASON_BITS = (0x8, 0x20, 0x40, 0x80)


def is_server_error(exchange: Exchange) -> bool:
    """A failure the service owns: a 5xx answer, or the upstream failing (even after a 200 was sent)."""
    return exchange.status >= 500 or (exchange.error_type or "").startswith("upstream_")


def error_classes(exchange: Exchange) -> tuple[str, ...]:
    """The `error_class` values this exchange counts under (empty when it is no server-side failure)."""
    if not is_server_error(exchange):
        return ()
    classes = ["any"]
    if exchange.status >= 500:
        classes.append("5xx")
    if exchange.outcome is Outcome.UPSTREAM_TIMEOUT:
        classes.append("timeout")
    elif exchange.outcome is Outcome.UPSTREAM_UNAVAILABLE:
        classes.append("upstream_down")
    return tuple(classes)


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
