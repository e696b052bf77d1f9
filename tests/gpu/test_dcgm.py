"""dcgm-exporter scraping: parsing under dcgm's names, staleness, and re-exposition."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import DcgmExporterConfig
from sidecar.exchange import GpuEvent, GpuSample, GpuState
from sidecar.gpu.dcgm import DcgmExporterScraper, DcgmReexportCollector, parse_dcgm_exporter
from sidecar.telemetry.exposition import choose_encoder
from tests.support.tools import require_tool, serve_on_loopback, wait_for

RECORDED = (Path(__file__).parent / "data" / "dcgm-exporter.txt").read_text()

GPU0 = "GPU-3b4f6e2a-9c71-5d08-8e2f-0a6c1b7d4e95"
GPU1 = "GPU-c81e0d57-2f4a-b396-71de-5a09f3c2b8e6"

RECORDED_FIELDS = {
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_SM_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
}
RECORDED_COUNTERS = {
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
}
OWN_METRICS = {
    "sidecar_dcgm_exporter_up",
    "sidecar_dcgm_exporter_scrape_errors",
    "sidecar_dcgm_exporter_last_success_timestamp_seconds",
}

STALE_AFTER = 0.3
"""Short enough for staleness tests; tests that must not see staleness use LONG instead."""
LONG = 60.0


def moving(text: str, gpus: tuple[str, ...] = ("0", "1")) -> Callable[[], str]:
    """The payload with the energy counter of `gpus` advancing by 1 J at every request."""
    requests = itertools.count(1)
    line = re.compile(r'^(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\{gpu="(\d+)".*\}) (\d+)$', re.MULTILINE)

    def body() -> str:
        step = next(requests) * 1000
        return line.sub(lambda m: f"{m[1]} {int(m[3]) + step}" if m[2] in gpus else m[0], text)

    return body


class FakeExporter:
    """A dcgm-exporter stand-in on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(self) -> None:
        self.body: Callable[[], str] = moving(RECORDED)
        self.status = 200
        self.delay = 0.0
        self.requests: list[dict[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        if self.port == 0:
            self._runner, self.port = await serve_on_loopback(app)
            return
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=self.body(), content_type="text/plain", charset="utf-8")


@dataclass
class Scraped:
    """A running scraper with everything it published and a registry holding its collector."""

    scraper: DcgmExporterScraper
    registry: CollectorRegistry
    samples: list[GpuSample] = field(default_factory=list)
    events: list[GpuEvent] = field(default_factory=list)

    def events_of(self, kind: str) -> list[GpuEvent]:
        return [event for event in self.events if event.kind == kind]

    def exposed_text(self, accept: str = "") -> str:
        """What the sidecar's /metrics answers a scraper sending `accept` (none: the Prometheus text format)."""
        encoder, _ = choose_encoder(accept)
        return encoder(self.registry).decode()

    def exposed(self) -> dict[str, Metric]:
        return {family.name: family for family in text_string_to_metric_families(self.exposed_text())}

    def exposed_value(self, name: str) -> float:
        (sample,) = self.exposed()[name].samples
        return sample.value


ScraperFactory = Callable[..., Awaitable[Scraped]]


@pytest.fixture
async def exporter() -> AsyncIterator[FakeExporter]:
    server = FakeExporter()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_scraper() -> AsyncIterator[ScraperFactory]:
    started: list[DcgmExporterScraper] = []

    async def factory(
        url: str, *, stale_after: float = LONG, timeout: float = 0.5, reexpose: bool = True, on_sample=None
    ) -> Scraped:
        config = DcgmExporterConfig(
            enabled=True, url=url, interval=0.05, timeout=timeout, stale_after=stale_after, reexpose=reexpose
        )
        samples: list[GpuSample] = []
        events: list[GpuEvent] = []
        scraper = DcgmExporterScraper(
            config, "sidecar-host", on_sample=on_sample or samples.append, on_event=events.append
        )
        registry = CollectorRegistry(auto_describe=True)
        registry.register(DcgmReexportCollector(scraper, reexpose=reexpose))
        await scraper.start()
        started.append(scraper)
        return Scraped(scraper, registry, samples, events)

    yield factory
    for scraper in started:
        await scraper.stop()


def dcgm_families(families: dict[str, Metric]) -> dict[str, Metric]:
    return {name: family for name, family in families.items() if name.startswith("DCGM_")}


# --- parsing --------------------------------------------------------------------------------------


def test_recorded_payload_gives_one_sample_per_gpu_under_dcgm_names():
    samples = parse_dcgm_exporter(RECORDED, at=1.7e9, hostname_fallback="sidecar-host")

    assert [(s.gpu, s.uuid) for s in samples] == [("0", GPU0), ("1", GPU1)]
    first, second = samples
    assert (first.pci_bus_id, first.device, first.model_name, first.hostname) == (
        "00000000:18:00.0",
        "nvidia0",
        "NVIDIA H100 80GB HBM3",
        "gpu-node-07",
    )
    assert (second.pci_bus_id, second.device) == ("00000000:2A:00.0", "nvidia1")
    for sample in samples:
        assert (sample.at, sample.source, sample.state, sample.error) == (1.7e9, "dcgm-exporter", GpuState.OK, None)
        assert (sample.gpu_instance_profile, sample.gpu_instance_id) == (None, None)
        # Counters keep their exact names: the parser's `_total` is not theirs.
        assert set(sample.fields) == RECORDED_FIELDS
    assert first.fields["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == 81537290447
    assert first.fields["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] == 28135
    assert first.fields["DCGM_FI_DEV_POWER_USAGE"] == 512.482
    assert first.fields["DCGM_FI_DEV_XID_ERRORS"] == 0
    assert first.fields["DCGM_FI_DEV_FB_USED"] == 74215
    assert first.fields["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] == 0.873412
    assert first.fields["DCGM_FI_PROF_SM_ACTIVE"] == 0.79412
    assert first.fields["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"] == 0.311835
    assert first.fields["DCGM_FI_PROF_DRAM_ACTIVE"] == 0.582746
    assert first.fields["DCGM_FI_PROF_PCIE_TX_BYTES"] == 38562911
    assert first.fields["DCGM_FI_PROF_PCIE_RX_BYTES"] == 112405317
    assert second.fields["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == 79204118392
    assert second.fields["DCGM_FI_DEV_GPU_TEMP"] == 53


MIG_PAYLOAD = """\
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a",pci_bus_id="00000000:3B:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB"} 41
# HELP DCGM_FI_PROF_GR_ENGINE_ACTIVE Ratio of time the graphics engine is active.
# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-a",pci_bus_id="00000000:3B:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",GPU_I_PROFILE="3g.40gb",GPU_I_ID="1"} 0.250000
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-a",pci_bus_id="00000000:3B:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",GPU_I_PROFILE="3g.40gb",GPU_I_ID="2"} 0.500000
"""


def test_mig_instances_are_samples_of_their_own_and_hostname_falls_back():
    whole, first, second = parse_dcgm_exporter(MIG_PAYLOAD, at=1.0, hostname_fallback="sidecar-host")

    assert (whole.gpu_instance_id, whole.gpu_instance_profile, dict(whole.fields)) == (
        None,
        None,
        {"DCGM_FI_DEV_GPU_TEMP": 41},
    )
    assert (first.gpu_instance_id, first.gpu_instance_profile, dict(first.fields)) == (
        "1",
        "3g.40gb",
        {"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.25},
    )
    assert (second.gpu_instance_id, second.fields["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]) == ("2", 0.5)
    assert {s.hostname for s in (whole, first, second)} == {"sidecar-host"}
    assert {s.uuid for s in (whole, first, second)} == {"GPU-a"}


def test_dcgm_blank_values_are_absent_and_series_of_no_gpu_are_ignored():
    # Old exporters printed DCGM's "not supported" sentinel as a number; NVSwitch series have no gpu label.
    payload = """\
# HELP DCGM_FI_DEV_MEMORY_TEMP Memory temperature (in C).
# TYPE DCGM_FI_DEV_MEMORY_TEMP gauge
DCGM_FI_DEV_MEMORY_TEMP{gpu="0", UUID="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"} 9223372036854775794
# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{gpu="0", UUID="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"} 139
# HELP DCGM_FI_DEV_NVSWITCH_TEMPERATURE_CURRENT NVSwitch current temperature.
# TYPE DCGM_FI_DEV_NVSWITCH_TEMPERATURE_CURRENT gauge
DCGM_FI_DEV_NVSWITCH_TEMPERATURE_CURRENT{nvswitch="0",Hostname="node"} 38
"""
    (sample,) = parse_dcgm_exporter(payload, at=1.0, hostname_fallback="sidecar-host")

    assert dict(sample.fields) == {"DCGM_FI_DEV_SM_CLOCK": 139}
    assert (sample.gpu, sample.uuid, sample.pci_bus_id) == ("0", "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52", "")


def test_malformed_text_raises_value_error():
    with pytest.raises(ValueError):
        parse_dcgm_exporter('DCGM_FI_DEV_SM_CLOCK{gpu="0" 139\n', at=1.0, hostname_fallback="h")


# --- scraping and re-exposition ------------------------------------------------------------------


async def test_scraper_reads_the_payload_into_samples(exporter: FakeExporter, make_scraper: ScraperFactory):
    exporter.body = lambda: RECORDED
    scraped = await make_scraper(exporter.url)
    await wait_for(lambda: len(scraped.samples) >= 2, what="the first scrape")

    scraper = scraped.scraper
    assert scraper.up and scraper.last_success > 0 and scraper.scrape_errors == 0 and scraper.last_error is None
    expected = parse_dcgm_exporter(RECORDED, at=0.0, hostname_fallback="sidecar-host")
    assert [dataclasses.replace(s, at=0.0) for s in scraper.latest()] == expected
    assert [dataclasses.replace(s, at=0.0) for s in scraped.samples[:2]] == expected
    assert scraped.samples[0].at == scraped.samples[1].at == pytest.approx(scraper.last_success)
    assert scraped.events == []
    assert "text/plain" in exporter.requests[0]["Accept"]


async def test_reexposed_families_match_the_recorded_ones(exporter: FakeExporter, make_scraper: ScraperFactory):
    exporter.body = lambda: RECORDED
    scraped = await make_scraper(exporter.url)
    await wait_for(lambda: scraped.scraper.up, what="the first scrape")

    recorded = {family.name: family for family in text_string_to_metric_families(RECORDED)}
    exposed = scraped.exposed()
    assert set(dcgm_families(exposed)) == set(recorded) == RECORDED_FIELDS
    assert OWN_METRICS <= set(exposed)
    for name, original in recorded.items():
        family = exposed[name]
        assert family.documentation == original.documentation
        assert family.type == original.type, name
        assert [s.labels for s in family.samples] == [s.labels for s in original.samples]
        assert [s.value for s in family.samples] == [s.value for s in original.samples]

    # On the wire: series under dcgm-exporter's exact names and types, label values escaped as they came.
    text = scraped.exposed_text()
    for name in RECORDED_COUNTERS:
        assert f"\n# TYPE {name} counter\n{name}{{" in text, name
        assert f"{name}_total" not in text
    assert 'err_msg="No Error"' in text
    # OpenMetrics has no counter without `_total`: the same names, typed unknown, and a valid exposition.
    openmetrics = scraped.exposed_text("application/openmetrics-text; version=1.0.0")
    assert "\n# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in openmetrics
    parsed = {family.name: family for family in parse_openmetrics(openmetrics)}
    assert {parsed[name].type for name in RECORDED_COUNTERS} == {"unknown"}
    assert scraped.exposed_value("sidecar_dcgm_exporter_up") == 1
    assert scraped.exposed_value("sidecar_dcgm_exporter_last_success_timestamp_seconds") == scraped.scraper.last_success


async def test_recorded_and_reexposed_text_parse_with_prometheus(exporter: FakeExporter, make_scraper: ScraperFactory):
    promtool = require_tool("promtool")
    exporter.body = lambda: RECORDED
    scraped = await make_scraper(exporter.url)
    await wait_for(lambda: scraped.scraper.up, what="the first scrape")

    for text in (RECORDED, scraped.exposed_text()):
        # Exit 3 is lint findings (dcgm-exporter's names break Prometheus's naming conventions); 1 is a parse error.
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert result.returncode in (0, 3), result.stdout + result.stderr
        assert "error while linting" not in result.stdout + result.stderr


async def test_reexpose_off_exposes_only_the_scraper_health(exporter: FakeExporter, make_scraper: ScraperFactory):
    scraped = await make_scraper(exporter.url, reexpose=False)
    await wait_for(lambda: scraped.scraper.up, what="the first scrape")

    assert set(scraped.exposed()) == OWN_METRICS
    assert scraped.exposed_value("sidecar_dcgm_exporter_up") == 1


async def test_exporter_down_past_stale_after_makes_samples_stale_until_it_answers_again(
    exporter: FakeExporter, make_scraper: ScraperFactory
):
    scraped = await make_scraper(exporter.url, stale_after=STALE_AFTER)
    await wait_for(lambda: scraped.scraper.up, what="the first scrape")
    assert scraped.events == []

    await exporter.stop()
    await wait_for(lambda: len(scraped.events_of("stale")) == 2, what="both GPUs going stale")

    scraper = scraped.scraper
    assert not scraper.up and scraper.scrape_errors > 0
    assert "connect" in (scraper.last_error or "")
    assert {(e.gpu, e.uuid) for e in scraped.events_of("stale")} == {("0", GPU0), ("1", GPU1)}
    latest = scraper.latest()
    assert [s.state for s in latest] == [GpuState.STALE, GpuState.STALE]
    assert all("has not answered" in (s.error or "") for s in latest)
    assert scraped.samples[-1].state is GpuState.STALE  # published as stale, never as fresh
    exposed = scraped.exposed()
    assert dcgm_families(exposed) == {}
    assert exposed["sidecar_dcgm_exporter_up"].samples[0].value == 0
    assert exposed["sidecar_dcgm_exporter_scrape_errors"].samples[0].value == scraper.scrape_errors

    await exporter.start()
    await wait_for(lambda: len(scraped.events_of("recovered")) == 2, what="both GPUs recovering")

    assert scraper.up
    assert [s.state for s in scraper.latest()] == [GpuState.OK, GpuState.OK]
    assert set(dcgm_families(scraped.exposed())) == RECORDED_FIELDS
    assert len(scraped.events_of("stale")) == 2  # announced once, not at every failed scrape


async def test_frozen_values_make_that_gpu_stale_until_they_move(exporter: FakeExporter, make_scraper: ScraperFactory):
    exporter.body = moving(RECORDED, gpus=("0",))  # GPU 1's readings, energy included, stop moving
    scraped = await make_scraper(exporter.url, stale_after=STALE_AFTER)
    await wait_for(lambda: len(scraped.events_of("stale")) == 1, what="GPU 1 going stale")

    scraper = scraped.scraper
    (event,) = scraped.events
    assert (event.gpu, event.uuid) == ("1", GPU1)
    assert scraper.up and scraper.scrape_errors == 0
    fresh, frozen = scraper.latest()
    assert (fresh.state, frozen.state) == (GpuState.OK, GpuState.STALE)
    assert "unchanged" in (frozen.error or "")
    # GPU 1's series disappear from the re-exposition; GPU 0's stay.
    for family in dcgm_families(scraped.exposed()).values():
        assert {s.labels["gpu"] for s in family.samples} == {"0"}, family.name

    exporter.body = moving(RECORDED)
    await wait_for(lambda: len(scraped.events_of("recovered")) == 1, what="GPU 1 recovering")

    assert scraped.events_of("recovered")[0].gpu == "1"
    assert [s.state for s in scraper.latest()] == [GpuState.OK, GpuState.OK]
    for family in dcgm_families(scraped.exposed()).values():
        assert {s.labels["gpu"] for s in family.samples} == {"0", "1"}, family.name


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, 'DCGM_FI_DEV_SM_CLOCK{gpu="0" 139\n', "malformed"),
        (200, "<html><body>Not the exporter</body></html>\n", "malformed"),
        (200, "", "no GPU series"),
        (500, "collector failed", "status 500"),
    ],
)
async def test_bad_answers_are_counted_and_scraping_goes_on(
    exporter: FakeExporter, make_scraper: ScraperFactory, status: int, body: str, error: str
):
    exporter.status, exporter.body = status, lambda: body
    scraped = await make_scraper(exporter.url)
    await wait_for(lambda: scraped.scraper.scrape_errors >= 3, what="failed scrapes")

    scraper = scraped.scraper
    assert not scraper.up and error in (scraper.last_error or "")
    assert scraped.samples == [] and scraped.events == []
    assert scraped.exposed_value("sidecar_dcgm_exporter_scrape_errors") == scraper.scrape_errors

    exporter.status, exporter.body = 200, moving(RECORDED)
    await wait_for(lambda: scraper.up, what="a good scrape")
    assert scraper.last_error is None and len(scraper.latest()) == 2


async def test_a_slow_exporter_times_out(exporter: FakeExporter, make_scraper: ScraperFactory):
    exporter.delay = 1.0
    scraped = await make_scraper(exporter.url, timeout=0.1)
    await wait_for(lambda: scraped.scraper.scrape_errors >= 2, what="timed-out scrapes")

    assert not scraped.scraper.up and scraped.scraper.last_error == "timed out after 0.1s"
    exporter.delay = 0.0
    await wait_for(lambda: scraped.scraper.up, what="a good scrape")


async def test_a_failing_sample_observer_does_not_stop_the_scraping(
    exporter: FakeExporter, make_scraper: ScraperFactory
):
    calls: list[GpuSample] = []

    def broken(sample: GpuSample) -> None:
        calls.append(sample)
        raise RuntimeError("observer bug")

    scraped = await make_scraper(exporter.url, on_sample=broken)
    await wait_for(lambda: len(calls) >= 6, what="three scrapes")
    assert scraped.scraper.up and len(scraped.scraper.latest()) == 2
