"""The DCGM fields the NVML collector fills, under dcgm-exporter's names, types and help texts.

Names, Prometheus types and help texts are those of dcgm-exporter's counters CSV
(`etc/default-counters.csv`, `etc/dcp-metrics-included.csv`), so an existing
dashboard or alert written against dcgm-exporter reads the sidecar's series
unchanged. Values are in dcgm-exporter's units (MiB, W, mJ, MHz, C, %), read
with the NVML call DCGM itself makes for the field. Every `DCGM_FI_DEV_*` field
of dcgm-exporter's default CSV is here. The profiling fields (`DCGM_FI_PROF_*`)
are not: DCGM computes them in its profiling module from hardware counters that
NVML does not expose, so only dcgm-exporter can serve them.

Where the table departs from dcgm-exporter's defaults, and why:

- `DCGM_FI_DEV_PCIE_TX_THROUGHPUT` / `_RX_THROUGHPUT`: dcgm-exporter declares them
  counters "(in KB)", but DCGM fills them from `nvmlDeviceGetPcieThroughput`,
  which is a rate: KB/s over a 20 ms window. The value here is that same rate,
  so queries written against dcgm-exporter read the same numbers. They were in
  dcgm-exporter's defaults up to 3.3.6-3.4.2; later releases default to the
  profiling fields `DCGM_FI_PROF_PCIE_TX_BYTES` / `_RX_BYTES` instead.
- `DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`: declared a counter too, but DCGM fills it
  with a rate: the increase of NVML's NVLink data counters
  (`NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX` + `_TX`, all links, KiB) between two
  reads, per second, divided by 1000 (DCGM's unit, MB/s). The same here, between
  consecutive samples. The first sample has no rate yet and leaves the field out
  (DCGM shows 0 there), as does one whose counters went backwards (a driver reload).
- `DCGM_FI_DEV_FB_USED`, `_FB_FREE`, `_FB_RESERVED` come from
  `nvmlDeviceGetMemoryInfo_v2`, as DCGM reads them with a 510 or later driver:
  `used` leaves out what the driver reserves, so used + free + reserved is the
  total. A driver without the v2 call answers v1: `used` then includes the
  reserved memory and `DCGM_FI_DEV_FB_RESERVED` is absent (as in DCGM).
- `DCGM_FI_DEV_VGPU_LICENSE_STATUS` is, as in DCGM, 1 when the vGPU feature of
  `nvmlDeviceGetGridLicensableFeatures` is licensed and 0 otherwise, including on
  a GPU that is not a vGPU at all (bare metal reports no licensable features).
- Clock event reasons appear twice: `DCGM_FI_DEV_CLOCKS_EVENT_REASONS` (DCGM 3.3
  and later) and `DCGM_FI_DEV_CLOCK_THROTTLE_REASONS` (the older name of the same
  field, id 112, which older dashboards query). Same value, one NVML read.
- `DCGM_FI_DEV_ROW_REMAP_PENDING` is a DCGM field dcgm-exporter's CSVs leave out;
  it comes free with the remapped-rows read and says a reset is due.
- XIDs: `DCGM_FI_DEV_XID_ERRORS` is, as in dcgm-exporter, the last XID seen (0
  while none was), labelled `err_code` and `err_msg`. A last-value gauge misses
  XIDs between scrapes, so `DCGM_EXP_XID_ERRORS_TOTAL` (dcgm-exporter's
  cumulative form, one series per `xid`) counts every one since the sidecar
  started. dcgm-exporter's windowed `DCGM_EXP_XID_ERRORS_COUNT` is not provided:
  `increase(DCGM_EXP_XID_ERRORS_TOTAL[window])` says the same thing.

Exposition: dcgm-exporter writes `# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION
counter` above samples of that very name, with no `_total`. The collector yields
such counters as counter families whose samples carry the family's own name, and
the sidecar's /metrics encoder (`sidecar.telemetry.exposition`) writes them as
dcgm-exporter does in the Prometheus text format. OpenMetrics requires `_total`
on every counter sample, so there they are `unknown` under the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

PromType = Literal["gauge", "counter"]
"""The type dcgm-exporter declares; a counter is served under its exact name (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class DcgmField:
    name: str
    prom_type: PromType
    """The type dcgm-exporter declares for the field."""
    help: str
    """dcgm-exporter's help text, verbatim (DCGM's field description where dcgm-exporter has none)."""
    unit: str
    reader: str
    """The NVML read that fills the field; the `field` label of `sidecar_gpu_read_errors_total`."""
    mig: bool = False
    """Also reported for each MIG GPU instance."""


# Readers: one NVML read each, so that a read the GPU does not support is tried once and skipped.
UTILIZATION = "utilization"
MEMORY = "memory"
GPU_TEMPERATURE = "gpu_temperature"
MEMORY_TEMPERATURE = "memory_temperature"
POWER = "power"
ENERGY = "energy"
SM_CLOCK = "sm_clock"
MEMORY_CLOCK = "memory_clock"
PCIE_THROUGHPUT = "pcie_throughput"
PCIE_REPLAYS = "pcie_replays"
ENCODER_UTILIZATION = "encoder_utilization"
DECODER_UTILIZATION = "decoder_utilization"
NVLINK_THROUGHPUT = "nvlink_throughput"
VGPU_LICENSE = "vgpu_license"
ECC = "ecc"
REMAPPED_ROWS = "remapped_rows"
CLOCK_EVENTS = "clock_events"
XID = "xid"
# Reads that fill no DCGM field but can fail all the same.
IDENTITY = "identity"
MIG = "mig"
PROCESSES = "processes"
PROCESS_UTILIZATION = "process_utilization"

GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
MEM_COPY_UTIL = "DCGM_FI_DEV_MEM_COPY_UTIL"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_RESERVED = "DCGM_FI_DEV_FB_RESERVED"
ENC_UTIL = "DCGM_FI_DEV_ENC_UTIL"
DEC_UTIL = "DCGM_FI_DEV_DEC_UTIL"
PCIE_REPLAY_COUNTER = "DCGM_FI_DEV_PCIE_REPLAY_COUNTER"
NVLINK_BANDWIDTH_TOTAL = "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"
VGPU_LICENSE_STATUS = "DCGM_FI_DEV_VGPU_LICENSE_STATUS"
GPU_TEMP = "DCGM_FI_DEV_GPU_TEMP"
MEMORY_TEMP = "DCGM_FI_DEV_MEMORY_TEMP"
POWER_USAGE = "DCGM_FI_DEV_POWER_USAGE"
TOTAL_ENERGY_CONSUMPTION = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
SM_CLOCK_FIELD = "DCGM_FI_DEV_SM_CLOCK"
MEM_CLOCK_FIELD = "DCGM_FI_DEV_MEM_CLOCK"
PCIE_TX_THROUGHPUT = "DCGM_FI_DEV_PCIE_TX_THROUGHPUT"
PCIE_RX_THROUGHPUT = "DCGM_FI_DEV_PCIE_RX_THROUGHPUT"
XID_ERRORS = "DCGM_FI_DEV_XID_ERRORS"
ECC_SBE_VOL_TOTAL = "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"
ECC_DBE_VOL_TOTAL = "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"
ECC_SBE_AGG_TOTAL = "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"
ECC_DBE_AGG_TOTAL = "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"
CORRECTABLE_REMAPPED_ROWS = "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"
UNCORRECTABLE_REMAPPED_ROWS = "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"
ROW_REMAP_PENDING = "DCGM_FI_DEV_ROW_REMAP_PENDING"
ROW_REMAP_FAILURE = "DCGM_FI_DEV_ROW_REMAP_FAILURE"
CLOCKS_EVENT_REASONS = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
CLOCK_THROTTLE_REASONS = "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"

NVML_FIELDS: tuple[DcgmField, ...] = (
    DcgmField(SM_CLOCK_FIELD, "gauge", "SM clock frequency (in MHz).", "MHz", SM_CLOCK),
    DcgmField(MEM_CLOCK_FIELD, "gauge", "Memory clock frequency (in MHz).", "MHz", MEMORY_CLOCK),
    DcgmField(MEMORY_TEMP, "gauge", "Memory temperature (in C).", "C", MEMORY_TEMPERATURE),
    DcgmField(GPU_TEMP, "gauge", "GPU temperature (in C).", "C", GPU_TEMPERATURE),
    DcgmField(POWER_USAGE, "gauge", "Power draw (in W).", "W", POWER),
    DcgmField(TOTAL_ENERGY_CONSUMPTION, "counter", "Total energy consumption since boot (in mJ).", "mJ", ENERGY),
    DcgmField(PCIE_TX_THROUGHPUT, "counter", "Total number of bytes transmitted through PCIe TX (in KB) via NVML.",
              "KB/s", PCIE_THROUGHPUT),  # fmt: skip
    DcgmField(PCIE_RX_THROUGHPUT, "counter", "Total number of bytes received through PCIe RX (in KB) via NVML.",
              "KB/s", PCIE_THROUGHPUT),  # fmt: skip
    DcgmField(PCIE_REPLAY_COUNTER, "counter", "Total number of PCIe retries.", "retries", PCIE_REPLAYS),
    DcgmField(GPU_UTIL, "gauge", "GPU utilization (in %).", "%", UTILIZATION),
    DcgmField(MEM_COPY_UTIL, "gauge", "Memory utilization (in %).", "%", UTILIZATION),
    DcgmField(ENC_UTIL, "gauge", "Encoder utilization (in %).", "%", ENCODER_UTILIZATION),
    DcgmField(DEC_UTIL, "gauge", "Decoder utilization (in %).", "%", DECODER_UTILIZATION),
    DcgmField(XID_ERRORS, "gauge", "Value of the last XID error encountered.", "xid", XID),
    DcgmField(FB_FREE, "gauge", "Framebuffer memory free (in MiB).", "MiB", MEMORY, mig=True),
    DcgmField(FB_USED, "gauge", "Framebuffer memory used (in MiB).", "MiB", MEMORY, mig=True),
    DcgmField(FB_RESERVED, "gauge", "Framebuffer memory reserved (in MiB).", "MiB", MEMORY, mig=True),
    DcgmField(ECC_SBE_VOL_TOTAL, "counter", "Total number of single-bit volatile ECC errors.", "errors", ECC),
    DcgmField(ECC_DBE_VOL_TOTAL, "counter", "Total number of double-bit volatile ECC errors.", "errors", ECC),
    DcgmField(ECC_SBE_AGG_TOTAL, "counter", "Total number of single-bit persistent ECC errors.", "errors", ECC),
    DcgmField(ECC_DBE_AGG_TOTAL, "counter", "Total number of double-bit persistent ECC errors.", "errors", ECC),
    DcgmField(NVLINK_BANDWIDTH_TOTAL, "counter", "Total number of NVLink bandwidth counters for all lanes.",
              "MB/s", NVLINK_THROUGHPUT),  # fmt: skip
    DcgmField(VGPU_LICENSE_STATUS, "gauge", "vGPU License status", "bool", VGPU_LICENSE),
    DcgmField(UNCORRECTABLE_REMAPPED_ROWS, "counter", "Number of remapped rows for uncorrectable errors", "rows",
              REMAPPED_ROWS),  # fmt: skip
    DcgmField(CORRECTABLE_REMAPPED_ROWS, "counter", "Number of remapped rows for correctable errors", "rows",
              REMAPPED_ROWS),  # fmt: skip
    DcgmField(ROW_REMAP_FAILURE, "gauge", "Whether remapping of rows has failed", "bool", REMAPPED_ROWS),
    DcgmField(ROW_REMAP_PENDING, "gauge", "Whether remapping of rows is pending", "bool", REMAPPED_ROWS),
    DcgmField(CLOCKS_EVENT_REASONS, "gauge", "Current clock event reasons (bitmask of DCGM_CLOCKS_EVENT_REASON_*)",
              "bitmask", CLOCK_EVENTS),  # fmt: skip
    DcgmField(CLOCK_THROTTLE_REASONS, "gauge",
              "Current clock throttle reasons (bitmask of DCGM_CLOCKS_THROTTLE_REASON_*)", "bitmask",
              CLOCK_EVENTS),  # fmt: skip
)

FIELDS_BY_NAME: Mapping[str, DcgmField] = MappingProxyType({field.name: field for field in NVML_FIELDS})

XID_ERRORS_TOTAL = DcgmField(
    "DCGM_EXP_XID_ERRORS_TOTAL", "counter", "Total XID errors observed since exporter start.", "errors", XID
)
"""dcgm-exporter's own cumulative XID count, one series per `xid`; filled from the event set, not a sample."""

# NVIDIA's short XID names, as dcgm-exporter puts them in `err_msg`, for the XIDs a datacenter GPU
# running inference actually raises. Others read "Unknown Error" here (dcgm-exporter names more).
_XID_NAMES: Mapping[int, str] = MappingProxyType({
    0: "No Error",
    8: "GPU stopped processing",
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    32: "Invalid or corrupted push buffer stream",
    38: "Driver firmware error",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors -- Most likely to see when running multiple cuda",
    48: "Double Bit ECC Error",
    61: "Internal micro-controller breakpoint/warning",
    62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    68: "NVDEC0 Exception",
    69: "Graphics Engine class error",
    74: "NVLINK Error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    109: "Context Switch Timeout Error",
    119: "GSP RPC Timeout",
    120: "GSP Error",
    121: "C2C Link Error",
    140: "Unrecovered ECC Error",
    143: "GPU Initialization Failure",
    154: "GPU Recovery Action Changed",
})  # fmt: skip


def xid_name(xid: int) -> str:
    """The `err_msg` label dcgm-exporter gives an XID."""
    return _XID_NAMES.get(xid, "Unknown Error")
