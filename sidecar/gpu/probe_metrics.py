"""The last GPU probe's result on `/metrics`, as a health signal rules can alert on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class ProbeGauges(Collector):
    def __init__(self, result: Any) -> None:
        """`result` is a `sidecar.gpu.probe.ProbeResult` (torch, and so the probe module, is optional)."""
        self._result = result

    def collect(self) -> Iterator[GaugeMetricFamily]:
        result = self._result
        labels = ["device_name", "dtype"]
        values = [result.device, result.dtype]
        for name, help_text, value in (
            ("sidecar_gpu_probe_tflops", "Matmul throughput the start-up probe achieved (TFLOP/s).", result.tflops),
            ("sidecar_gpu_probe_bandwidth_gbps", "Memory bandwidth the start-up probe achieved (GB/s).",
             result.bandwidth_gbps),
            ("sidecar_gpu_probe_degraded", "1 when the probe fell short of the GPU's expected range.",
             1.0 if result.degraded else 0.0),
        ):  # fmt: skip
            family = GaugeMetricFamily(name, help_text, labels=labels)
            family.add_metric(values, value)
            yield family
