"""GPU samples as Prometheus series, named and labelled as dcgm-exporter names and labels them.

One family per DCGM field (`sidecar.gpu.fields`), with dcgm-exporter's help text
and its label set: `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`,
`Hostname` (left out when empty, as dcgm-exporter does), `DCGM_FI_DRIVER_VERSION`, plus `GPU_I_PROFILE`
and `GPU_I_ID` on MIG instances, `simulated="true"` on simulated GPUs (`gpu.nvml.simulate`) and
`err_code` / `err_msg` on
`DCGM_FI_DEV_XID_ERRORS`. dcgm-exporter's counters are counter families whose
samples keep the field's exact name, no `_total` (how each format writes them:
`sidecar.gpu.fields`).

Only GPUs in state ok contribute values: a lost, stale or unreachable GPU's last
readings would look current. Its state is in `sidecar_gpu_state` instead, next to
the sidecar's own series:

- `sidecar_gpu_state{gpu,UUID,state}`: 1 for the GPU's state (ok, lost, unavailable, stale), 0 for the others.
- `sidecar_nvml_up`: 1 while NVML answers.
- `sidecar_gpu_samples_total`, `sidecar_gpu_read_errors_total{field}`, `sidecar_gpu_read_timeouts_total`.
- `sidecar_gpu_process_memory_bytes{gpu,UUID,pid}`, `sidecar_gpu_process_sm_utilization{gpu,UUID,pid}` (percent).
- `sidecar_gpu_xid_errors_total{gpu,UUID,xid}`, and dcgm-exporter's `DCGM_EXP_XID_ERRORS_TOTAL` with its labels.
  XID counts stay visible while a GPU is lost: XID 79 is how it got lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.exchange import GpuSample, GpuState
from sidecar.gpu.fields import NVML_FIELDS, XID_ERRORS, XID_ERRORS_TOTAL, xid_name
from sidecar.gpu.nvml import NvmlStats


def dcgm_labels(sample: GpuSample) -> dict[str, str]:
    """The labels dcgm-exporter puts on a GPU's (or MIG instance's) series."""
    labels = {
        "gpu": sample.gpu,
        "UUID": sample.uuid,
        "pci_bus_id": sample.pci_bus_id,
        "device": sample.device,
        "modelName": sample.model_name,
    }
    if sample.gpu_instance_profile is not None:
        labels["GPU_I_PROFILE"] = sample.gpu_instance_profile
        labels["GPU_I_ID"] = sample.gpu_instance_id or ""
    if sample.hostname:
        labels["Hostname"] = sample.hostname
    if sample.driver_version:
        # dcgm-exporter 3.3.6 and later label every series with the driver version.
        labels["DCGM_FI_DRIVER_VERSION"] = sample.driver_version
    if sample.simulated:
        # Only a simulated GPU's series differ from dcgm-exporter's label set, so that no dashboard or
        # query can take them for a real GPU's.
        labels["simulated"] = "true"
    return labels


class SampleSource(Protocol):
    """What `NvmlCollector` offers: its latest samples and its counters."""

    def latest(self) -> Mapping[str, GpuSample]: ...

    def stats(self) -> NvmlStats: ...


class GpuMetricsCollector(Collector):
    """Reads the latest samples (and the NVML collector's counters) at scrape time.

    Give it an `NvmlCollector` (any `SampleSource`), or a callable returning samples and,
    optionally, one returning the counters (e.g. for samples from another source).
    """

    def __init__(
        self,
        samples: SampleSource | Callable[[], Iterable[GpuSample]],
        stats: Callable[[], NvmlStats] | None = None,
    ) -> None:
        if callable(samples):
            self._samples: Callable[[], Iterable[GpuSample]] = samples
            self._stats = stats
        else:
            source = samples
            self._samples = lambda: source.latest().values()
            self._stats = stats or source.stats

    def collect(self) -> Iterator[Metric]:
        samples = list(self._samples())
        fresh = [sample for sample in samples if sample.state is GpuState.OK]
        gpus = {sample.gpu: sample for sample in samples if sample.gpu_instance_id is None}
        yield from self._dcgm_fields(fresh)
        yield self._states(gpus.values())
        yield from self._processes(fresh)
        if self._stats is not None:
            stats = self._stats()
            yield from self._xid_totals(stats, gpus)
            yield from self._own_counters(stats)

    def _dcgm_fields(self, fresh: list[GpuSample]) -> Iterator[Metric]:
        labelled = [(sample, dcgm_labels(sample)) for sample in fresh]
        for field in NVML_FIELDS:
            family = Metric(field.name, field.help, field.prom_type)
            for sample, labels in labelled:
                value = sample.fields.get(field.name)
                if value is None:
                    continue
                if field.name == XID_ERRORS:
                    labels = {**labels, "err_code": str(int(value)), "err_msg": xid_name(int(value))}
                family.add_sample(field.name, labels, value)
            if family.samples:
                yield family

    def _states(self, gpus: Iterable[GpuSample]) -> Metric:
        family = GaugeMetricFamily(
            "sidecar_gpu_state",
            "Whether the sidecar can read the GPU: 1 for its current state (ok, lost, unavailable, stale).",
            labels=["gpu", "UUID", "state"],
        )
        for sample in sorted(gpus, key=lambda s: int(s.gpu) if s.gpu.isdigit() else s.gpu):
            for state in GpuState:
                family.add_metric([sample.gpu, sample.uuid, state.value], 1.0 if sample.state is state else 0.0)
        return family

    def _processes(self, fresh: list[GpuSample]) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "sidecar_gpu_process_memory_bytes",
            "GPU memory used by a process (host PID), as NVML reports it.",
            labels=["gpu", "UUID", "pid"],
        )
        sm = GaugeMetricFamily(
            "sidecar_gpu_process_sm_utilization",
            "Percent of the GPU's SMs a process (host PID) kept busy over the last sample period.",
            labels=["gpu", "UUID", "pid"],
        )
        for sample in fresh:
            for process in sample.processes:
                labels = [sample.gpu, sample.uuid, str(process.pid)]
                if process.used_memory_bytes is not None:
                    memory.add_metric(labels, float(process.used_memory_bytes))
                if process.sm_utilization is not None:
                    sm.add_metric(labels, process.sm_utilization)
        yield memory
        yield sm

    def _xid_totals(self, stats: NvmlStats, gpus: dict[str, GpuSample]) -> Iterator[Metric]:
        ours = CounterMetricFamily(
            "sidecar_gpu_xid_errors",
            "XID errors the driver reported for the GPU since the sidecar started.",
            labels=["gpu", "UUID", "xid"],
        )
        theirs = Metric(XID_ERRORS_TOTAL.name, XID_ERRORS_TOTAL.help, XID_ERRORS_TOTAL.prom_type)
        for (gpu, xid), count in sorted(stats.xid_errors.items()):
            sample = gpus.get(gpu)
            labels = dcgm_labels(sample) if sample is not None else {"gpu": gpu, "device": f"nvidia{gpu}"}
            ours.add_metric([gpu, labels.get("UUID", ""), str(xid)], float(count))
            theirs.add_sample(XID_ERRORS_TOTAL.name, {**labels, "xid": str(xid)}, float(count))
        yield ours
        if theirs.samples:
            yield theirs

    def _own_counters(self, stats: NvmlStats) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sidecar_nvml_up", "1 while NVML is loaded and answering, 0 without a driver or library.",
            value=1.0 if stats.nvml_available else 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "sidecar_gpu_samples", "Whole-GPU readings taken through NVML.", value=float(stats.samples_taken)
        )
        errors = CounterMetricFamily(
            "sidecar_gpu_read_errors",
            "NVML reads that failed, by reader (reads a GPU does not support are tried once and not counted).",
            labels=["field"],
        )
        for reader, count in sorted(stats.read_errors.items()):
            errors.add_metric([reader], float(count))
        yield errors
        yield CounterMetricFamily(
            "sidecar_gpu_read_timeouts",
            "NVML calls that ran past nvml.call_timeout; each left its GPU stale until it returned.",
            value=float(stats.read_timeouts),
        )
