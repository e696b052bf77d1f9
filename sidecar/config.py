"""One typed configuration: YAML file, then environment, then command-line flags.

Precedence, lowest first: built-in defaults, the YAML file, environment
variables, command-line flags. Environment variables are named after the key
path: `SIDECAR_` + the path's keys joined by `__`, in upper case, e.g.
`SIDECAR_UPSTREAM__URL` sets `upstream.url` and `SIDECAR_DATA_DIR` sets
`data_dir`. `SIDECAR_CONFIG` names the file and is not a key.

Every error names where the bad value came from (`file:line:column`, the
environment variable or the flag), its key path, the value, and what was
expected. Unknown keys are errors, with the valid keys listed.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from sidecar.buckets import HTTP_DURATION_BUCKETS, TTFT_BUCKETS

ENV_PREFIX = "SIDECAR_"
ENV_CONFIG_FILE = "SIDECAR_CONFIG"

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration is invalid; `problems` holds one readable line per error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- value types -----------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_EXPECTED = "a duration such as 500ms, 5s, 2m, 1h30m or a number of seconds"
MAX_DURATION_S = 100 * 365.25 * 86400.0
"""Longest duration accepted: anything longer is a typo, and whole seconds up to it format exactly."""


def parse_duration(value: object) -> float:
    """Seconds from a number or a Prometheus-style duration string ("1h30m", "250ms")."""
    if isinstance(value, bool):
        raise ValueError(_DURATION_EXPECTED)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            position, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != position:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                position = match.end()
            if position != len(text) or not text:
                raise ValueError(_DURATION_EXPECTED) from None
    else:
        raise ValueError(_DURATION_EXPECTED)
    if not math.isfinite(seconds):
        raise ValueError(_DURATION_EXPECTED)
    if seconds < 0:
        raise ValueError("a duration that is not negative")
    if seconds > MAX_DURATION_S:
        raise ValueError("a duration of at most 100 years")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration string that parse_duration reads back to exactly the same value."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        millis = repr(seconds * 1000).removesuffix(".0")
        if "e" not in millis and float(millis) * _DURATION_UNITS["ms"] == seconds:
            return f"{millis}ms"
        return repr(seconds)  # a bare number of seconds; repr reads back exactly
    if seconds != int(seconds):
        return f"{seconds!r}s" if "e" not in repr(seconds) else repr(seconds)
    remaining, text = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            text += f"{remaining // size}{unit}"
            remaining %= size
    return text


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
PositiveDuration = Annotated[Duration, Field(gt=0)]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


_LISTEN_EXPECTED = "HOST:PORT such as 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080"


def parse_listen_address(value: object) -> ListenAddress:
    if isinstance(value, ListenAddress):
        return value
    if not isinstance(value, str):
        raise ValueError(_LISTEN_EXPECTED)
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value.strip())
    if not match:
        raise ValueError(_LISTEN_EXPECTED)
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError("a port between 0 and 65535")
    return ListenAddress(host, port)


ListenAddressField = Annotated[
    ListenAddress, BeforeValidator(parse_listen_address), PlainSerializer(str, return_type=str)
]


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """Where the model server listens: a TCP origin (with optional base path) or a Unix socket."""

    url: str
    scheme: str
    host: str
    port: int | None
    base_path: str
    unix_socket: str | None

    def __str__(self) -> str:
        return self.url

    @property
    def authority(self) -> str:
        """The value a Host header naming the upstream carries."""
        if self.unix_socket is not None:
            return "localhost"
        default_port = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port in (None, default_port) else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """scheme://authority, the prefix of every upstream request URL."""
        return f"{self.scheme}://{self.authority}"


_UPSTREAM_EXPECTED = (
    "http://HOST:PORT (optionally with a base path), https://HOST:PORT or unix:/path/to.sock"
)


def parse_upstream_address(value: object) -> UpstreamAddress:
    if isinstance(value, UpstreamAddress):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(_UPSTREAM_EXPECTED)
    text = value.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError("unix:/absolute/path/to.sock")
        return UpstreamAddress(text, "http", "localhost", None, "", path)
    match = re.fullmatch(r"(https?)://(\[[0-9a-fA-F:.]+\]|[^/:\[\]\s?#]+)(?::(\d+))?(/[^?#\s]*)?", text)
    if not match:
        raise ValueError(_UPSTREAM_EXPECTED)
    scheme, host, port, path = match.groups()
    port_number = int(port) if port else None
    if port_number is not None and not 0 < port_number <= 65535:
        raise ValueError("a port between 1 and 65535")
    return UpstreamAddress(
        text, scheme, host.strip("[]"), port_number, (path or "").rstrip("/"), None
    )


UpstreamAddressField = Annotated[
    UpstreamAddress, BeforeValidator(parse_upstream_address), PlainSerializer(str, return_type=str)
]


def _byte_size_serializer(value: int) -> str | int:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return value


Bytes = Annotated[ByteSize, PlainSerializer(_byte_size_serializer)]


def _url_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("a URL path starting with '/'")
    return value


UrlPath = Annotated[str, BeforeValidator(_url_path)]


class _SecretMarker:
    """Marks a config value as a credential."""


SECRET_MARKER = _SecretMarker()
Secret = Annotated[str, SECRET_MARKER]
"""A credential: shown masked wherever the effective config is shown (`masked_config`)."""

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
               "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}  # fmt: skip
_RATE_EXPECTED = "a rate such as 10/s, 60/min, 10000/min or 1000/h (or a number per second)"


def parse_rate(value: object) -> float:
    """Events per second from "10/s", "60/min", "1000/h", "5000/day" or a number per second."""
    if isinstance(value, bool):
        raise ValueError(_RATE_EXPECTED)
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str):
        match = _RATE.fullmatch(value)
        if match is None:
            raise ValueError(_RATE_EXPECTED)
        rate = float(match.group(1)) / _RATE_UNITS[match.group(2)]
    else:
        raise ValueError(_RATE_EXPECTED)
    if not math.isfinite(rate):
        raise ValueError(_RATE_EXPECTED)
    if not rate > 0:
        raise ValueError("a rate above 0")
    return rate


def format_rate(per_second: float) -> str:
    """The rate in the smallest unit that gives a whole count ("10000/min", not "166.66.../s")."""
    for unit, size in (("s", 1.0), ("min", 60.0), ("h", 3600.0), ("day", 86400.0)):
        count = round(per_second * size)
        text = f"{count}/{unit}"
        if count and parse_rate(text) == per_second:  # exactly: the shown config must be the running one
            return text
    return f"{per_second!r}/s"


Rate = Annotated[float, BeforeValidator(parse_rate), PlainSerializer(format_rate, return_type=str)]


def _empty_is_unset(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_unset)]
"""A file or directory that may be left unset; an empty string (`""`, or an empty environment
variable) means unset, not the current directory."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "inference-sidecar"


# --- sections ---------------------------------------------------------------


class Section(BaseModel):
    # Field docstrings become descriptions, which the generated reference shows.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


class HealthCheckConfig(Section):
    """Active probe of the upstream; its state gates `/-/ready`."""

    enabled: bool = True
    """Probe the upstream; when off, readiness ignores upstream health."""
    path: UrlPath = "/health"
    """Probed with GET; vLLM, SGLang, TGI and llama.cpp serve /health (Ollama: /)."""
    interval: PositiveDuration = 5.0
    """Time between probes."""
    timeout: PositiveDuration = 2.0
    """A probe slower than this fails; must not exceed the interval."""
    unhealthy_threshold: int = Field(3, ge=1, le=1000)
    """Consecutive failed probes that mark a healthy upstream down."""
    healthy_threshold: int = Field(2, ge=1, le=1000)
    """Consecutive successful probes that mark a down upstream up again."""

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheckConfig:
        if self.timeout > self.interval:
            raise ValueError(
                f"health.timeout ({format_duration(self.timeout)}) must not exceed "
                f"health.interval ({format_duration(self.interval)}); expected a shorter timeout or a longer interval"
            )
        return self


class UpstreamConfig(Section):
    """The model server the sidecar forwards to."""

    url: UpstreamAddressField = "http://127.0.0.1:8000"  # type: ignore[assignment]
    """The model server: http://HOST:PORT[/base/path], https://..., or unix:/path/to.sock."""
    host_header: Literal["upstream", "client"] = "upstream"
    """Host sent upstream: the upstream's own authority, or the client's Host unchanged."""
    connect_timeout: PositiveDuration = 5.0
    """Waiting for a pooled connection plus TCP/Unix connect."""
    response_start_timeout: PositiveDuration = 600.0
    """Request sent until response headers arrive; long because LLM prefill and queueing take minutes."""
    idle_timeout: PositiveDuration = 120.0
    """Longest silence allowed between two response chunks once the response has started."""
    max_connections: int = Field(1024, ge=1)
    """Upper bound on pooled connections to the upstream; requests beyond it wait (within connect_timeout)."""
    keepalive_timeout: PositiveDuration = 4.0
    """Idle pooled connections are closed after this. Keep it below the upstream's own
    keep-alive (uvicorn, used by vLLM and SGLang, closes after 5 s) so a request is never
    written onto a connection the upstream is closing."""
    health: HealthCheckConfig = HealthCheckConfig()


class ForwardedHeadersConfig(Section):
    """X-Forwarded-* headers on upstream requests."""

    enabled: bool = True
    """Set X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host on upstream requests."""
    trust_incoming: bool = False
    """Append to X-Forwarded-* sent by the client (only behind a trusted load balancer);
    otherwise replace them, so a client cannot forge its address."""


class ProxyConfig(Section):
    """The client-facing listener and the limits it enforces."""

    listen: ListenAddressField = "127.0.0.1:8080"  # type: ignore[assignment]
    """Where clients connect. Loopback by default; use 0.0.0.0:PORT in a pod or container."""
    max_request_body: Bytes = Field("64MiB", ge=0)  # type: ignore[assignment]
    """Larger request bodies get 413 (vision requests carry base64 images: keep it generous)."""
    max_header_bytes: Bytes = Field("32KiB", ge=1024)  # type: ignore[assignment]
    """Total size of the request's header lines; larger gets 431."""
    max_header_count: int = Field(100, ge=1, le=10000)
    """More request header fields than this get 431."""
    max_url_bytes: Bytes = Field("8KiB", ge=256)  # type: ignore[assignment]
    """Longest request target (path and query); longer gets 414."""
    request_header_timeout: PositiveDuration = 10.0
    """Longest a client may take to send a request's header section, counted from its first byte
    (or from connecting, for a connection's first request); then the connection is closed. This is
    what ends slowloris attacks, which hold connections open by sending headers a byte at a time."""
    keepalive_timeout: PositiveDuration = 75.0
    """An idle client connection is closed after this long without a request (nginx's default;
    aiohttp's own is an hour, which lets idle connections pile up)."""
    client_timeout: PositiveDuration = 60.0
    """Longest a client may stall: between chunks of its request body (then 408), or before
    accepting more response bytes (then the connection is closed). A stalled client must not
    hold an upstream connection forever."""
    drain_timeout: Duration = 30.0
    """On SIGTERM, how long in-flight requests (streams included) may take to finish."""
    request_id_header: str = "x-request-id"
    """Kept from the client when sane, generated otherwise, sent upstream and echoed back.
    Empty disables it."""
    sse_keepalive: Duration = 0.0
    """When above 0: during a silence this long in a server-sent-event stream (a long prefill),
    send the client an SSE comment (`: keep-alive`), which SSE clients ignore, so load balancers
    with idle timeouts keep the stream open. 0 turns it off."""
    forwarded: ForwardedHeadersConfig = ForwardedHeadersConfig()


class LlmConfig(Section):
    """Recognising model calls (OpenAI-compatible, KServe, TGI, Ollama) and reading their usage."""

    enabled: bool = True
    """Read model, token counts and timings from model-call bodies as they pass. Off, model allowlists
    and stream caps still read what they need."""
    request_peek_bytes: Bytes = Field("64KiB", ge=0)  # type: ignore[assignment]
    """How much of a large request body is kept to find `model` and `stream`; smaller bodies are read whole."""
    max_parsed_body: Bytes = Field("4MiB", ge=0)  # type: ignore[assignment]
    """Non-streamed JSON answers up to this size are parsed for usage; larger ones pass unread."""
    max_event_bytes: Bytes = Field("1MiB", ge=1024)  # type: ignore[assignment]
    """Longest SSE/NDJSON line parsed; longer lines pass through unread (and are counted)."""
    provider_name: str = ""
    """The product serving the models, as gen_ai.provider.name on spans and metrics and gen_ai.system in
    audit records: e.g. vllm, sglang, ollama, tgi, llama.cpp, or OpenTelemetry's value where it lists the
    provider (openai, azure.ai.openai, aws.bedrock, gcp.vertex_ai, ...). Empty: `unknown` on spans and
    metrics (the protocol does not say which server spoke it) and no gen_ai.system."""


class MetricsConfig(Section):
    """Prometheus metrics on the admin listener."""

    max_models: int = Field(20, ge=1, le=10000)
    """Distinct model names given their own label value; later ones are counted as `other`."""
    max_tenants: int = Field(50, ge=1, le=10000)
    """Distinct tenants given their own label value; later ones are counted as `other`."""


class TracingConfig(Section):
    """W3C trace propagation and OpenTelemetry spans."""

    enabled: bool = True
    """Continue callers' traces (W3C traceparent, tracestate, baggage) to the model server and
    record trace ids on every request. Spans are exported only with an exporter."""
    exporter: Literal["none", "otlp", "console"] = "none"
    """otlp: OTLP over HTTP/protobuf to `endpoint`; console: print spans (debugging)."""
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """OTLP/HTTP traces endpoint of a collector (Jaeger, Tempo, the OTel Collector)."""
    headers: dict[str, Secret] = {}
    """Extra HTTP headers on exports, e.g. an authorization header for a hosted collector
    (values are masked wherever the config is shown)."""
    timeout: PositiveDuration = 10.0
    """Per export request; exports run on a background thread and never hold up requests."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Share of new traces sampled; a caller's sampled flag is always followed (parent-based)."""
    max_queue_size: int = Field(2048, ge=1)
    """Spans waiting for export; when full, new spans are dropped and counted."""
    max_export_batch_size: int = Field(512, ge=1)
    """Spans sent per export request."""
    schedule_delay: PositiveDuration = 5.0
    """Longest wait before a partial batch is exported."""
    service_name: str = "inference-sidecar"
    """service.name on every span."""
    resource_attributes: dict[str, str] = {}
    """Extra OpenTelemetry resource attributes, e.g. deployment.environment.name: prod."""


class NvmlConfig(Section):
    """GPU readings through NVML (nvidia-ml-py), under dcgm-exporter's metric names."""

    enabled: bool = True
    """Sample every GPU NVML can see; without a driver this is reported (a metric and a log line), not an error."""
    interval: PositiveDuration = 1.0
    """Time between samples."""
    call_timeout: PositiveDuration = 2.0
    """An NVML call slower than this marks the GPU stale; the other GPUs keep being sampled."""
    devices: list[int] = []
    """GPU indices to sample; empty: all."""
    processes: bool = True
    """Per-process GPU memory and SM utilisation of the processes using each GPU."""
    pcie_interval: PositiveDuration = 10.0
    """Time between PCIe throughput reads (each blocks about 20 ms inside the driver)."""
    xid_events: bool = True
    """Wait for XID errors on an NVML event set, in a thread of its own."""
    simulate: int = Field(0, ge=0, le=8)
    """Read this many simulated H100 GPUs instead of NVML, for demos and benchmarks on machines without a
    GPU: utilisation and power follow the proxy's load (idle ~72 W; the readings of an H100 serving a
    model while requests are at the model server), and their series carry simulated="true". Never in
    production."""


class DcgmExporterConfig(Section):
    """Scrape NVIDIA's dcgm-exporter for the profiling fields NVML does not give."""

    enabled: bool = False
    """Scrape dcgm-exporter; its samples feed attribution and health alongside NVML's."""
    url: str = "http://127.0.0.1:9400/metrics"
    """dcgm-exporter's metrics endpoint."""
    interval: PositiveDuration = 5.0
    """Time between scrapes."""
    timeout: PositiveDuration = 2.0
    """A scrape slower than this counts as failed."""
    stale_after: PositiveDuration = 90.0
    """Samples older than this, or values frozen this long, are reported stale and not served as fresh.
    Keep it at 2-3x dcgm-exporter's own collection interval (30 s by default)."""
    reexpose: bool = False
    """Serve the scraped series on the sidecar's /metrics too (off: dcgm-exporter is usually scraped itself)."""


class ModelPrice(Section):
    """Cloud prices for one model, to compare local serving against."""

    input_per_1k: float = Field(0.0, ge=0)
    """Price per 1,000 input tokens."""
    output_per_1k: float = Field(0.0, ge=0)
    """Price per 1,000 output tokens."""
    per_request: float = Field(0.0, ge=0)
    """Fee per call."""


class CostConfig(Section):
    """What a request costs locally, and what the same tokens would cost from a cloud API."""

    currency: str = "USD"
    """ISO 4217 code of every price here; carried on metrics and audit records."""
    electricity_per_kwh: float = Field(0.15, ge=0)
    """Electricity price per kWh."""
    hardware_price: float = Field(0.0, ge=0)
    """Purchase price of the GPU server; 0: leave amortisation and payback out."""
    gpus: int = Field(1, ge=1, le=1024)
    """GPUs that price buys: each GPU-second is charged its 1/gpus share of the write-off."""
    amortisation: PositiveDuration = 3 * 365 * 86400.0
    """Period over which the hardware price is written off."""
    cloud_prices: dict[str, ModelPrice] = {}
    """Model name (as requested) -> cloud prices; the entry `default` applies to other models."""


class GpuConfig(Section):
    """GPU metrics, and each request's share of GPU time, energy and cost."""

    nvml: NvmlConfig = NvmlConfig()
    dcgm_exporter: DcgmExporterConfig = DcgmExporterConfig()
    attribution: bool = True
    """Attribute GPU time and energy to each request (needs energy or power readings)."""
    idle_power: Literal["unattributed", "in_flight"] = "unattributed"
    """Who pays for the GPU's idle power (learned while no request is at the model server): unattributed
    charges it to no request and counts it on its own line (sidecar_cost_unattributed_total, the status
    page); in_flight charges the idle power drawn while requests are at the model server to them, by
    time there. See docs/gpu-attribution.md."""
    cost: CostConfig = CostConfig()
    probe_at_start: bool = False
    """Run the torch GPU probe (`sidecar gpu-probe`) once at start, before serving; it loads the GPU for seconds."""


class AuditSpoolConfig(Section):
    """The on-disk log every audit event enters before it counts as written."""

    max_size: Bytes = Field("1GiB", ge=1 << 20)  # type: ignore[assignment]
    """Undelivered events kept on disk (the sink being down fills it); `when_full` says what then."""
    segment_size: Bytes = Field("64MiB", ge=64 << 10)  # type: ignore[assignment]
    """Size at which the spool starts a new segment file; delivered segments are deleted whole."""
    fsync: Literal["always", "interval", "never"] = "interval"
    """always: fsync every batch before its events count as written (survives power loss);
    interval: at most every `fsync_interval` (a crash of the machine can lose that much);
    never: leave it to the OS (a crash of the sidecar alone loses nothing written)."""
    fsync_interval: PositiveDuration = 0.1
    """Longest time between fsyncs under `fsync: interval`."""
    when_full: Literal["fail_open", "fail_closed"] = "fail_open"
    """fail_open: keep serving, drop new audit events, count them (sidecar_audit_events_dropped_total)
    and fail `/-/ready`'s audit check; fail_closed: answer proxied requests 503 until there is room."""


class ElasticsearchSinkConfig(Section):
    """Where audit events go when `url` is set (otherwise to JSON Lines files)."""

    url: str = ""
    """Elasticsearch base URL, e.g. https://es.internal:9200; several separated by commas."""
    api_key: Secret = ""
    """Encoded API key (the `encoded` value Elasticsearch returns); or use username/password."""
    username: str = ""
    """Basic authentication user, when no API key is given."""
    password: Secret = ""
    """Basic authentication password; prefer the environment (SIDECAR_AUDIT__ELASTICSEARCH__PASSWORD)."""
    ca_file: OptionalPath = None
    """CA bundle for TLS; empty: the system's."""
    verify_certs: bool = True
    """Check the server's TLS certificate; turn off only for a test cluster."""
    index: str = ""
    """Write to this plain index instead of a data stream."""
    dataset: str = "sidecar.audit"
    """Data stream logs-<dataset>-<namespace>, as Elastic's naming scheme asks."""
    namespace: str = "default"
    """Data stream namespace, e.g. the environment: prod, staging."""
    per_tenant: bool = False
    """Isolate tenants: each tenant's records go to a data stream of its own,
    logs-<dataset>-<tenant> (the tenant lower-cased, other characters than a-z, 0-9 and _ as _), so
    index privileges can grant an auditor one tenant. Records without a tenant go to `namespace`.
    Off: one data stream, every record carrying its tenant in `organization.id`."""
    batch_size: int = Field(500, ge=1, le=100_000)
    """Events per bulk request."""
    batch_bytes: Bytes = Field("5MiB", ge=1024)  # type: ignore[assignment]
    """Largest bulk request body."""
    batch_age: PositiveDuration = 1.0
    """Longest an event waits for a batch to fill."""
    max_in_flight: int = Field(2, ge=1, le=16)
    """Bulk requests out at once, so one's round trip overlaps the reading and sending of the
    next. They are committed in spool order: after a crash up to this many batches are sent again,
    and Elasticsearch answers each resent document with 409 (counted as stored, never doubled)."""
    request_timeout: PositiveDuration = 30.0
    """Per bulk request; a slower answer counts as a failure and the batch is retried."""
    max_backoff: PositiveDuration = 60.0
    """Longest wait between retries while Elasticsearch is down or rejecting."""
    retention: PositiveDuration = 365 * 86400.0
    """How long `sidecar es setup`'s lifecycle policy keeps audit data before deleting it."""
    rollover_age: PositiveDuration = 30 * 86400.0
    """Start a new backing index after this long (or 50 GB per primary shard)."""

    @property
    def target(self) -> str:
        """The index or data stream bulk requests write to (the default one under `per_tenant`)."""
        return self.index or f"logs-{self.dataset}-{self.namespace}"

    @property
    def read_target(self) -> str:
        """What the auditor's commands search: every tenant's data stream under `per_tenant`."""
        return f"logs-{self.dataset}-*" if self.per_tenant and not self.index else self.target

    @model_validator(mode="after")
    def _per_tenant_needs_data_streams(self) -> ElasticsearchSinkConfig:
        if self.per_tenant and self.index:
            raise ValueError(
                "audit.elasticsearch.per_tenant needs data streams; expected audit.elasticsearch.index left empty"
            )
        return self


class AuditFileSinkConfig(Section):
    """JSON Lines files, the sink when no Elasticsearch is configured."""

    directory: OptionalPath = None
    """Where the files go; empty: <data_dir>/audit/events."""
    max_file_size: Bytes = Field("128MiB", ge=64 << 10)  # type: ignore[assignment]
    """A file is closed and a new one started past this size. Files are never deleted by the
    sidecar; `sidecar audit replay` ships them to Elasticsearch later."""


class RedactionConfig(Section):
    """What is masked before anything leaves the process (audit records, access log, spans).
    Credentials (Authorization, cookies, API keys, JWTs, bearer tokens) are always masked."""

    email: bool = True
    """E-mail addresses."""
    phone: bool = True
    """International numbers and mainland China mobile numbers."""
    national_id: bool = True
    """PRC resident ID (18 digits, checksum verified) and US SSN."""
    credit_card: bool = True
    """Card numbers that pass the Luhn check."""
    ip_address: bool = False
    """IP addresses inside free text (client.ip itself is kept)."""
    custom: dict[str, str] = {}
    """Name -> regular expression; matches are replaced and tagged with the name."""
    replacement: Literal["tag", "keyed_hash"] = "tag"
    """tag: [REDACTED:email]; keyed_hash: [email:<HMAC>] so equal values stay correlatable."""
    hash_key_file: OptionalPath = None
    """Key for keyed_hash; empty: a random key kept in <data_dir>/audit/redaction.key."""


class CheckpointConfig(Section):
    """Signed records of the chain head, so deleting the newest records is detectable."""

    interval: PositiveDuration = 60.0
    """Time between checkpoints (one is also written at start and stop)."""
    signing_key_file: OptionalPath = None
    """Ed25519 private key (PEM, PKCS#8); empty: generated once in <data_dir>/audit/checkpoint.key,
    with its public key beside it (checkpoint.pub) to hand to auditors."""
    hmac_key_file: OptionalPath = None
    """Sign with HMAC-SHA256 and this shared key instead of Ed25519."""


class AuditConfig(Section):
    """One tamper-evident ECS record per request, durable before it counts as written."""

    enabled: bool = True
    """Write an audit record per request and per lifecycle event (start, stop, reload)."""
    content: Literal["none", "sha256", "redacted"] = "none"
    """Prompts and completions: none: not kept; sha256: digests of the request and response
    bodies (proof of what was sent without keeping it); redacted: the bodies' first
    `content_max_bytes`, redacted."""
    content_max_bytes: Bytes = Field("4KiB", ge=0, le=1 << 20)  # type: ignore[assignment]
    """Cap on each body kept under `content: redacted`."""
    hold_response: bool = False
    """Hold each response's last bytes until its audit record is in the spool (and fsynced under
    `spool.fsync: always`): no client sees a complete answer without a durable record."""
    queue_size: int = Field(100_000, ge=100)
    """Events waiting for the spool writer; past it, `spool.when_full` applies."""
    sink_down_after: PositiveDuration = 60.0
    """The sink counts as down (sidecar_audit_sink_up 0) once records have waited this long with
    none stored or dead-lettered in that time, whatever the sink answers (refusals, 429s, 5xx)."""
    sink_down_fails_ready: bool = False
    """Fail `/-/ready`'s audit check while the sink is down. Off: the spool keeps the records, and
    one Elasticsearch behind every replica would take all of them out of rotation at once."""
    spool: AuditSpoolConfig = AuditSpoolConfig()
    elasticsearch: ElasticsearchSinkConfig = ElasticsearchSinkConfig()
    file: AuditFileSinkConfig = AuditFileSinkConfig()
    redaction: RedactionConfig = RedactionConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


SignalName = Literal[
    "request_rate",
    "error_ratio",
    "request_duration_quantile",
    "ttft_quantile",
    "tpot_quantile",
    "rate_limit_rejections",
    "upstream_up",
    "upstream_consecutive_failures",
    "gpu_temperature",
    "gpu_memory_used_percent",
    "gpu_power_watts",
    "gpu_throttled",
    "gpu_xid_errors",
    "gpu_lost",
    "audit_spool_fill_ratio",
    "audit_events_dropped",
    "audit_dead_letters",
    "audit_sink_up",
    "audit_delivery_lag_seconds",
]
"""What a rule can watch; `sidecar.rules.signals` says what each one measures and in which unit."""

_ALERT_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_LABEL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

_STATUS_PATTERN = re.compile(r"([45])(?:xx|\d\d)")
_STATUS_EXPECTED = "an HTTP status from 400 to 599 (503) or a class (4xx, 5xx)"
OUTCOMES = ("completed", "client_closed", "rejected", "upstream_unavailable", "upstream_timeout",
            "upstream_error", "aborted")  # fmt: skip
"""How an exchange can end (`sidecar.exchange.Outcome`)."""


def parse_status_pattern(value: object) -> str:
    """An HTTP status (503, "503") or a class ("5xx"), as text."""
    text = str(value).strip().lower() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not _STATUS_PATTERN.fullmatch(text):
        raise ValueError(f"expected {_STATUS_EXPECTED}, got {value!r}")
    return text


def parse_outcome(value: object) -> str:
    if value not in OUTCOMES:
        raise ValueError(f"expected an outcome: {', '.join(OUTCOMES)}; got {value!r}")
    return str(value)


StatusPattern = Annotated[str, BeforeValidator(parse_status_pattern)]
OutcomeName = Annotated[str, BeforeValidator(parse_outcome)]

# What an availability SLI counts as bad unless an SLO says otherwise: what the service failed to
# do, never what a client did wrong (the rules guide, "What counts as bad").
DEFAULT_BAD_STATUSES = ("5xx",)
DEFAULT_BAD_OUTCOMES = ("upstream_unavailable", "upstream_timeout", "upstream_error")
DEFAULT_GOOD_REFUSALS = ("400", "401", "403", "408", "413", "414", "429", "431", "501", "505")
DEFAULT_GOOD_OUTCOMES = ("client_closed",)
# The minimum of evidence before a burn-rate or error-ratio alert can fire (the rules guide,
# "A minimum of evidence").
DEFAULT_MIN_EVENTS = 20
DEFAULT_MIN_BAD_EVENTS = 5


class AlertRuleConfig(Section):
    """One alert rule: a signal compared with a threshold, held for a while before it fires."""

    # `for` is Prometheus's word and a Python keyword: the attribute is `for_`, the key `for`.
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(pattern=_ALERT_NAME)
    """The alert's name (`alertname`); a rule with a default rule's name replaces it."""
    signal: SignalName
    """What is watched (see the rules guide for each signal's unit)."""
    window: PositiveDuration = 300.0
    """The span the signal is computed over (rates, ratios, quantiles, counts, aggregates)."""
    quantile: float | None = Field(None, gt=0, lt=1)
    """For *_quantile signals: 0.5, 0.95, 0.99, ..."""
    error_class: Literal["any", "5xx", "timeout", "upstream_down"] = "any"
    """For error_ratio: any failure of the service, 5xx answers, upstream timeouts, or upstream unreachable
    (never the sidecar's refusals of bad requests, nor clients that went away)."""
    min_events: int = Field(DEFAULT_MIN_EVENTS, ge=0)
    """For error_ratio: requests the window must hold before the rule can fire."""
    min_bad_events: int = Field(DEFAULT_MIN_BAD_EVENTS, ge=0)
    """For error_ratio: failed requests (of `error_class`) the window must hold before the rule can fire."""
    aggregate: Literal["last", "max", "min", "avg"] = "last"
    """For gauges (GPU, audit spool, upstream): the newest value, or the max/min/mean over `window`."""
    op: Literal[">", ">=", "<", "<=", "==", "!="] = ">"
    """How the signal is compared with the threshold."""
    threshold: float
    """The value the signal is compared with, in the signal's unit."""
    for_: Duration = Field(0.0, alias="for", ge=0)
    """How long the condition must hold before the alert fires (pending until then)."""
    keep_firing_for: Duration = Field(0.0, ge=0)
    """How long a firing alert stays firing after the condition stops holding."""
    severity: str = Field("warning", pattern=r"^[a-z][a-z0-9_-]*$")
    """The `severity` label: critical, warning, info, page, ticket, ..."""
    labels: dict[str, str] = {}
    """Extra labels; label names as in Prometheus."""
    annotations: dict[str, str] = {}
    """summary, description, runbook_url, ...: Go-template text with {{ $value }} and {{ $labels.NAME }}."""
    enabled: bool = True
    """false: switch the rule (or the default rule of this name) off."""

    @model_validator(mode="after")
    def _parameters_fit_the_signal(self) -> AlertRuleConfig:
        quantile_signal = self.signal.endswith("_quantile")
        if quantile_signal and self.quantile is None:
            raise ValueError(f"expected quantile (e.g. 0.99) for signal {self.signal} in rule {self.name!r}")
        if not quantile_signal and self.quantile is not None:
            raise ValueError(f"expected no quantile in rule {self.name!r}: it applies to *_quantile signals, not {self.signal}")
        if self.error_class != "any" and self.signal != "error_ratio":
            raise ValueError(f"expected no error_class in rule {self.name!r}: it applies to error_ratio, not {self.signal}")
        # Compared with the defaults, not "was it set": the effective config (every key shown) must load again.
        for key, default in (("min_events", DEFAULT_MIN_EVENTS), ("min_bad_events", DEFAULT_MIN_BAD_EVENTS)):
            if getattr(self, key) != default and self.signal != "error_ratio":
                raise ValueError(f"expected no {key} in rule {self.name!r}: it applies to error_ratio, not {self.signal}")
        for label in (*self.labels, *self.annotations):
            if not re.match(_LABEL_NAME, label):
                raise ValueError(f"expected label names like [A-Za-z_][A-Za-z0-9_]* in rule {self.name!r}, got {label!r}")
        if "severity" in self.labels or "alertname" in self.labels:
            raise ValueError(f"expected severity as its own key and no alertname label (the rule's name) in rule {self.name!r}")
        return self


class SloConfig(Section):
    """A service level objective; multi-window, multi-burn-rate alerts are generated from it."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    """The SLO's name (the `slo` label); one with a default SLO's name replaces it."""
    sli: Literal["availability", "latency"] = "availability"
    """availability: bad = a failure of the service (bad_statuses, bad_outcomes); latency: good = answered
    within latency_threshold."""
    objective: float = Field(gt=0, lt=100)
    """Percent of good requests: 99, 99.9, 99.95, 99.99, ..."""
    period: PositiveDuration = 30 * 86400.0
    """The compliance period the error budget is counted over (at most 90d)."""
    latency_signal: Literal["request_duration", "ttft"] = "request_duration"
    """For latency SLOs: whole-request duration or time to first token."""
    latency_threshold: Duration | None = None
    """For latency SLOs: the bound a good request stays within; one of the histogram's bucket bounds."""
    page: bool = True
    """Generate the page alert (14.4x burn over 1h and 5m, or 6x over 6h and 30m)."""
    ticket: bool = True
    """Generate the ticket alert (3x burn over 1d and 2h, or 1x over 3d and 6h)."""
    bad_statuses: list[StatusPattern] = list(DEFAULT_BAD_STATUSES)
    """For availability SLOs: answers with these statuses (503) or classes (4xx, 5xx) are bad."""
    bad_outcomes: list[OutcomeName] = list(DEFAULT_BAD_OUTCOMES)
    """For availability SLOs: requests that ended so are bad whatever their status (a stream the upstream
    broke off after its 200); any of upstream_unavailable, upstream_timeout, upstream_error, aborted,
    rejected, client_closed."""
    good_refusals: list[StatusPattern] = list(DEFAULT_GOOD_REFUSALS)
    """For availability SLOs: the sidecar's own refusals (outcome rejected) with these statuses are never
    bad: the request was at fault."""
    good_outcomes: list[OutcomeName] = list(DEFAULT_GOOD_OUTCOMES)
    """For availability SLOs: requests that ended so are never bad (client_closed: the client went away)."""
    min_events: int = Field(DEFAULT_MIN_EVENTS, ge=0)
    """Requests (latency SLOs: observations) a burn-rate alert's short window must hold before it fires."""
    min_bad_events: int = Field(DEFAULT_MIN_BAD_EVENTS, ge=0)
    """Bad requests a burn-rate alert's short window must hold before it fires."""
    enabled: bool = True
    """false: switch the SLO (or the default SLO of this name) off."""

    @model_validator(mode="after")
    def _bad_events_fit_the_sli(self) -> SloConfig:
        defaults = {"bad_statuses": DEFAULT_BAD_STATUSES, "bad_outcomes": DEFAULT_BAD_OUTCOMES,
                    "good_refusals": DEFAULT_GOOD_REFUSALS, "good_outcomes": DEFAULT_GOOD_OUTCOMES}  # fmt: skip
        if self.sli != "availability":
            for key, default in defaults.items():
                # Compared with the default: the effective config (every key shown) must load again.
                if tuple(getattr(self, key)) != default:
                    raise ValueError(f"expected no {key} in slo {self.name!r}: it applies to sli: availability")
        if not self.bad_statuses and not self.bad_outcomes:
            raise ValueError(f"expected bad_statuses or bad_outcomes in slo {self.name!r}: nothing would be bad")
        if "completed" in self.bad_outcomes:
            raise ValueError(f"expected no completed in bad_outcomes of slo {self.name!r}: bad_statuses says which "
                             f"answers are bad")  # fmt: skip
        both = sorted(set(self.bad_outcomes) & set(self.good_outcomes))
        if both:
            raise ValueError(f"expected each outcome in bad_outcomes or good_outcomes of slo {self.name!r}, not both: "
                             f"{', '.join(both)}")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _latency_needs_threshold(self) -> SloConfig:
        if round(self.objective / 100.0, 12) >= 1.0:
            raise ValueError(f"expected an objective below 100 (an error budget above 0) in slo {self.name!r}, "
                             f"got {self.objective!r}")  # fmt: skip
        if self.period > 90 * 86400:
            raise ValueError(f"expected a period of at most 90d in slo {self.name!r}, got {format_duration(self.period)}")
        if self.sli == "latency" and self.latency_threshold is None:
            raise ValueError(f"expected latency_threshold (e.g. 500ms) for the latency slo {self.name!r}")
        if self.sli != "latency" and self.latency_threshold is not None:
            raise ValueError(f"expected no latency_threshold in slo {self.name!r}: it applies to sli: latency")
        if self.latency_threshold is not None:
            # "Good" must be one `le` bucket, or the exported rules would count a different thing.
            bounds = HTTP_DURATION_BUCKETS if self.latency_signal == "request_duration" else TTFT_BUCKETS
            if self.latency_threshold not in bounds:
                raise ValueError(
                    f"expected a latency_threshold in slo {self.name!r} that is a {self.latency_signal} bucket "
                    f"bound: {', '.join(format_duration(b) for b in bounds)}; got {format_duration(self.latency_threshold)}"
                )
        return self


class AlertmanagerConfig(Section):
    """An Alertmanager to push alerts to (API v2)."""

    url: str = Field(pattern=r"^https?://")
    """Base URL, e.g. http://127.0.0.1:9093; alerts go to <url>/api/v2/alerts."""
    timeout: PositiveDuration = 10.0
    """A post slower than this fails (and is tried again at the next resend)."""


class WebhookConfig(Section):
    """A receiver that takes Alertmanager's webhook payload (version 4), grouped as Alertmanager groups."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """The payload's `receiver`."""
    url: str = Field(pattern=r"^https?://")
    """Where the payload is POSTed."""
    group_by: list[str] = ["alertname"]
    """Labels that make a group; `...` groups by all labels (one notification per alert)."""
    group_wait: Duration = Field(30.0, ge=0)
    """How long a new group waits for more alerts before its first notification."""
    group_interval: PositiveDuration = 300.0
    """How long to wait before notifying about changes to a group already notified."""
    repeat_interval: PositiveDuration = 4 * 3600.0
    """How long to wait before repeating an unchanged notification."""
    send_resolved: bool = True
    """Notify when a group's alerts resolve."""
    timeout: PositiveDuration = 10.0
    """A post slower than this fails and is retried with backoff."""
    max_alerts: int = Field(0, ge=0)
    """Alerts per payload (0: all); the rest are counted in truncatedAlerts."""


class RulesConfig(Section):
    """Alert rules and SLOs, evaluated in-process; notifications to Alertmanager and webhooks."""

    enabled: bool = True
    """Evaluate rules and SLOs in-process."""
    interval: PositiveDuration = 1.0
    """Time between evaluations of every rule."""
    defaults: bool = True
    """Include the shipped rules and SLO (see the rules guide); rules here replace them by name."""
    alerts: list[AlertRuleConfig] = []
    """Alert rules (keys under `rules.alerts[]` below)."""
    slos: list[SloConfig] = []
    """Service level objectives (keys under `rules.slos[]` below)."""
    external_url: str = ""
    """Where alerts link to (generatorURL, externalURL); empty: the admin listener's status page."""
    external_labels: dict[str, str] = {}
    """Labels added to every alert (instance is always added: instance_id)."""
    state_file: OptionalPath = None
    """Windows and alert states, saved so a restart keeps the error budget and active alerts;
    empty: <data_dir>/rules/state.json."""
    state_save_interval: PositiveDuration = 10.0
    """Time between saves of the state file (and one at shutdown)."""
    resend_delay: PositiveDuration = 60.0
    """Firing alerts are sent to Alertmanager again this often (Prometheus's --rules.alert.resend-delay)."""
    resolved_retention: PositiveDuration = 900.0
    """Resolved alerts are kept, and re-sent to Alertmanager, for this long."""
    alertmanagers: list[AlertmanagerConfig] = []
    """Every alert goes to each of them (an HA pair gets both copies and deduplicates)."""
    webhooks: list[WebhookConfig] = []
    """Receivers of Alertmanager's webhook payload, grouped by the sidecar (keys under `rules.webhooks[]`)."""
    queue_size: int = Field(10_000, ge=10)
    """Notifications waiting per receiver; beyond it the oldest are dropped (and counted)."""

    @model_validator(mode="after")
    def _names_unique(self) -> RulesConfig:
        for kind, names in (("alerts", [r.name for r in self.alerts]), ("slos", [s.name for s in self.slos]),
                            ("webhooks", [w.name for w in self.webhooks])):  # fmt: skip
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"expected unique names in rules.{kind}, repeated: {', '.join(duplicates)}")
        return self


JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                       "ES256", "ES384", "ES512", "EdDSA"]  # fmt: skip


class ApiKeysConfig(Section):
    """API keys presented as `Authorization: Bearer KEY` or `X-API-Key: KEY`."""

    file: OptionalPath = None
    """YAML file of keys, each stored as its SHA-256 digest with tenant, user, tier and allowed models
    (format in the security guide; `sidecar auth new-key` makes entries). Re-read on SIGHUP and
    within a few seconds of a change."""


class JwtConfig(Section):
    """JSON Web Tokens presented as `Authorization: Bearer TOKEN`, verified with PyJWT."""

    algorithms: list[JwtAlgorithm] = ["RS256", "ES256"]
    """Accepted signature algorithms; a token naming any other (`none` included) is refused."""
    secret: Secret = ""
    """Shared secret for the HS* algorithms; prefer the environment (SIDECAR_AUTH__JWT__SECRET)."""
    public_key_file: OptionalPath = None
    """PEM public key for RS*, PS*, ES* and EdDSA tokens."""
    jwks_file: OptionalPath = None
    """Local JWKS file (`{"keys": [...]}`); the token's `kid` picks the key. Re-read with the key file."""
    issuer: str = ""
    """Required `iss`; empty: not checked."""
    audience: list[str] = []
    """Accepted `aud` values; empty: a token carrying `aud` is refused, as RFC 7519 asks."""
    leeway: Duration = Field(30.0, le=600)
    """Clock skew allowed on `exp`, `nbf` and `iat`."""
    tenant_claim: str = "tenant"
    """Claim naming the tenant (dotted for nested claims, e.g. `org.id`)."""
    user_claim: str = "sub"
    """Claim naming the user."""
    tier_claim: str = "tier"
    """Claim naming the rate-limit tier."""
    models_claim: str = "models"
    """Claim listing the models the caller may use; absent: every model."""

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.public_key_file or self.jwks_file)


class FailureThrottleConfig(Section):
    """Slows down credential guessing: a client IP with too many failed attempts is refused for a while."""

    max_failures: int = Field(20, ge=0)
    """Failed authentications allowed per client IP within `window`; then 429 until the window
    passes. 0 turns the throttle off."""
    window: PositiveDuration = 60.0
    """The period over which failures are counted."""


class AuthConfig(Section):
    """Who is calling: API keys and JWTs on the proxy port. Off by default: every caller is then
    anonymous, known by client IP."""

    enabled: bool = False
    """Require a valid API key or JWT on every proxied request (except `exempt_paths`)."""
    api_keys: ApiKeysConfig = ApiKeysConfig()
    jwt: JwtConfig = JwtConfig()
    exempt_paths: list[UrlPath] = []
    """Paths served without credentials (exact match, e.g. /health for a load balancer). A path with
    dot segments, doubled or encoded slashes never matches."""
    upstream_authorization: Literal["strip", "pass", "replace"] = "strip"
    """What the model server gets in `Authorization`: strip: nothing (the client's credentials
    stay with the sidecar); pass: the client's header unchanged; replace: `Bearer upstream_token`."""
    upstream_token: Secret = ""
    """Bearer token sent upstream with `upstream_authorization: replace`."""
    realm: str = Field("inference-sidecar", pattern=r'^[^"\\\x00-\x1f]*$')
    """The realm in `WWW-Authenticate` challenges."""
    failure_throttle: FailureThrottleConfig = FailureThrottleConfig()

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.enabled and self.api_keys.file is None and not self.jwt.enabled:
            raise ValueError(
                "expected auth.api_keys.file, auth.jwt.secret, auth.jwt.public_key_file or auth.jwt.jwks_file "
                "when auth.enabled is true: nothing to check credentials against"
            )
        hmac_algorithms = [name for name in self.jwt.algorithms if name.startswith("HS")]
        key_algorithms = [name for name in self.jwt.algorithms if not name.startswith("HS")]
        if self.jwt.secret and len(self.jwt.secret.encode()) < 32:
            # RFC 7518 §3.2: an HMAC key at least as long as the hash; shorter ones can be brute-forced.
            raise ValueError("expected auth.jwt.secret of at least 32 bytes (RFC 7518 §3.2); it is shorter")
        if self.jwt.secret and not hmac_algorithms:
            raise ValueError(
                "auth.jwt.secret is set but auth.jwt.algorithms names no HS* algorithm to use it with; "
                "expected HS256, HS384 or HS512 among them"
            )
        if (self.jwt.public_key_file or self.jwt.jwks_file) and not key_algorithms:
            raise ValueError(
                "auth.jwt.public_key_file or jwks_file is set but auth.jwt.algorithms names only HS* algorithms; "
                "expected an RS*, PS*, ES* or EdDSA algorithm among them"
            )
        if self.upstream_authorization == "replace" and not self.upstream_token:
            raise ValueError("expected auth.upstream_token when auth.upstream_authorization is replace")
        return self


class TierConfig(Section):
    """One rate-limit tier: token buckets per tenant, by requests and by model tokens."""

    requests: Rate | None = None
    """Sustained request rate per tenant: 10/s, 60/min, 10000/min. Empty: unlimited."""
    request_burst: int | None = Field(None, ge=1)
    """Requests a tenant may make at once after being idle; empty: one second's worth, at least 1."""
    tokens: Rate | None = None
    """Sustained model tokens (input + output) per tenant, charged when each answer reports them."""
    token_burst: int | None = Field(None, ge=1)
    """Tokens a tenant may use at once after being idle; empty: one minute's worth."""
    concurrent_streams: int | None = Field(None, ge=1)
    """Streamed model answers one tenant may have open at once; more get 429."""


class LimitsConfig(Section):
    """Per-tenant rate limits, held in this process (see the security guide for fleets)."""

    enabled: bool = False
    """Enforce the tiers below; refused requests get 429 with Retry-After and rate-limit headers."""
    tiers: dict[str, TierConfig] = {}
    """Tiers by name, e.g. free: {requests: 60/min}, paid: {requests: 10000/min}."""
    per: Literal["tenant", "credential"] = "tenant"
    """Whose bucket a request draws on: its tenant's (all of a tenant's keys and tokens share it), or
    its credential's (each API key, or each JWT subject, has its own)."""
    default_tier: str = ""
    """Tier for callers whose credentials name none, and for anonymous callers (keyed by client
    IP). Empty: such callers are not limited."""
    max_tracked: int = Field(100_000, ge=100)
    """Tenants and client IPs whose buckets are kept; past it the least recently seen are forgotten
    (a forgotten bucket starts full again)."""

    @model_validator(mode="after")
    def _default_tier_exists(self) -> LimitsConfig:
        if self.default_tier and self.default_tier not in self.tiers:
            known = f"one of: {', '.join(sorted(self.tiers))}" if self.tiers else "a tier defined there (none is)"
            raise ValueError(f"limits.default_tier {self.default_tier!r} is not a tier in limits.tiers; expected {known}")
        return self


class AdminTlsConfig(Section):
    """TLS on the admin listener; with `client_ca_file`, mutual TLS."""

    cert_file: OptionalPath = None
    """PEM certificate chain the admin listener presents."""
    key_file: OptionalPath = None
    """PEM private key of `cert_file`."""
    client_ca_file: OptionalPath = None
    """PEM CA bundle: clients must present a certificate it signed (mTLS)."""

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _complete(self) -> AdminTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("expected both admin.tls.cert_file and admin.tls.key_file, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("admin.tls.client_ca_file (mTLS) is set; expected admin.tls.cert_file and key_file with it")
        return self


_MIN_ADMIN_TOKEN = 16
"""Characters. Even as hex digits that is 64 bits, more guesses than a network carries;
`openssl rand -hex 32` gives 256."""


class AdminConfig(Section):
    """The operators' listener, separate from the proxy."""

    listen: ListenAddressField = "127.0.0.1:9180"  # type: ignore[assignment]
    """/metrics, /-/healthy, /-/ready, the status page and the effective config. Loopback by default;
    any other address needs `token` or mutual TLS, or the sidecar refuses to start."""
    token: Secret = ""
    """Bearer token every admin request must carry (`Authorization: Bearer TOKEN`), except `open_paths`:
    at least 16 characters, no spaces or line breaks (`openssl rand -hex 32`). Prefer the environment
    (SIDECAR_ADMIN__TOKEN)."""
    open_paths: list[UrlPath] = ["/-/healthy", "/-/ready"]
    """Admin paths served without the token, for probes that cannot send one; add /metrics to let
    Prometheus scrape without it."""
    tls: AdminTlsConfig = AdminTlsConfig()

    @property
    def protected(self) -> bool:
        """Whether a caller must prove who it is: a token, or a client certificate."""
        return bool(self.token) or self.tls.client_ca_file is not None

    @model_validator(mode="after")
    def _closed_off_loopback(self) -> AdminConfig:
        # Checked here, not on the field: a field's problem shows the value, and this one is a secret.
        if self.token:
            blanks = sum(c.isspace() or not c.isprintable() for c in self.token)
            if len(self.token) < _MIN_ADMIN_TOKEN or blanks:
                raise ValueError(
                    f"expected admin.token of at least {_MIN_ADMIN_TOKEN} characters with no spaces or line breaks "
                    f"(e.g. `openssl rand -hex 32`); it has {len(self.token)} characters"
                    + (f", {blanks} of them spaces, line breaks or control characters" if blanks else "")
                )
        if not self.listen.is_loopback and not self.protected:
            raise ValueError(
                f"admin.listen {self.listen} is not a loopback address, so the admin port (metrics, config, "
                "alerts) would be open to the network; expected a loopback address such as 127.0.0.1, or "
                "admin.token (or SIDECAR_ADMIN__TOKEN), or admin.tls.client_ca_file for mutual TLS"
            )
        return self


class LogConfig(Section):
    """The sidecar's own logs."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Logs go to stderr."""
    format: Literal["auto", "json", "text"] = "auto"
    """auto: readable text on a terminal, JSON lines otherwise."""
    access_log: bool = False
    """One JSON line per exchange on the `sidecar.access` logger."""


class RuntimeConfig(Section):
    """Process-level settings."""

    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """auto uses uvloop when it is installed."""
    switch_interval: PositiveDuration = Field(0.0005, le=0.1)
    """Longest a background thread (span export, the audit writer, NVML) may hold the
    interpreter while the event loop waits for it. Python's own 5ms was added, whole, to
    requests that arrived while spans were being encoded."""
    gc_freeze: bool = True
    """Once started, move every object then alive out of the garbage collector's reach
    (gc.freeze), so full collections under load scan only what requests create: they took
    about 30ms each, with start-up's 100,000 objects in them, and under 1ms after."""


class Config(Section):
    data_dir: Path = Field(default_factory=default_data_dir)
    """Where the sidecar keeps its state (audit spool and files, rule state)."""
    instance_id: str = ""
    """This sidecar's name in audit records (one hash chain per name), alerts (`instance`) and, when set,
    spans (service.instance.id). Empty: the host name (the pod name in Kubernetes) in records and alerts,
    and on spans a UUID made once and kept in <data_dir>/service-instance-id."""
    upstream: UpstreamConfig = UpstreamConfig()
    proxy: ProxyConfig = ProxyConfig()
    llm: LlmConfig = LlmConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    gpu: GpuConfig = GpuConfig()
    audit: AuditConfig = AuditConfig()
    rules: RulesConfig = RulesConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def summary(self) -> str:
        health = self.upstream.health
        probe = (
            f"health {health.path} every {format_duration(health.interval)}"
            if health.enabled
            else "health checks off"
        )
        return (
            f"upstream {self.upstream.url}, proxy {self.proxy.listen}, admin {self.admin.listen}, "
            f"data dir {self.data_dir}, {probe}"
        )


# --- loading ----------------------------------------------------------------


@dataclass
class _Layers:
    """The merged raw values and, for every key path, where its value came from."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)

    def set(self, path: KeyPath, value: Any, origin: str) -> None:
        node = self.data
        for depth, key in enumerate(path[:-1]):
            child = node.get(key)  # type: ignore[call-overload]
            if not isinstance(child, dict):
                child = {}
                node[key] = child  # type: ignore[index]
                self.origins.setdefault(path[: depth + 1], origin)
            node = child
        node[path[-1]] = value  # type: ignore[index]
        # A value set from a new source replaces everything below it.
        for known in [p for p in self.origins if p[: len(path)] == path]:
            del self.origins[known]
        self.origins[path] = origin
        self._record_nested_origins(path, value, origin)

    def _record_nested_origins(self, path: KeyPath, value: Any, origin: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                self.origins[path + (key,)] = origin
                self._record_nested_origins(path + (key,), child, origin)

    def origin_of(self, path: KeyPath) -> str | None:
        for length in range(len(path), 0, -1):
            if path[:length] in self.origins:
                return self.origins[path[:length]]
        return None


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[KeyPath, Any] | None = None,
) -> Config:
    """Build the effective config; raise ConfigError listing every problem found."""
    env = os.environ if env is None else env
    layers = _Layers()
    problems: list[str] = []
    if path is not None:
        _read_yaml_file(Path(path), layers, problems)
    _apply_env(env, layers, problems)
    for key_path, value in (flags or {}).items():
        layers.set(key_path, value, f"flag --{_flag_name(key_path)}")
    if problems:
        raise ConfigError(problems)
    try:
        return Config.model_validate(layers.data)
    except ValidationError as exc:
        # pydantic reports in the model's field order; an operator reads the file top to bottom.
        errors = sorted(exc.errors(), key=lambda error: _file_position(layers.origin_of(_error_location(error))))
        raise ConfigError([_describe_error(error, layers) for error in errors]) from None


def _file_position(origin: str | None) -> tuple[int, int, int]:
    """Sort key for a problem's origin: file positions by line and column, then the environment, flags, defaults."""
    found = re.search(r":(\d+):(\d+)$", origin or "")
    return (0, int(found[1]), int(found[2])) if found else (1, 0, 0)


def _error_location(error: Mapping[str, Any]) -> KeyPath:
    # pydantic adds "function-after[...]" steps for validators; they are not keys in the file.
    return tuple(k for k in error["loc"] if not (isinstance(k, str) and k.startswith("function-")))


def _flag_name(key_path: KeyPath) -> str:
    return {
        ("upstream", "url"): "upstream",
        ("proxy", "listen"): "listen",
        ("admin", "listen"): "admin-listen",
        ("data_dir",): "data-dir",
    }.get(key_path, ".".join(map(str, key_path)))


def _read_yaml_file(path: Path, layers: _Layers, problems: list[str]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(f"{path}: config file not found")
        return
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read config file: {exc}")
        return
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML: {exc}")
        return
    except RecursionError:
        problems.append(f"{path}: nested too deeply; expected a config of a few levels")
        return
    if node is None:
        return
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{_mark(path, node)}: expected a mapping of keys at the top level")
        return
    data = _construct_with_origins(node, path, (), layers.origins, problems)
    for key, value in data.items():
        layers.data[key] = value


def _mark(path: Path | str, node: yaml.Node) -> str:
    if isinstance(path, str):
        return path  # an environment variable: its value is one line
    return f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


# Bounds on what a config document may build: a config is a few hundred values, so these
# only stop hostile or broken files ("billion laughs" aliases, self-referencing aliases,
# pathological nesting) before they exhaust time, memory or the stack.
_MAX_YAML_VALUES = 100_000
_MAX_YAML_DEPTH = 64


class _YamlLimit(Exception):
    pass


def _construct_with_origins(
    node: yaml.Node,
    path: Path | str,
    key_path: KeyPath,
    origins: dict[KeyPath, str],
    problems: list[str],
) -> Any:
    """Turn a composed YAML node into plain values, noting each key's line and column.

    Duplicate keys are errors: PyYAML would silently keep the last one, and a
    setting that is not the one the operator reads in the file is a trap.
    Values that YAML cannot construct (a bad tag, a bad merge) and documents
    too large or too deep become problems too, never exceptions.
    """
    budget = [_MAX_YAML_VALUES]
    try:
        return _construct(node, path, key_path, origins, problems, yaml.SafeLoader(""), budget)
    except _YamlLimit as exc:
        problems.append(f"{_mark(path, node)}: {exc}")
        return {}


def _construct(
    node: yaml.Node,
    path: Path | str,
    key_path: KeyPath,
    origins: dict[KeyPath, str],
    problems: list[str],
    constructor: yaml.SafeLoader,
    budget: list[int],
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _YamlLimit(f"expected a config, got more than {_MAX_YAML_VALUES} values (aliases expanding without end?)")
    if len(key_path) > _MAX_YAML_DEPTH:
        raise _YamlLimit(f"expected a config, got nesting more than {_MAX_YAML_DEPTH} levels deep (a self-referencing alias?)")
    if isinstance(node, yaml.MappingNode):
        try:
            constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            problems.append(f"{_mark(path, node)}: {_dotted(key_path)}: cannot merge keys ({_yaml_problem(exc)}); "
                            "expected `<<:` to name a mapping or a list of mappings")
            return {}
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(f"{_mark(path, key_node)}: {_dotted(key_path)}: got a list or mapping as a key; expected a name")
                continue
            key = _scalar(key_node, path, key_path, problems, constructor)
            child_path = key_path + (key,)
            if key in result:
                problems.append(
                    f"{_mark(path, key_node)}: {_dotted(child_path)}: key appears twice; "
                    "expected each key once"
                )
                continue
            origins[child_path] = _mark(path, value_node)
            result[key] = _construct(value_node, path, child_path, origins, problems, constructor, budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            origins[key_path + (index,)] = _mark(path, item_node)
            items.append(_construct(item_node, path, key_path + (index,), origins, problems, constructor, budget))
        return items
    return _scalar(node, path, key_path, problems, constructor)


def _scalar(node: yaml.Node, path: Path | str, key_path: KeyPath, problems: list[str], constructor: yaml.SafeLoader) -> Any:
    try:
        return constructor.construct_object(node, deep=True)
    except Exception as exc:
        # SafeLoader's constructors raise whatever their parsing trips on for a tagged value:
        # ValueError for `!!int x`, IndexError for an empty `!!int`, KeyError, TypeError, ...
        problems.append(
            f"{_mark(path, node)}: {_dotted(key_path)}: got {str(node.value)[:80]!r} tagged {node.tag} "
            f"({_yaml_problem(exc)}); expected a plain value"
        )
        return None


def _yaml_problem(exc: BaseException) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem or exc).splitlines()[0] if (problem or str(exc)) else exc.__class__.__name__


def _apply_env(env: Mapping[str, str], layers: _Layers, problems: list[str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        key_path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(key_path):
            continue
        origin = f"environment variable {name}"
        layers.set(key_path, _env_value(env[name], origin, key_path, problems), origin)


def _env_value(raw: str, origin: str, key_path: KeyPath, problems: list[str]) -> Any:
    # Scalars stay strings (pydantic turns "5" into 5 and "true" into True where
    # the key wants it); only flow collections are parsed, so that lists and
    # mappings can be set from the environment without YAML 1.1's "on"/"no" traps.
    stripped = raw.strip()
    if stripped[:1] not in ("[", "{"):
        return raw
    try:
        node = yaml.compose(stripped, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return raw
    except RecursionError:
        problems.append(f"{origin}: {_dotted(key_path)}: nested too deeply; expected a flat list or mapping")
        return None
    if node is None:
        return raw
    found: list[str] = []
    value = _construct_with_origins(node, origin, key_path, {}, found)
    problems.extend(found)
    return value


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "(top level)"


# pydantic's wording for the common type errors, restated as what an operator should write.
_PLAIN_EXPECTATIONS = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "byte_size": "expected a size such as 64MiB, 10MB, 512KiB or a number of bytes",
    "byte_size_unit": "expected a size unit such as B, KiB, MiB, GiB, KB, MB or GB",
    "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
    "dict_type": "expected a mapping of keys",
    "path_type": "expected a filesystem path",
}


def _describe_error(error: Mapping[str, Any], layers: _Layers) -> str:
    loc = _error_location(error)
    origin = layers.origin_of(loc) or "default"
    where = _dotted(loc)
    if error["type"] == "extra_forbidden":
        return f"{origin}: {where}: unknown key; {_expected_keys(loc)}"
    if error["type"] == "missing":
        return f"{origin}: {where}: required key is missing"
    message = _PLAIN_EXPECTATIONS.get(error["type"]) or str(error["msg"])
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    message = re.sub(r"^Input should be ", "expected ", message)
    value = error.get("input")
    # A value's problem is what it should be ("a duration such as 5s"): "expected" goes in front.
    # A rule across a section's keys is a sentence that says what it expected where it fits.
    if not re.search(r"\bexpected\b", message):
        lower_first = message[1:2].islower()
        message = f"expected {message[:1].lower() if lower_first else message[:1]}{message[1:]}"
    got = "" if isinstance(value, dict) else f"got {value!r}; "
    return f"{origin}: {where}: {got}{message}"


def _expected_keys(loc: KeyPath) -> str:
    model: type[BaseModel] = Config
    annotation: Any = None
    for key in loc[:-1]:
        if annotation is not None:
            # Inside a list or dict field: the index or entry name picks the item's section.
            origin, args = get_origin(annotation), get_args(annotation)
            if origin is list and isinstance(key, int) and args:
                annotation = args[0]
            elif origin is dict and len(args) == 2:
                annotation = args[1]
            else:
                return "this key is not a section"
        else:
            field_info = model.model_fields.get(str(key))
            annotation = field_info.annotation if field_info else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model, annotation = annotation, None
        elif get_origin(annotation) not in (list, dict):
            return "this key is not a section"
    if annotation is not None:
        return "this key is not a section"
    valid = sorted(info.alias or name for name, info in model.model_fields.items())
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"expected one of: {', '.join(valid)}{hint}"


def _describe_type(info: Any, default: Any) -> str:
    validators = {getattr(item, "func", None) for item in info.metadata}
    if parse_duration in validators:
        return "duration"
    if parse_listen_address in validators:
        return "HOST:PORT"
    if parse_upstream_address in validators:
        return "URL"
    if info.annotation is ByteSize:
        return "size"
    if "Literal" in str(info.annotation):
        return " \\| ".join(f"`{choice}`" for choice in info.annotation.__args__)
    if isinstance(default, dict):
        return "mapping"
    if isinstance(default, list):
        return "list"
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, float) or info.annotation in (float, float | None):
        return "number"
    return "path" if info.annotation is Path else "string"


def config_reference() -> str:
    """The configuration reference in Markdown, generated from the models above."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `sidecar config-reference`; do not edit by hand.",
        "",
        "Precedence, lowest first: defaults, the YAML file (`--config FILE` or `$SIDECAR_CONFIG`), "
        "environment variables, command-line flags. The environment variable for a key is `SIDECAR_` "
        "followed by its path in upper case with `__` between levels. Durations are written like "
        "Prometheus durations (`250ms`, `5s`, `1h30m`) or as seconds; sizes as bytes or with a unit "
        "(`64MiB`, `10MB`). Unknown keys are errors.",
        "",
    ]
    defaults = effective_config(Config(data_dir=Path("~/.local/share/inference-sidecar")))

    def walk(model: type[BaseModel], values: dict[str, Any], prefix: str) -> None:
        rows: list[str] = []
        sections: list[tuple[str, type[BaseModel], dict[str, Any]]] = []
        lists: list[tuple[str, type[BaseModel]]] = []
        for name, info in model.model_fields.items():
            path = f"{prefix}{name}"
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                sections.append((path, info.annotation, values[name]))
                continue
            item = _list_item_section(info.annotation)
            if item is not None:
                lists.append((f"{path}[]", item))
            env = ENV_PREFIX + path.replace(".", "__").upper()
            description = " ".join((info.description or "").split())
            kind = _describe_type(info, values[name])
            default = str(values[name]).lower() if isinstance(values[name], bool) else values[name]
            rows.append(f"| `{path}` | `{default}` | {kind} | `{env}` | {description} |")
        if rows:
            title = f"`{prefix.rstrip('.')}`" if prefix else "Top level"
            doc = " ".join((model.__doc__ or "").split()) if prefix else ""
            lines.extend([f"## {title}", ""] + ([doc, ""] if doc else []))
            lines.extend(["| key | default | type | environment | meaning |", "|---|---|---|---|---|", *rows, ""])
        for path, section, section_values in sections:
            walk(section, section_values, f"{path}.")
        for path, item in lists:
            list_items(item, path)

    def list_items(model: type[BaseModel], path: str) -> None:
        # Entries of a list have no environment variable of their own: they are set in the file.
        rows = []
        for name, info in model.model_fields.items():
            key = info.alias or name
            if info.is_required():
                default = "required"
            else:
                value = info.get_default(call_default_factory=True)
                default = f"`{_format_default(_describe_type(info, value), value)}`"
            description = " ".join((info.description or "").split())
            rows.append(f"| `{path}.{key}` | {default} | {_describe_type(info, info.default)} | {description} |")
        doc = " ".join((model.__doc__ or "").split())
        lines.extend([f"## `{path}`", "", doc, "", "| key | default | type | meaning |", "|---|---|---|---|", *rows, ""])

    walk(Config, defaults, "")
    return "\n".join(lines)


def _list_item_section(annotation: Any) -> type[BaseModel] | None:
    """The section type of a `list[Section]` field, else None."""
    args = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) is list and len(args) == 1:
        item = args[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _format_default(kind: str, value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if kind == "duration":
        return format_duration(value)
    return value


def effective_config(config: Config) -> dict[str, Any]:
    """The config as plain JSON-able values, in the units an operator writes (secrets included)."""
    return config.model_dump(mode="json", by_alias=True)


MASK = "********"
_URL_PASSWORD = re.compile(r"(?<=://)([^/@:\s]*):[^/@\s]*@")


def masked_config(config: Config) -> dict[str, Any]:
    """The effective config for showing: every secret set is replaced by a mask, and passwords in
    URLs (https://user:pass@host) too. An empty secret stays empty, so one can see it is unset."""
    return _mask(config, effective_config(config))


def _mask(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    for name, info in type(model).model_fields.items():
        key = info.alias or name
        if key not in data:
            continue
        value, raw = data[key], getattr(model, name)
        if _is_secret(info):
            data[key] = _masked_value(value)
        elif isinstance(raw, BaseModel) and isinstance(value, dict):
            _mask(raw, value)
        elif isinstance(raw, list) and isinstance(value, list):
            data[key] = [_mask(item, part) if isinstance(item, BaseModel) else _unpassword(part)
                         for item, part in zip(raw, value, strict=True)]  # fmt: skip
        elif isinstance(raw, dict) and isinstance(value, dict):
            data[key] = {k: _mask(raw[k], v) if isinstance(raw.get(k), BaseModel) else _unpassword(v)
                         for k, v in value.items()}  # fmt: skip
        else:
            data[key] = _unpassword(value)
    return data


def _is_secret(info: Any) -> bool:
    """A `Secret` field, or a container of them (dict[str, Secret])."""
    if SECRET_MARKER in info.metadata:
        return True
    pending = [info.annotation]
    while pending:
        annotation = pending.pop()
        if SECRET_MARKER in getattr(annotation, "__metadata__", ()):
            return True
        pending.extend(get_args(annotation))
    return False


def _masked_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: MASK if item else item for key, item in value.items()}
    return MASK if value else value


def _unpassword(value: Any) -> Any:
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", value) if isinstance(value, str) and "@" in value else value
