"""GPU samples in Prometheus exposition: dcgm-exporter's names, types, help texts and labels,
checked by parsing prometheus_client's own output back."""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sidecar.config import NvmlConfig
from sidecar.exchange import GpuProcess, GpuSample, GpuState
from sidecar.gpu import fields as f
from sidecar.gpu.metrics import GpuMetricsCollector
from sidecar.gpu.nvml import NvmlCollector, NvmlStats
from sidecar.testing.nvml import FakeNvml

RECORDED = Path(__file__).parent / "data" / "dcgm-exporter.txt"


def recorded_label_keys() -> set[str]:
    """The label keys dcgm-exporter puts on a GPU's series, from a recorded payload."""
    return {key for family in text_string_to_metric_families(RECORDED.read_text())
            if family.name == "DCGM_FI_DEV_POWER_USAGE" for sample in family.samples for key in sample.labels}  # fmt: skip


DCGM_LABELS = recorded_label_keys()


def gpu_sample(gpu: str = "0", state: GpuState = GpuState.OK, fields: dict[str, float] | None = None,
               **extra: Any) -> GpuSample:  # fmt: skip
    return GpuSample(
        at=1_750_000_000.0, source="nvml", gpu=gpu, uuid=f"GPU-uuid-{gpu}",
        pci_bus_id=f"00000000:{18 + int(gpu):02X}:00.0",
        device=f"nvidia{gpu}", model_name="NVIDIA H100 80GB HBM3", hostname=extra.pop("hostname", "gpu-host-1"),
        state=state, fields=fields if fields is not None else {f.POWER_USAGE: 400.0},
        driver_version=extra.pop("driver_version", "550.54.15"), **extra,
    )  # fmt: skip


def exposition(samples: Iterable[GpuSample], stats: NvmlStats | None = None) -> str:
    registry = CollectorRegistry()
    listed = list(samples)
    registry.register(GpuMetricsCollector(lambda: listed, (lambda: stats) if stats else None))
    return generate_latest(registry).decode()


def series(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def values(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(s.labels.items()): s.value for s in series(text) if s.name == name}


def test_every_field_and_label_for_two_gpus_as_dcgm_exporter_writes_them() -> None:
    nvml = FakeNvml(2, pcie_delay=0.0)
    collector = NvmlCollector(NvmlConfig(interval=0.03), "gpu-host-1", lambda s: None, lambda e: None, nvml=nvml)
    collector.start()
    try:
        deadline = time.monotonic() + 3
        while collector.stats().samples_taken < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        registry = CollectorRegistry()
        registry.register(GpuMetricsCollector(collector))  # as the app wires it
        text = generate_latest(registry).decode()
        openmetrics = generate_openmetrics(registry).decode()
    finally:
        collector.stop()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    for field in f.NVML_FIELDS:
        family = families[field.name]
        assert (family.type, family.documentation) == (field.exposition_type, field.help)
        assert [s.name for s in family.samples] == [field.name] * 2, "exact name, no _total, one per GPU"
        assert {s.labels["gpu"] for s in family.samples} == {"0", "1"}
        for sample in family.samples:
            assert DCGM_LABELS <= set(sample.labels), f"{field.name}: dcgm-exporter's label keys {DCGM_LABELS}"
    gpu0 = {s.labels["gpu"]: s.labels for s in families[f.POWER_USAGE].samples}["0"]
    assert gpu0 == {"gpu": "0", "UUID": nvml.gpus[0].uuid, "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
                    "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpu-host-1",
                    "DCGM_FI_DRIVER_VERSION": "550.54.15"}  # fmt: skip
    # dcgm-exporter's help texts, verbatim.
    assert families["DCGM_FI_DEV_GPU_UTIL"].documentation == "GPU utilization (in %)."
    assert families["DCGM_FI_DEV_FB_USED"].documentation == "Framebuffer memory used (in MiB)."
    assert families["DCGM_FI_DEV_POWER_USAGE"].documentation == "Power draw (in W)."
    assert families["DCGM_FI_DEV_XID_ERRORS"].documentation == "Value of the last XID error encountered."
    assert families[f.TOTAL_ENERGY_CONSUMPTION].documentation == "Total energy consumption since boot (in mJ)."
    assert "\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text and "CONSUMPTION_total" not in text
    assert "# TYPE DCGM_FI_DEV_GPU_UTIL gauge" in text
    # OpenMetrics (what Prometheus asks for first) carries the same names and parses cleanly.
    om_families = {family.name: family for family in parse_openmetrics(openmetrics)}
    assert {field.name for field in f.NVML_FIELDS} <= set(om_families)
    assert om_families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
    assert values(text, "sidecar_nvml_up") == {frozenset(): 1.0}


def test_gpus_that_are_not_ok_serve_no_values_but_their_state() -> None:
    text = exposition([
        gpu_sample("0"),
        gpu_sample("1", GpuState.LOST, {}),
        gpu_sample("2", GpuState.STALE, {f.POWER_USAGE: 399.0}),  # values must not pass for fresh
        gpu_sample("3", GpuState.UNAVAILABLE, {}),
    ])  # fmt: skip
    assert [s.labels["gpu"] for s in series(text) if s.name == f.POWER_USAGE] == ["0"]
    states = {(s.labels["gpu"], s.labels["state"]): s.value for s in series(text) if s.name == "sidecar_gpu_state"}
    assert len(states) == 4 * len(GpuState)
    assert {key for key, value in states.items() if value == 1.0} == {
        ("0", "ok"), ("1", "lost"), ("2", "stale"), ("3", "unavailable")}  # fmt: skip
    assert all(s.labels["UUID"] == f"GPU-uuid-{s.labels['gpu']}" for s in series(text) if s.name == "sidecar_gpu_state")


def test_mig_instances_carry_gpu_instance_labels() -> None:
    parent = gpu_sample("1", fields={f.POWER_USAGE: 300.0, f.FB_USED: 1000.0})
    instance = gpu_sample("1", fields={f.FB_USED: 5000.0}, gpu_instance_profile="1g.10gb", gpu_instance_id="9")
    text = exposition([parent, instance])
    fb = {s.labels.get("GPU_I_ID"): s for s in series(text) if s.name == f.FB_USED}
    assert fb[None].value == 1000.0 and "GPU_I_PROFILE" not in fb[None].labels
    assert fb["9"].value == 5000.0
    assert fb["9"].labels == {"gpu": "1", "UUID": "GPU-uuid-1", "pci_bus_id": "00000000:13:00.0", "device": "nvidia1",
                              "modelName": "NVIDIA H100 80GB HBM3", "GPU_I_PROFILE": "1g.10gb", "GPU_I_ID": "9",
                              "Hostname": "gpu-host-1", "DCGM_FI_DRIVER_VERSION": "550.54.15"}  # fmt: skip
    assert len([s for s in series(text) if s.name == "sidecar_gpu_state"]) == len(GpuState), "the GPU, once"


@pytest.mark.parametrize(
    ("xid", "message"), [(0, "No Error"), (79, "GPU has fallen off the bus"), (999, "Unknown Error")]
)
def test_last_xid_carries_err_code_and_err_msg(xid: int, message: str) -> None:
    text = exposition([gpu_sample("0", fields={f.XID_ERRORS: float(xid)})])
    [sample] = [s for s in series(text) if s.name == f.XID_ERRORS]
    assert (sample.labels["err_code"], sample.labels["err_msg"], sample.value) == (str(xid), message, xid)
    assert DCGM_LABELS <= set(sample.labels)


def test_xid_totals_stay_visible_while_the_gpu_is_lost() -> None:
    stats = NvmlStats(nvml_available=True, samples_taken=10, read_errors={}, read_timeouts=0,
                      xid_errors={("0", 79): 2, ("0", 48): 1})  # fmt: skip
    text = exposition([gpu_sample("0", GpuState.LOST, {})], stats)
    ours = {(s.labels["xid"], s.labels["UUID"]): s.value
            for s in series(text) if s.name == "sidecar_gpu_xid_errors_total"}  # fmt: skip
    assert ours == {("48", "GPU-uuid-0"): 1.0, ("79", "GPU-uuid-0"): 2.0}
    theirs = {s.labels["xid"]: s for s in series(text) if s.name == "DCGM_EXP_XID_ERRORS_TOTAL"}
    assert theirs["79"].value == 2.0 and DCGM_LABELS <= set(theirs["79"].labels)
    assert "# TYPE sidecar_gpu_xid_errors_total counter" in text
    assert "# HELP DCGM_EXP_XID_ERRORS_TOTAL Total XID errors observed since exporter start." in text


def test_per_process_series() -> None:
    processes = (GpuProcess(4242, 2 * 2**30, 35.0), GpuProcess(4243, None, 10.0), GpuProcess(4244, 2**20, None))
    text = exposition([gpu_sample("0", processes=processes), gpu_sample("1", GpuState.STALE, {}, processes=processes)])
    memory = {s.labels["pid"]: s.value for s in series(text) if s.name == "sidecar_gpu_process_memory_bytes"}
    assert memory == {"4242": 2 * 2**30, "4244": 2**20}
    sm = {s.labels["pid"]: s.value for s in series(text) if s.name == "sidecar_gpu_process_sm_utilization"}
    assert sm == {"4242": 35.0, "4243": 10.0}
    assert {tuple(sorted(s.labels)) for s in series(text) if s.name.startswith("sidecar_gpu_process")} == {
        ("UUID", "gpu", "pid")}  # fmt: skip


def test_the_collectors_own_counters() -> None:
    stats = NvmlStats(nvml_available=False, samples_taken=7, read_errors={"power": 2, "ecc": 1}, read_timeouts=3)
    text = exposition([], stats)
    assert values(text, "sidecar_nvml_up") == {frozenset(): 0.0}
    assert values(text, "sidecar_gpu_samples_total") == {frozenset(): 7.0}
    assert values(text, "sidecar_gpu_read_timeouts_total") == {frozenset(): 3.0}
    assert values(text, "sidecar_gpu_read_errors_total") == {
        frozenset({("field", "power")}): 2.0, frozenset({("field", "ecc")}): 1.0}  # fmt: skip
    assert not [s for s in series(text) if s.name.startswith("DCGM_")], "no GPU, no DCGM series"


def test_hostname_label_left_out_when_empty_as_dcgm_exporter_does() -> None:
    text = exposition([gpu_sample("0", hostname="")])
    [sample] = [s for s in series(text) if s.name == f.POWER_USAGE]
    assert "Hostname" not in sample.labels


def test_field_table_matches_dcgm_exporter_types() -> None:
    counters = {field.name for field in f.NVML_FIELDS if field.prom_type == "counter"}
    assert counters == {
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    }  # fmt: skip
    assert not [field.name for field in f.NVML_FIELDS if field.name.startswith("DCGM_FI_PROF_")]
    assert {field.name for field in f.NVML_FIELDS if field.mig} == {f.FB_USED, f.FB_FREE}
