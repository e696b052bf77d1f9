"""The records every part of the sidecar speaks.

One record type per fact: an `Exchange` is one finished request/response, a
`HealthResult` is one upstream health probe. They are built once, never
mutated, and handed to observers (metrics, rules, audit). This module imports
nothing from the package so that every part can depend on it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    """How an exchange ended, from the sidecar's point of view.

    The HTTP status says what the client was told; the outcome says why. It is
    a small closed set so that it can be a metric label.
    """

    COMPLETED = "completed"
    """The upstream answered and the whole response reached the client."""
    CLIENT_CLOSED = "client_closed"
    """The client went away before the response was complete (nginx's 499)."""
    REJECTED = "rejected"
    """The sidecar refused the request itself (a limit, a malformed request)."""
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    """No connection to the upstream could be made (502)."""
    UPSTREAM_TIMEOUT = "upstream_timeout"
    """The upstream did not answer, or stalled mid-answer, past a timeout."""
    UPSTREAM_ERROR = "upstream_error"
    """The upstream broke the protocol or closed mid-answer."""
    ABORTED = "aborted"
    """The sidecar cut the exchange short itself (drain timeout at shutdown)."""


def well_formed(value: str | None) -> str | None:
    """`value` with lone surrogates replaced by U+FFFD.

    Header bytes that are not UTF-8 reach Python as lone surrogates
    (surrogateescape), and so does a JSON string escape like "\\ud800". Such a
    string cannot be encoded: a metric label or an audit record holding one
    breaks every later scrape or bulk request. Records keep only text that
    encodes; ASCII, the common case, is returned as it is.
    """
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made the request. Anonymous until authentication is configured."""

    tenant: str | None = None
    user: str | None = None
    tier: str | None = None
    auth_method: str = "none"
    """none, api_key or jwt."""
    credential_id: str | None = None
    """The API key's id or the JWT's `jti`: names the credential, never holds it."""

    @property
    def is_anonymous(self) -> bool:
        return self.auth_method == "none"


ANONYMOUS = Principal()


class TokenSource(enum.StrEnum):
    """Where a token count came from."""

    REPORTED = "reported"
    """The model server said so (`usage`, `eval_count`, `details.generated_tokens`)."""
    COUNTED = "counted"
    """Counted from content-bearing stream chunks (one token per chunk, as vLLM, TGI,
    llama.cpp and Ollama stream); approximate when a server batches tokens."""
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class GenAiCall:
    """What a model call through the proxy asked for and got, as far as the bodies said."""

    protocol: str
    """Wire protocol recognised: openai, kserve, tgi or ollama."""
    operation: str
    """OpenTelemetry gen_ai.operation.name: chat, text_completion, embeddings, or predict."""
    request_model: str | None
    response_model: str | None
    stream: bool
    input_tokens: int | None
    output_tokens: int | None
    input_token_source: TokenSource
    output_token_source: TokenSource
    finish_reasons: tuple[str, ...]
    time_to_first_token_s: float | None
    """From the start of the request to the first content-bearing chunk (streams only)."""
    time_per_output_token_s: float | None
    """(duration - time to first token) / (output tokens - 1), for streams of 2+ tokens."""
    content_chunks: int
    max_chunk_gap_s: float | None
    """Longest silence between two content-bearing chunks."""
    parse_error: str | None
    """Why (part of) a body could not be read; the bytes passed through untouched regardless."""


@dataclass(frozen=True, slots=True)
class BodyContent:
    """What the proxy kept of the bodies, when the audit asks for it (`audit.content`)."""

    request_sha256: str | None = None
    response_sha256: str | None = None
    """Digest of the response body as relayed to the client."""
    request_head: bytes | None = None
    response_head: bytes | None = None
    truncated: bool = False
    """A head was cut at the configured cap."""


@dataclass(frozen=True, slots=True)
class GpuUsage:
    """What one request cost the GPUs it ran on: its share of their busy time and energy."""

    gpu_seconds: float
    """Share of the GPUs' busy time (utilisation x wall time), summed over GPUs."""
    energy_joules: float
    """Share of the energy the GPUs drew while the request was in flight (idle power subtracted when configured)."""
    cost_local: float | None = None
    """Electricity plus amortised hardware, in the configured currency."""
    cost_cloud_equivalent: float | None = None
    """What the same tokens would cost at the configured cloud prices."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request through the proxy and how it ended.

    Durations are seconds on a monotonic clock, measured from the moment the
    sidecar began handling the request; `started_at` is the wall-clock time of
    that moment (Unix seconds, UTC), for records that must be placed in time.
    """

    request_id: str
    started_at: float
    # Request, as the client sent it. Method, path, query, host and HTTP version are empty when
    # the HTTP parser refused the request before handing its request line on (a 431, say).
    method: str
    path: str
    query: str
    scheme: str
    host: str
    """The Host header as sent (with its port, if any)."""
    http_version: str
    client_address: str | None
    user_agent: str | None
    request_content_type: str | None
    request_body_bytes: int
    # Response, as the client received it.
    status: int
    response_content_type: str | None
    response_body_bytes: int
    response_chunks: int
    # How it ended.
    outcome: Outcome
    error_type: str | None
    error_message: str | None
    # Timings (seconds since the sidecar started handling the request).
    duration_s: float
    upstream_response_start_s: float | None
    """Response headers received from the upstream; None if none arrived."""
    first_byte_s: float | None
    """Response headers written to the client; None if none were."""
    proxy_overhead_s: float
    """Time spent inside the sidecar itself: accept to upstream call, upstream headers to
    client headers, and each chunk's arrival-to-written time (which includes waiting on a
    slow client's backpressure)."""
    # Upstream.
    upstream: str
    upstream_status: int | None
    # Who, and where in a trace.
    principal: Principal = ANONYMOUS
    route: str | None = None
    """Low-cardinality route template (OpenTelemetry http.route) when the path is a known one."""
    gen_ai: GenAiCall | None = None
    """Set for requests recognised as model calls."""
    trace_id: str | None = None
    span_id: str | None = None
    trace_sampled: bool = False
    """Whether the trace is being kept (exported) by the sidecar or a caller upstream of it."""
    content: BodyContent | None = None
    """Body digests or heads, only when the audit keeps them."""
    usage: GpuUsage | None = None
    """GPU time, energy and cost attributed to this request, when GPU metrics are on."""
    client_port: int | None = None
    """Port of the peer that connected, beside `client_address`."""

    @property
    def is_server_error(self) -> bool:
        """True when the exchange counts against availability: 5xx or a timeout."""
        return self.status >= 500 or self.outcome is Outcome.UPSTREAM_TIMEOUT


class HealthState(enum.StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class HealthResult:
    """One active health probe of the upstream and the state it left behind."""

    at: float
    """Wall-clock time of the probe (Unix seconds)."""
    ok: bool
    status: int | None
    latency_s: float
    error: str | None
    state: HealthState
    consecutive_successes: int
    consecutive_failures: int
    changed: bool
    """True when this probe moved the state (e.g. up -> down)."""


class GpuState(enum.StrEnum):
    """Whether a GPU could be read, from the collector's point of view."""

    OK = "ok"
    LOST = "lost"
    """NVML_ERROR_GPU_IS_LOST: fallen off the bus; needs a reset or a reboot."""
    UNAVAILABLE = "unavailable"
    """NVML could not be loaded or initialised (no driver, driver being reloaded)."""
    STALE = "stale"
    """The source stopped answering or its values stopped changing (dcgm-exporter down, a hung call)."""


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    """Host PID of a process using the GPU."""
    used_memory_bytes: int | None
    sm_utilization: float | None
    """Percent of the SMs this process kept busy over the last sample period, where the driver tells."""


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of one GPU (or MIG instance), under dcgm-exporter's field names.

    `fields` maps a DCGM field name (`DCGM_FI_DEV_GPU_UTIL`, `DCGM_FI_DEV_POWER_USAGE`,
    `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, ...) to its value in dcgm-exporter's unit; a field
    the GPU or driver does not support is absent, never zero.
    """

    at: float
    """Wall-clock time of the reading (Unix seconds)."""
    source: str
    """nvml or dcgm-exporter."""
    gpu: str
    """GPU index as dcgm-exporter labels it ("0", "1", ...)."""
    uuid: str
    pci_bus_id: str
    device: str
    """nvidia0, nvidia1, ..."""
    model_name: str
    hostname: str
    state: GpuState
    fields: Mapping[str, float]
    gpu_instance_profile: str | None = None
    """MIG profile (GPU_I_PROFILE), e.g. 1g.10gb; None without MIG."""
    gpu_instance_id: str | None = None
    processes: tuple[GpuProcess, ...] = ()
    driver_version: str = ""
    """NVIDIA driver version (DCGM_FI_DRIVER_VERSION); empty when unknown."""
    error: str | None = None
    """Why state is not ok, or which reads failed."""
    simulated: bool = False
    """Read from a simulated GPU (gpu.nvml.simulate), not from hardware."""


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """Something that happened to a GPU: an XID error, the GPU lost, NVML gone or back."""

    at: float
    kind: str
    """xid, gpu_lost, nvml_unavailable, driver_reloaded, recovered, read_timeout, stale."""
    gpu: str | None
    uuid: str | None
    message: str
    xid: int | None = None
