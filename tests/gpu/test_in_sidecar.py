"""The GPU parts inside a running sidecar, against the pynvml stand-in and a recorded dcgm-exporter:
what an SRE's dashboards, an alert rule and an auditor see."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sidecar.exchange import Exchange, GpuEvent
from sidecar.gpu import fields as f
from sidecar.testing.nvml import FakeNvml
from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.tools import serve_on_loopback

RECORDED = Path(__file__).parent / "data" / "dcgm-exporter.txt"
INTERVAL_S = 0.02
WATTS = 400.0
PRICES = {"default": {"input_per_1k": 0.015, "output_per_1k": 0.025, "per_request": 0.001}}


def recorded_label_keys() -> set[str]:
    return {key for family in text_string_to_metric_families(RECORDED.read_text())
            if family.name == f.POWER_USAGE for sample in family.samples for key in sample.labels}  # fmt: skip


class SlowModel:
    """An OpenAI-style chat upstream that takes `delay` seconds per answer, so requests span samples."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner, port = await serve_on_loopback(app)
        self.url = f"http://127.0.0.1:{port}"

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(float(body.get("delay", 0.2)))
        return web.json_response({"model": body["model"], "choices": [{"message": {"content": "ok"}}],
                                  "usage": {"prompt_tokens": 30, "completion_tokens": 50}})  # fmt: skip

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def model() -> AsyncIterator[SlowModel]:
    server = SlowModel()
    await server.start()
    yield server
    await server.stop()


async def start_with_gpus(make_sidecar: SidecarFactory, upstream_url: str, nvml: FakeNvml,
                          **settings: Any) -> tuple[RunningSidecar, list[GpuEvent]]:  # fmt: skip
    running = await make_sidecar(
        upstream_url, nvml=nvml, gpu__nvml__interval=f"{INTERVAL_S * 1000:g}ms", gpu__nvml__pcie_interval="1s",
        gpu__cost__hardware_price=30000, gpu__cost__cloud_prices=PRICES, **settings,
    )  # fmt: skip
    events: list[GpuEvent] = []
    running.sidecar.gpu_events.subscribe("test", events.append)
    await until(lambda: bool(running.sidecar.nvml and running.sidecar.nvml.stats().samples_taken >= 3))
    return running, events


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def scrape_text(running: RunningSidecar, accept: str | None = None) -> str:
    async with aiohttp.ClientSession() as client:
        headers = {"Accept": accept} if accept else {}
        async with client.get(f"{running.admin_url}/metrics", headers=headers) as response:
            assert response.status == 200
            return await response.text()


async def scrape(running: RunningSidecar) -> dict[str, list[Sample]]:
    """Samples by family, under the names they were written with (prometheus_client's parser appends
    `_total` to every counter sample; dcgm-exporter's upper-case counters have none)."""
    families: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(await scrape_text(running)):
        exact = family.type == "counter" and family.name.isupper()
        families.setdefault(family.name, []).extend(
            s._replace(name=family.name) if exact and s.name == family.name + "_total" else s for s in family.samples
        )
    return families


async def chat(client: aiohttp.ClientSession, running: RunningSidecar, delay: float, model: str = "m") -> int:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "delay": delay}
    async with client.post(f"{running.url}/v1/chat/completions", json=payload) as response:
        await response.read()
        return response.status


def audit_records(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((data_dir / "audit" / "events").glob("*.jsonl"))
            for line in path.read_text().splitlines()]  # fmt: skip


async def test_every_nvml_field_is_served_with_dcgm_exporters_types_and_label_keys(
    make_sidecar: SidecarFactory, model: SlowModel
) -> None:
    nvml = FakeNvml(2, pcie_delay=0.0)
    running, _ = await start_with_gpus(make_sidecar, model.url, nvml)
    nvml_collector = running.sidecar.nvml
    assert nvml_collector is not None
    # NVLink bandwidth is a rate: it has a value from each GPU's second read on.
    await until(lambda: all(set(s.fields) == set(f.FIELDS_BY_NAME) for s in nvml_collector.latest().values()))
    families = await scrape(running)

    expected_keys = recorded_label_keys()
    for field in f.NVML_FIELDS:
        samples = [s for s in families.get(field.name, []) if s.name == field.name]
        assert {s.labels["gpu"] for s in samples} == {"0", "1"}, f"{field.name} missing for some GPU"
        for sample in samples:
            keys = set(sample.labels) - {"err_code", "err_msg"}
            assert keys == expected_keys, f"{field.name}: {sorted(keys)} != dcgm-exporter's {sorted(expected_keys)}"
    assert [s.value for s in families["sidecar_nvml_up"]] == [1.0]
    ok = {s.labels["gpu"] for s in families["sidecar_gpu_state"] if s.labels["state"] == "ok" and s.value == 1}
    assert ok == {"0", "1"}

    # The types dcgm-exporter declares, counters included, in the Prometheus text format; OpenMetrics
    # (which Prometheus asks for first) has no counter without `_total`, so there they are unknown.
    text = await scrape_text(running)
    openmetrics = {family.name: family for family in parse_openmetrics(
        await scrape_text(running, "application/openmetrics-text; version=1.0.0"))}  # fmt: skip
    for field in f.NVML_FIELDS:
        assert f"\n# TYPE {field.name} {field.prom_type}\n{field.name}{{" in text, field.name
        assert openmetrics[field.name].type == ("unknown" if field.prom_type == "counter" else "gauge"), field.name
        assert {s.name for s in openmetrics[field.name].samples} == {field.name}


async def test_requests_carry_gpu_time_energy_and_cost_on_exchange_metrics_and_audit(
    make_sidecar: SidecarFactory, model: SlowModel, tmp_path: Path
) -> None:
    nvml = FakeNvml(1, pcie_delay=0.0)
    nvml.set_power(0, WATTS)
    # A flat draw is all idle power: charged to the requests at the model server, by time there.
    running, _ = await start_with_gpus(make_sidecar, model.url, nvml, gpu__idle_power="in_flight")
    async with aiohttp.ClientSession() as client:
        assert await chat(client, running, delay=0.3) == 200
        # Two at once: together they are charged what one alone would be for the same span.
        statuses = await asyncio.gather(chat(client, running, 0.3, "a"), chat(client, running, 0.3, "b"))
        assert statuses == [200, 200]
    await until(lambda: len(running.exchanges) == 3)
    alone, *pair = running.exchanges

    def joules(exchange: Exchange) -> float:
        assert exchange.usage is not None, "no GPU usage on the exchange"
        return exchange.usage.energy_joules

    # Alone: the power draw over its lifetime, give or take one sample interval at each end.
    span = alone.duration_s
    assert WATTS * span * 0.9 <= joules(alone) <= WATTS * (span + 2 * INTERVAL_S) * 1.1, (joules(alone), span)
    pair_span = max(e.started_at + e.duration_s for e in pair) - min(e.started_at for e in pair)
    assert WATTS * pair_span * 0.9 <= sum(map(joules, pair)) <= WATTS * (pair_span + 2 * INTERVAL_S) * 1.1
    assert 0.35 <= joules(pair[0]) / sum(map(joules, pair)) <= 0.65, "concurrent equals share alike"

    usage = alone.usage
    assert usage is not None and usage.cost_local is not None and usage.cost_cloud_equivalent is not None
    assert 0 < usage.gpu_seconds <= span + 2 * INTERVAL_S
    hardware_per_second = 30000 / (3 * 365 * 86400)
    electricity = usage.energy_joules / 3.6e6 * 0.15
    assert usage.cost_local == pytest.approx(electricity + usage.gpu_seconds * hardware_per_second, rel=1e-9)
    assert usage.cost_cloud_equivalent == pytest.approx(30 / 1000 * 0.015 + 50 / 1000 * 0.025 + 0.001)

    families = await scrape(running)
    energy = {s.labels["model"]: s.value for s in families["sidecar_gpu_energy_joules"] if s.name.endswith("_total")}
    assert energy["m"] == pytest.approx(joules(alone))
    costs = {(s.labels["model"], s.labels["kind"]): s.value for s in families["sidecar_cost"] if s.name.endswith("_total")}
    assert costs[("m", "cloud_equivalent")] == pytest.approx(usage.cost_cloud_equivalent)
    assert costs[("a", "local")] > 0
    per_token = [s for s in families["sidecar_gpu_energy_per_output_token_joules"] if s.name.endswith("_count")]
    assert sum(s.value for s in per_token) == 3

    await running.sidecar.stop()
    (record,) = [r for r in audit_records(tmp_path / "data") if r["event"]["action"] == "model-call"
                 and r["gen_ai"]["request"]["model"] == "m"]  # fmt: skip
    assert record["sidecar"]["gpu"]["energy_joules"] == pytest.approx(joules(alone), abs=1e-6)
    assert record["sidecar"]["cost"] == {"local": usage.cost_local, "cloud_equivalent": usage.cost_cloud_equivalent,
                                         "currency": "USD"}  # fmt: skip


async def test_requests_the_model_server_never_processed_are_charged_nothing(
    make_sidecar: SidecarFactory, model: SlowModel
) -> None:
    nvml = FakeNvml(1, pcie_delay=0.0)
    running, _ = await start_with_gpus(make_sidecar, model.url, nvml, gpu__idle_power="in_flight",
                                       proxy__max_request_body="1KiB")  # fmt: skip
    async with aiohttp.ClientSession() as client:
        assert await chat(client, running, delay=0.05) == 200
        payload = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
        async with client.post(f"{running.url}/v1/chat/completions", json=payload) as response:
            assert response.status == 413  # refused by the sidecar, never forwarded
        await model.stop()
        model.runner = None
        for _ in range(20):  # the model server is down: each request is a fast 502
            assert await chat(client, running, delay=0.0) == 502
    await until(lambda: len(running.exchanges) == 22)

    served, too_large, *refused = running.exchanges
    assert served.usage is not None and served.usage.energy_joules > 0
    assert too_large.status == 413 and too_large.usage is None
    assert [(e.status, e.error_type, e.usage) for e in refused] == [(502, "upstream_connect_error", None)] * 20
    families = await scrape(running)
    energy = {s.labels["model"]: s.value for s in families["sidecar_gpu_energy_joules"] if s.name.endswith("_total")}
    assert energy == {"m": pytest.approx(served.usage.energy_joules)}, "only the processed request is charged"
    await until(lambda: running.sidecar.attribution is not None
                and running.sidecar.attribution.unattributed().energy_joules > 0)  # fmt: skip
    loose = [s.value for s in (await scrape(running))["sidecar_gpu_unattributed_energy_joules"]
             if s.name.endswith("_total")]  # fmt: skip
    assert loose and loose[0] > 0, "what the GPU drew during the outage is on its own line"


async def test_a_simulated_gpu_idles_and_works_with_the_model_server_and_says_it_is_simulated(
    make_sidecar: SidecarFactory, model: SlowModel
) -> None:
    running = await make_sidecar(model.url, gpu__nvml__enabled=True, gpu__nvml__simulate=1,
                                 gpu__nvml__interval="50ms", gpu__nvml__pcie_interval="1s")  # fmt: skip
    collector = running.sidecar.nvml
    assert collector is not None and running.sidecar.gpus_simulated

    def latest() -> dict[str, float]:
        sample = collector.latest().get("0")
        return dict(sample.fields) if sample is not None else {}

    await until(lambda: latest().get(f.POWER_USAGE) == 72.0, timeout=10)
    assert latest()[f.GPU_UTIL] == 0, "idle: no utilisation while nothing is at the model server"

    stop = asyncio.Event()

    async def keep_busy(client: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            await chat(client, running, delay=0.3)

    async with aiohttp.ClientSession() as client:
        workers = [asyncio.create_task(keep_busy(client)) for _ in range(2)]
        try:
            await until(lambda: latest().get(f.GPU_UTIL, 0) >= 80 and latest().get(f.POWER_USAGE, 0) >= 380,
                        timeout=15)  # fmt: skip
        finally:
            stop.set()
            await asyncio.gather(*workers)
    await until(lambda: latest().get(f.POWER_USAGE) == 72.0, timeout=10)

    families = await scrape(running)
    assert all(s.labels.get("simulated") == "true" for s in families[f.POWER_USAGE])
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.admin_url}/-/status.json") as response:
            status = await response.json()
    assert status["gpu"]["simulated"] is True and status["gpu"]["gpus"][0]["simulated"] is True
    # By default idle power is nobody's: a request is charged the work it caused, the idle draw stays apart.
    charged = [e for e in running.exchanges if e.usage is not None]
    assert charged
    for exchange in charged:
        assert exchange.usage is not None and exchange.usage.energy_joules <= (412.5 - 72.0) * exchange.duration_s * 1.2
    assert running.sidecar.attribution is not None and running.sidecar.attribution.unattributed().energy_joules > 0


async def test_gpu_lost_xid_and_nvml_gone_become_states_events_and_audit_records_while_serving(
    make_sidecar: SidecarFactory, model: SlowModel, tmp_path: Path
) -> None:
    nvml = FakeNvml(2, pcie_delay=0.0)
    running, events = await start_with_gpus(make_sidecar, model.url, nvml)
    async with aiohttp.ClientSession() as client:
        collector = running.sidecar.nvml
        assert collector is not None
        # The last-XID field appears once the GPU's XID events are being waited on.
        await until(lambda: f.XID_ERRORS in getattr(collector.latest().get("1"), "fields", {}))
        nvml.inject_xid(1, 79)
        nvml.lose_gpu(1)
        await until(lambda: {e.kind for e in events} >= {"xid", "gpu_lost"})
        assert await chat(client, running, delay=0.01) == 200

        families = await scrape(running)
        states = {(s.labels["gpu"], s.labels["state"]): s.value for s in families["sidecar_gpu_state"]}
        assert states[("1", "lost")] == 1 and states[("0", "ok")] == 1
        assert {s.labels["gpu"] for s in families[f.POWER_USAGE]} == {"0"}, "a lost GPU serves no stale values"
        xid = [s for s in families["DCGM_EXP_XID_ERRORS_TOTAL"] if s.labels.get("xid") == "79"]
        assert [(s.labels["gpu"], s.value) for s in xid] == [("1", 1.0)]

        nvml.library_missing()
        await until(lambda: any(e.kind == "nvml_unavailable" for e in events))
        await until(lambda: not collector.nvml_available)
        assert await chat(client, running, delay=0.01) == 200
        families = await scrape(running)
        assert [s.value for s in families["sidecar_nvml_up"]] == [0.0]
        assert f.POWER_USAGE not in families or not families[f.POWER_USAGE]

    await running.sidecar.stop()
    actions = [r["event"]["action"] for r in audit_records(tmp_path / "data")]
    assert {"gpu-xid", "gpu-lost", "gpu-nvml-unavailable"} <= set(actions)
    (lost,) = [r for r in audit_records(tmp_path / "data") if r["event"]["action"] == "gpu-lost"]
    assert (lost["event"]["category"], lost["event"]["type"]) == (["host"], ["change"])
    assert "outcome" not in lost["event"], "what the sidecar saw of a GPU, not an attempt of its own"
    assert lost["sidecar"]["gpu_event"]["gpu"] == "1"
    (xid_record,) = [r for r in audit_records(tmp_path / "data") if r["event"]["action"] == "gpu-xid"]
    assert xid_record["sidecar"]["gpu_event"]["xid"] == 79


@pytest.fixture
async def dcgm_exporter() -> AsyncIterator[str]:
    """dcgm-exporter's recorded answer, served over HTTP."""
    payload = RECORDED.read_text()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=payload, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner, port = await serve_on_loopback(app)
    yield f"http://127.0.0.1:{port}/metrics"
    await runner.cleanup()


async def test_dcgm_exporter_profiling_fields_are_reexposed_beside_nvml_without_duplicates(
    make_sidecar: SidecarFactory, model: SlowModel, dcgm_exporter: str
) -> None:
    nvml = FakeNvml(2, pcie_delay=0.0)
    running, _ = await start_with_gpus(
        make_sidecar, model.url, nvml, gpu__dcgm_exporter__enabled=True, gpu__dcgm_exporter__url=dcgm_exporter,
        gpu__dcgm_exporter__interval="50ms", gpu__dcgm_exporter__reexpose=True,
    )  # fmt: skip
    await until(lambda: bool(running.sidecar.dcgm and running.sidecar.dcgm.up))
    families = await scrape(running)
    assert [s.value for s in families["sidecar_dcgm_exporter_up"]] == [1.0]
    recorded = {family.name for family in text_string_to_metric_families(RECORDED.read_text())}
    profiling = {name for name in recorded if name.startswith("DCGM_FI_PROF_")}
    assert profiling and profiling <= set(families), "profiling fields come from dcgm-exporter"
    # NVML's own series win: each field once per GPU, with NVML's UUIDs, not the exporter's.
    power = families[f.POWER_USAGE]
    assert sorted(s.labels["UUID"] for s in power) == sorted(g.uuid for g in nvml.gpus)
