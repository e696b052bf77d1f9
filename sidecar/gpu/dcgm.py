"""NVIDIA dcgm-exporter's /metrics: scraped into GpuSamples and, when asked, re-exposed unchanged.

dcgm-exporter gives what NVML alone does not: the profiling fields (DCGM_FI_PROF_*: SM, tensor pipe
and DRAM activity). The scraper reads its Prometheus text every `interval`, turns each GPU (or MIG
instance) into one `GpuSample` whose fields keep dcgm-exporter's names and units, and judges
freshness: readings are stale when the exporter has not answered for `stale_after`, or when a GPU's
values, energy counter included, have not moved for that long (a hung DCGM host engine keeps
serving its last values). Stale readings are published as `GpuState.STALE` and are no longer
re-exposed, so Prometheus sees the series end instead of flat-lining.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import aiohttp
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from sidecar import __version__
from sidecar.config import DcgmExporterConfig
from sidecar.exchange import GpuEvent, GpuSample, GpuState

logger = logging.getLogger(__name__)

SOURCE = "dcgm-exporter"
ENERGY_FIELD = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
MAX_PAYLOAD_BYTES = 16 << 20
"""An answer larger than this is refused rather than buffered (eight GPUs with every field come to under 1 MiB)."""

_ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"

GpuKey = tuple[str, str, str | None]
"""(gpu index, UUID, GPU instance id): one GPU, or one MIG instance of it."""

# DCGM's "no value" sentinels (blank, not found, not supported, not permissioned), int32, int64 and
# fp64. Current dcgm-exporter leaves such series out; old builds printed them as numbers
# (9223372036854775794). Read as floats, the four int64 ones all round to 2**63.
_DCGM_BLANKS = frozenset(
    [float(2**63)]
    + [float(0x7FFFFFF0 + i) for i in range(4)]
    + [140737488355328.0 + i for i in range(4)]
)


class _ScrapeError(Exception):
    """dcgm-exporter could not be read, or what it answered is not usable."""


# --- parsing ------------------------------------------------------------------


def parse_dcgm_exporter(text: str, at: float, hostname_fallback: str) -> list[GpuSample]:
    """One GpuSample per GPU (or MIG instance) in a dcgm-exporter payload, in the order they appear.

    Raises ValueError (or another exception from prometheus_client's parser) when the text is not
    Prometheus text format.
    """
    return _samples_from_families(list(text_string_to_metric_families(text)), at, hostname_fallback)


def _samples_from_families(families: Iterable[Metric], at: float, hostname_fallback: str) -> list[GpuSample]:
    readings: dict[GpuKey, tuple[Mapping[str, str], dict[str, float]]] = {}
    for family in families:
        for sample in family.samples:
            key = _gpu_key(sample.labels)
            # The parser returns integers as int; DCGM's int64 sentinels only match once made floats.
            value = float(sample.value)
            if key is None or value in _DCGM_BLANKS:
                continue
            labels, fields = readings.setdefault(key, (sample.labels, {}))
            fields[_source_name(family, sample)] = value
    return [
        GpuSample(
            at=at,
            source=SOURCE,
            gpu=gpu,
            uuid=uuid,
            pci_bus_id=labels.get("pci_bus_id", ""),
            device=labels.get("device", ""),
            model_name=labels.get("modelName", ""),
            hostname=labels.get("Hostname") or hostname_fallback,
            state=GpuState.OK,
            fields=fields,
            gpu_instance_profile=labels.get("GPU_I_PROFILE") or None,
            gpu_instance_id=instance,
            driver_version=labels.get("DCGM_FI_DRIVER_VERSION", ""),
        )
        for (gpu, uuid, instance), (labels, fields) in readings.items()
    ]


def _gpu_key(labels: Mapping[str, str]) -> GpuKey | None:
    """Which GPU (or MIG instance) a dcgm-exporter series belongs to; None for series of no GPU."""
    gpu = labels.get("gpu")
    if gpu is None:
        return None  # NVSwitch, NVLink and CPU series carry nvswitch/nvlink/cpu labels instead
    # --use-old-namespace spells the label `uuid`.
    uuid = labels.get("UUID", labels.get("uuid", ""))
    return gpu, uuid, labels.get("GPU_I_ID") or None


def _source_name(family: Metric, sample: Sample) -> str:
    """The name a sample had in the exporter's text.

    prometheus_client's parser renames every counter sample to end in `_total`: a counter written
    `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` comes back as family `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`
    with samples `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total`, and one written `foo_total` as family
    `foo` with samples `foo_total`. Only case tells them apart afterwards: the parser adds or strips
    a lower-case `_total`, and dcgm-exporter's names, DCGM field names, are upper case.
    """
    if family.type == "counter" and sample.name == family.name + "_total" and family.name.isupper():
        return family.name
    return sample.name


# --- scraping -----------------------------------------------------------------


@dataclass(slots=True)
class _Gpu:
    """What the scraper knows of one GPU between scrapes."""

    reading: GpuSample
    """The latest reading dcgm-exporter gave (state ok)."""
    listed_at: float
    """The last successful scrape that listed this GPU."""
    unchanged_since: float
    """The first scrape that saw exactly `reading.fields`."""
    reported: GpuSample
    """The reading as last published: `reading`, or a stale copy of it."""


class DcgmExporterScraper:
    """Scrapes dcgm-exporter every `interval` on a task of its own; never raises out of it."""

    def __init__(
        self,
        config: DcgmExporterConfig,
        hostname: str,
        on_sample: Callable[[GpuSample], None],
        on_event: Callable[[GpuEvent], None],
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._hostname = hostname
        self._on_sample = on_sample
        self._on_event = on_event
        self._session_factory = session_factory
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._gpus: dict[GpuKey, _Gpu] = {}
        self._families: list[Metric] = []
        self._up = False
        self._last_success = 0.0
        self._scrape_errors = 0
        self._last_error: str | None = None

    @property
    def up(self) -> bool:
        """True when the last scrape succeeded."""
        return self._up

    @property
    def last_success(self) -> float:
        """Wall-clock time of the last successful scrape; 0 before the first."""
        return self._last_success

    @property
    def scrape_errors(self) -> int:
        return self._scrape_errors

    @property
    def last_error(self) -> str | None:
        """Why the last scrape failed; None when it succeeded."""
        return self._last_error

    def exporter_stale(self) -> bool:
        """True when no scrape has succeeded within `stale_after` (or none ever has)."""
        return self._last_success == 0.0 or self._clock() - self._last_success > self._config.stale_after

    def latest(self) -> list[GpuSample]:
        """The latest reading of every GPU seen, stale ones marked `GpuState.STALE`."""
        return [gpu.reported for gpu in self._gpus.values()]

    def fresh_families(self) -> list[Metric]:
        """The last scrape's metric families as parsed, less the series of GPUs now stale.

        Empty while the exporter itself is stale. Families are copies; the caller may keep them.
        """
        if self.exporter_stale():
            return []
        stale = {key for key, gpu in self._gpus.items() if gpu.reported.state is GpuState.STALE}
        fresh = []
        for family in self._families:
            copy = Metric(family.name, family.documentation, family.type)
            copy.samples = [s for s in family.samples if _gpu_key(s.labels) not in stale]
            fresh.append(copy)
        return fresh

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._session is None:
            self._session = self._session_factory()
        self._task = asyncio.create_task(self._run(), name="dcgm-exporter-scraper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.scrape_once()
            except Exception:  # a bug here must not end the scraping
                logger.exception("dcgm-exporter scrape failed unexpectedly")
            next_at += self._config.interval
            now = loop.time()
            if next_at < now:  # the scrape overran: skip the missed ticks rather than bunch them up
                next_at = now + self._config.interval
            await asyncio.sleep(next_at - now)

    async def scrape_once(self) -> bool:
        """Scrape once, judge freshness, publish; True when the scrape succeeded."""
        try:
            text = await self._fetch()
            families = await asyncio.to_thread(_parse_families, text)
            now = self._clock()
            readings = _samples_from_families(families, now, self._hostname)
            if not readings:
                raise _ScrapeError("no GPU series in the answer (is the URL dcgm-exporter's /metrics?)")
        except _ScrapeError as exc:
            self._failed(str(exc), self._clock())
            return False
        self._succeeded(families, readings, now)
        return True

    async def _fetch(self) -> str:
        if self._session is None:
            raise _ScrapeError("the scraper has not been started")
        config = self._config
        try:
            async with self._session.get(
                config.url,
                headers={"Accept": _ACCEPT, "User-Agent": f"inference-sidecar/{__version__}"},
                timeout=aiohttp.ClientTimeout(total=config.timeout),
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    raise _ScrapeError(f"status {response.status} from {config.url}")
                body = await _read_bounded(response, MAX_PAYLOAD_BYTES)
                charset = response.charset or "utf-8"
        except TimeoutError:
            raise _ScrapeError(f"timed out after {config.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise _ScrapeError(f"connect to {config.url} failed: {exc.os_error.strerror or exc.os_error}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _ScrapeError(f"{exc.__class__.__name__}: {exc}") from None
        try:
            return body.decode(charset)
        except (UnicodeDecodeError, LookupError) as exc:
            raise _ScrapeError(f"answer is not {charset} text: {exc}") from None

    def _succeeded(self, families: list[Metric], readings: list[GpuSample], now: float) -> None:
        if not self._up:
            logger.info("dcgm-exporter answering", extra={"url": self._config.url, "gpus": len(readings)})
        self._up = True
        self._last_success = now
        self._last_error = None
        self._families = families
        listed = set()
        for reading in readings:
            key = (reading.gpu, reading.uuid, reading.gpu_instance_id)
            listed.add(key)
            known = self._gpus.get(key)
            if known is None:
                self._gpus[key] = _Gpu(reading, now, now, reading)
                continue
            if reading.fields != known.reading.fields:
                known.unchanged_since = now
            known.reading = reading
            known.listed_at = now
        self._judge(now, listed)

    def _failed(self, error: str, now: float) -> None:
        if self._up or self._scrape_errors == 0:
            logger.warning("dcgm-exporter scrape failed", extra={"url": self._config.url, "error": error})
        self._up = False
        self._scrape_errors += 1
        self._last_error = error
        self._judge(now, set())

    def _judge(self, now: float, listed: set[GpuKey]) -> None:
        """Decide each GPU's freshness, announce changes, and publish what there is to publish."""
        for key, gpu in self._gpus.items():
            reason = self._stale_reason(gpu, now)
            was_stale = gpu.reported.state is GpuState.STALE
            if reason is None:
                gpu.reported = gpu.reading
                if was_stale:
                    self._event(now, "recovered", key, f"dcgm-exporter readings of {_gpu_name(key)} are fresh again")
                if key in listed:
                    self._publish(gpu.reported)
                continue
            gpu.reported = dataclasses.replace(gpu.reading, state=GpuState.STALE, error=reason)
            if not was_stale:
                self._event(now, "stale", key, f"dcgm-exporter readings of {_gpu_name(key)} are stale: {reason}")
            self._publish(gpu.reported)

    def _stale_reason(self, gpu: _Gpu, now: float) -> str | None:
        stale_after = self._config.stale_after
        silent = now - gpu.listed_at
        if silent > stale_after:
            if not self._up:
                return f"dcgm-exporter has not answered for {_format_seconds(silent)} ({self._last_error})"
            return f"missing from dcgm-exporter's answers for {_format_seconds(silent)}"
        frozen = now - gpu.unchanged_since
        # The energy counter moves whenever the GPU draws power, so with it present, values that
        # do not move mean readings that are not being refreshed; without it, an idle GPU would
        # look the same.
        if ENERGY_FIELD in gpu.reading.fields and frozen > stale_after:
            return f"values, energy counter included, unchanged for {_format_seconds(frozen)}"
        return None

    def _publish(self, sample: GpuSample) -> None:
        try:
            self._on_sample(sample)
        except Exception:
            logger.exception("a GPU sample observer failed")

    def _event(self, now: float, kind: str, key: GpuKey, message: str) -> None:
        log = logger.warning if kind == "stale" else logger.info
        log(message, extra={"gpu": key[0], "uuid": key[1], "gpu_instance_id": key[2]})
        try:
            self._on_event(GpuEvent(at=now, kind=kind, gpu=key[0], uuid=key[1] or None, message=message))
        except Exception:
            logger.exception("a GPU event observer failed")


def _parse_families(text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises bare ValueErrors, IndexErrors and the like
        detail = f": {exc}" if str(exc) else ""
        raise _ScrapeError(f"malformed answer, not Prometheus text format ({exc.__class__.__name__}{detail})") from None


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise _ScrapeError(f"answer of {response.content_length} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 << 10):
        size += len(chunk)
        if size > limit:
            raise _ScrapeError(f"answer is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _gpu_name(key: GpuKey) -> str:
    gpu, uuid, instance = key
    text = f"GPU {gpu}" + (f" ({uuid})" if uuid else "")
    return text + (f" MIG instance {instance}" if instance is not None else "")


def _format_seconds(value: float) -> str:
    return f"{round(value, 1):g}s"


# --- re-exposition ------------------------------------------------------------


class DcgmReexportCollector(Collector):
    """dcgm-exporter's series on the sidecar's /metrics (when `reexpose`), and the scraper's health.

    Re-exposed families keep their names, types, help, labels and values. dcgm-exporter's
    counters (e.g. DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION) have no `_total`: they are yielded as
    counter families whose samples keep that exact name, which the sidecar's /metrics encoder
    (`sidecar.telemetry.exposition`) writes as dcgm-exporter does, and as `unknown` in OpenMetrics.
    """

    def __init__(
        self,
        scraper: DcgmExporterScraper,
        *,
        reexpose: bool,
        exclude: Callable[[], AbstractSet[str]] = frozenset,
    ) -> None:
        """`exclude`: family names another collector (NVML's) serves at the moment, which must not
        appear twice. Asked at each collection: while NVML is down, dcgm-exporter's series stand in."""
        self._scraper = scraper
        self._reexpose = reexpose
        self._exclude = exclude

    def describe(self) -> Iterator[Metric]:
        # Only the sidecar's own families: the re-exposed ones depend on what the exporter serves.
        yield from self._own_families()

    def collect(self) -> Iterator[Metric]:
        if self._reexpose:
            families = self._scraper.fresh_families()
            excluded = self._exclude()
            if excluded:
                families = [family for family in families if family.name not in excluded]
            yield from _exposable(families)
        yield from self._own_families()

    def _own_families(self) -> Iterator[Metric]:
        scraper = self._scraper
        yield GaugeMetricFamily(
            "sidecar_dcgm_exporter_up",
            "1 when the last scrape of dcgm-exporter succeeded.",
            value=1 if scraper.up else 0,
        )
        yield CounterMetricFamily(
            "sidecar_dcgm_exporter_scrape_errors",
            "Scrapes of dcgm-exporter that failed: unreachable, timed out, error status or malformed answer.",
            value=scraper.scrape_errors,
        )
        yield GaugeMetricFamily(
            "sidecar_dcgm_exporter_last_success_timestamp_seconds",
            "Unix time of the last successful scrape of dcgm-exporter; 0 before the first.",
            value=scraper.last_success,
        )


def _exposable(families: Iterable[Metric]) -> Iterator[Metric]:
    """Families ready for prometheus-client's encoders, one per name, empty ones left out."""
    merged: dict[str, Metric] = {}
    for family in families:
        if not family.samples:
            continue
        if family.type == "counter" and all(_source_name(family, s) == family.name for s in family.samples):
            # The parser named these samples `<name>_total`; dcgm-exporter wrote them `<name>`.
            exposed = Metric(family.name, family.documentation, "counter")
            exposed.samples = [s._replace(name=family.name) for s in family.samples]
        else:
            exposed = family
        # The parser makes a one-sample family of every series that does not follow its own
        # TYPE line; two families of one name would make Prometheus reject the whole scrape.
        known = merged.get(exposed.name)
        if known is None:
            merged[exposed.name] = Metric(exposed.name, exposed.documentation, exposed.type)
            merged[exposed.name].samples = list(exposed.samples)
        else:
            known.samples.extend(exposed.samples)
    yield from merged.values()
