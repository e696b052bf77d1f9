"""GPU samples in Prometheus exposition: dcgm-exporter's names, types, help texts and labels,
checked by parsing the sidecar's /metrics encoding back."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from sidecar.config import NvmlConfig
from sidecar.exchange import GpuProcess, GpuSample, GpuState
from sidecar.gpu import fields as f
from sidecar.gpu.metrics import GpuMetricsCollector
from sidecar.gpu.nvml import NvmlCollector, NvmlStats
from sidecar.telemetry.exposition import choose_encoder
from sidecar.testing.nvml import FakeNvml
from tests.support.tools import require_tool

RECORDED = Path(__file__).parent / "data" / "dcgm-exporter.txt"

# NVIDIA/dcgm-exporter etc/default-counters.csv at release 4.5.3-4.8.2 (commit 691c927), verbatim:
# its DCGM_FI_DEV_* lines, the ECC ones it ships commented out included (field, type, help).
DEFAULT_COUNTERS_CSV = """\
DCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).
DCGM_FI_DEV_MEM_CLOCK, gauge, Memory clock frequency (in MHz).
DCGM_FI_DEV_MEMORY_TEMP, gauge, Memory temperature (in C).
DCGM_FI_DEV_GPU_TEMP,    gauge, GPU temperature (in C).
DCGM_FI_DEV_POWER_USAGE,              gauge, Power draw (in W).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Total energy consumption since boot (in mJ).
DCGM_FI_DEV_PCIE_REPLAY_COUNTER, counter, Total number of PCIe retries.
DCGM_FI_DEV_GPU_UTIL,      gauge, GPU utilization (in %).
DCGM_FI_DEV_MEM_COPY_UTIL, gauge, Memory utilization (in %).
DCGM_FI_DEV_ENC_UTIL,      gauge, Encoder utilization (in %).
DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).
DCGM_FI_DEV_XID_ERRORS,              gauge,   Value of the last XID error encountered.
DCGM_FI_DEV_FB_FREE, gauge, Framebuffer memory free (in MiB).
DCGM_FI_DEV_FB_USED, gauge, Framebuffer memory used (in MiB).
DCGM_FI_DEV_FB_RESERVED, gauge, Framebuffer memory reserved (in MiB).
DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL,            counter, Total number of NVLink bandwidth counters for all lanes.
DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS, counter, Number of remapped rows for uncorrectable errors
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS,   counter, Number of remapped rows for correctable errors
DCGM_FI_DEV_ROW_REMAP_FAILURE,           gauge,   Whether remapping of rows has failed
"""
COMMENTED_OUT_CSV = """\
DCGM_FI_DEV_ECC_SBE_VOL_TOTAL, counter, Total number of single-bit volatile ECC errors.
DCGM_FI_DEV_ECC_DBE_VOL_TOTAL, counter, Total number of double-bit volatile ECC errors.
DCGM_FI_DEV_ECC_SBE_AGG_TOTAL, counter, Total number of single-bit persistent ECC errors.
DCGM_FI_DEV_ECC_DBE_AGG_TOTAL, counter, Total number of double-bit persistent ECC errors.
"""
# The same file at release 3.3.6-3.4.2 (commit dd3001a), the last with the NVML PCIe throughput fields
# among its defaults (later releases moved to DCGM_FI_PROF_PCIE_*_BYTES, which only DCGM can fill).
EARLIER_CSV = """\
DCGM_FI_DEV_PCIE_TX_THROUGHPUT,  counter, Total number of bytes transmitted through PCIe TX (in KB) via NVML.
DCGM_FI_DEV_PCIE_RX_THROUGHPUT,  counter, Total number of bytes received through PCIe RX (in KB) via NVML.
"""


def csv_fields(text: str) -> dict[str, tuple[str, str]]:
    """name -> (type, help), read as dcgm-exporter reads its CSV (fields trimmed; help may hold commas)."""
    rows = (line.split(",", 2) for line in text.splitlines())
    return {name.strip(): (kind.strip(), help_text.strip()) for name, kind, help_text in rows}


DEFAULT_FIELDS = csv_fields(DEFAULT_COUNTERS_CSV)
DCGM_EXPORTER_FIELDS = {**DEFAULT_FIELDS, **csv_fields(COMMENTED_OUT_CSV), **csv_fields(EARLIER_CSV)}
# DCGM fields the sidecar serves beyond dcgm-exporter's CSVs (sidecar/gpu/fields.py says why).
SIDECAR_ONLY_FIELDS = {f.ROW_REMAP_PENDING, f.CLOCKS_EVENT_REASONS, f.CLOCK_THROTTLE_REASONS}


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


def encoded(registry: Collector, accept: str = "") -> str:
    """What /metrics answers a scraper sending `accept` (no header: the Prometheus text format)."""
    encoder, _ = choose_encoder(accept)
    return encoder(registry).decode()


def openmetrics(registry: Collector) -> str:
    return encoded(registry, "application/openmetrics-text; version=1.0.0")


def exposition(samples: Iterable[GpuSample], stats: NvmlStats | None = None) -> str:
    registry = CollectorRegistry()
    listed = list(samples)
    registry.register(GpuMetricsCollector(lambda: listed, (lambda: stats) if stats else None))
    return encoded(registry)


def series(text: str) -> list[Sample]:
    """The samples under the names they were written with: prometheus_client's parser appends `_total` to
    every counter sample, and dcgm-exporter's counters (upper-case DCGM names) have none."""
    return [
        sample._replace(name=family.name)
        if family.type == "counter" and family.name.isupper() and sample.name == family.name + "_total" else sample
        for family in text_string_to_metric_families(text) for sample in family.samples
    ]  # fmt: skip


def values(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(s.labels.items()): s.value for s in series(text) if s.name == name}


def sample_lines(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name}{{.*$", text, re.MULTILINE)


def served_by_two_gpus() -> tuple[CollectorRegistry, FakeNvml]:
    """A registry as the app wires it, over a collector that read two stand-in GPUs until every field had a
    value (NVLink bandwidth needs two reads), then stopped: its last samples stay served."""
    nvml = FakeNvml(2, pcie_delay=0.0)
    collector = NvmlCollector(NvmlConfig(interval=0.03), "gpu-host-1", lambda s: None, lambda e: None, nvml=nvml)
    collector.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            len(collector.latest()) == 2
            and all(set(sample.fields) == set(f.FIELDS_BY_NAME) for sample in collector.latest().values())
        ):
            time.sleep(0.01)
    finally:
        collector.stop()
    registry = CollectorRegistry()
    registry.register(GpuMetricsCollector(collector))
    return registry, nvml


def test_every_field_with_dcgm_exporters_name_type_help_and_labels() -> None:
    registry, nvml = served_by_two_gpus()
    text = encoded(registry)

    families = {family.name: family for family in text_string_to_metric_families(text)}
    served = {name for name in families if name.startswith("DCGM_")}
    assert served == set(f.FIELDS_BY_NAME)
    assert {name for name in DEFAULT_FIELDS if name.startswith("DCGM_FI_DEV_")} <= served, "all of the defaults"
    assert served - set(DCGM_EXPORTER_FIELDS) == SIDECAR_ONLY_FIELDS
    for name in sorted(served):
        kind, help_text = DCGM_EXPORTER_FIELDS.get(name, ("gauge", f.FIELDS_BY_NAME[name].help))
        family = families[name]
        assert (family.type, family.documentation) == (kind, help_text), name
        # As dcgm-exporter writes it: the TYPE line and every sample under the field's own name.
        assert f"\n# HELP {name} {help_text}\n# TYPE {name} {kind}\n" in f"\n{text}", name
        assert len(sample_lines(text, name)) == 2, f"{name}: one sample per GPU, no _total"
        assert {s.labels["gpu"] for s in family.samples} == {"0", "1"}
        extra = {"err_code", "err_msg"} if name == f.XID_ERRORS else set()
        for sample in family.samples:
            assert set(sample.labels) == DCGM_LABELS | extra, f"{name}: dcgm-exporter's label keys {DCGM_LABELS}"
    assert not re.search(r"^DCGM_\w*_total\b", text, re.MULTILINE)
    gpu0 = {s.labels["gpu"]: s.labels for s in families[f.POWER_USAGE].samples}["0"]
    assert gpu0 == {"gpu": "0", "UUID": nvml.gpus[0].uuid, "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
                    "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpu-host-1",
                    "DCGM_FI_DRIVER_VERSION": "550.54.15"}  # fmt: skip


def test_openmetrics_keeps_the_names_and_stays_valid() -> None:
    registry, _ = served_by_two_gpus()
    text = openmetrics(registry)

    # prometheus_client's OpenMetrics parser refuses a counter sample without _total.
    families = {family.name: family for family in parse_openmetrics(text)}
    for field in f.NVML_FIELDS:
        family = families[field.name]
        assert family.type == ("unknown" if field.prom_type == "counter" else "gauge"), field.name
        assert {s.name for s in family.samples} == {field.name}
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown\n" in text
    assert text.endswith("# EOF\n")


def test_prometheus_reads_the_text_format() -> None:
    promtool = require_tool("promtool")
    registry, _ = served_by_two_gpus()
    result = subprocess.run([promtool, "check", "metrics"], input=encoded(registry), capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    # Exit 3 is lint findings (dcgm-exporter's names break Prometheus's naming conventions); 1 is a parse error.
    assert result.returncode in (0, 3), result.stdout + result.stderr
    assert "error while linting" not in result.stdout + result.stderr


def test_the_nvidia_dashboards_queries_have_series() -> None:
    # NVIDIA/dcgm-exporter grafana/dcgm-exporter-dashboard.json: its panels and variables read these series by
    # `instance` (Prometheus's) and `gpu`. DCGM_FI_PROF_PIPE_TENSOR_ACTIVE comes only from dcgm-exporter itself.
    registry, _ = served_by_two_gpus()
    families = {family.name: family for family in text_string_to_metric_families(encoded(registry))}
    for name in (f.GPU_TEMP, f.POWER_USAGE, f.SM_CLOCK_FIELD, f.GPU_UTIL, f.FB_USED):
        assert families[name].type == "gauge"
        assert {s.labels["gpu"] for s in families[name].samples} == {"0", "1"}


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


def test_field_table_matches_dcgm_exporters_csv() -> None:
    for field in f.NVML_FIELDS:
        if field.name in SIDECAR_ONLY_FIELDS:
            assert field.prom_type == "gauge", field.name
        else:
            assert (field.prom_type, field.help) == DCGM_EXPORTER_FIELDS[field.name], field.name
    assert not [field.name for field in f.NVML_FIELDS if field.name.startswith("DCGM_FI_PROF_")]
    assert {field.name for field in f.NVML_FIELDS if field.mig} == {f.FB_USED, f.FB_FREE, f.FB_RESERVED}


def test_a_simulated_gpus_series_say_so_and_a_real_gpus_keep_dcgm_exporters_labels() -> None:
    nvml = FakeNvml(1, pcie_delay=0.0)
    samples: list[GpuSample] = []
    collector = NvmlCollector(NvmlConfig(interval=0.03), "gpu-host-1", samples.append, lambda e: None, nvml=nvml,
                              simulated=True)  # fmt: skip
    collector.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not samples:
            time.sleep(0.01)
    finally:
        collector.stop()
    assert samples and all(sample.simulated for sample in samples)

    text = exposition([*collector.latest().values(), gpu_sample("1")])
    power = {s.labels["gpu"]: s.labels for s in series(text) if s.name == f.POWER_USAGE}
    assert power["0"]["simulated"] == "true" and set(power["0"]) == DCGM_LABELS | {"simulated"}
    assert set(power["1"]) == DCGM_LABELS, "a real GPU's label set is dcgm-exporter's, unchanged"
