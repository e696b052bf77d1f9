"""A short torch health probe: is this GPU as fast as its datasheet says it should be?

`run_probe` measures dense matmul throughput (TFLOP/s) and device memory
bandwidth (GB/s) for a couple of seconds; `assess` compares the figures with a
small table of NVIDIA datacenter and desktop GPUs and says whether the GPU looks
degraded (thermal or power throttling, a bad PCIe/HBM link, clocks stuck low,
another process hogging it). The probe competes with whatever else runs on the
GPU, so run it while the model server is idle, or read a low figure as "busy".

torch is an optional dependency and is imported only when a probe runs:
`assess`, `expected_range` and `format_probe` work without it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# The floors below which a GPU counts as degraded, as fractions of its
# datasheet peak. A healthy GPU reaches roughly 60-80 % of its dense bf16 peak
# on large square matmuls (the peak assumes boost clocks that sustained tensor
# work rarely holds, and cuBLAS never hides every load) and 80-90 % of its
# memory bandwidth on device-to-device copies. The floors leave that margin and
# more, so a verdict of "degraded" means something is wrong, not a slow kernel.
MATMUL_FLOOR = 0.50
BANDWIDTH_FLOOR = 0.60

_GPU_MATMUL_SIZE = 8192
_CPU_MATMUL_SIZE = 512
_GPU_COPY_BYTES = 1 << 30
_CPU_COPY_BYTES = 64 << 20
# A model server usually holds most of the GPU's memory; the probe takes at
# most this share of what is free, shrinking its tensors to fit.
_FREE_MEMORY_SHARE = 0.5
# Unmeasured warm-up at the start of each measurement: cuBLAS picks kernels,
# the allocator settles and clocks ramp up.
_WARMUP_SHARE = 0.2

_INSTALL_HINT = "pip install 'inference-sidecar[demo]' (or your own CUDA build of torch)"


@dataclass(frozen=True, slots=True)
class ExpectedRange:
    """What one GPU model should reach: its datasheet peaks and the floors below them."""

    name: str
    peak_tflops: float
    """Dense (not 2:4 sparse) bf16 tensor-core TFLOP/s with fp32 accumulation."""
    peak_bandwidth_gbps: float

    @property
    def min_tflops(self) -> float:
        return self.peak_tflops * MATMUL_FLOOR

    @property
    def min_bandwidth_gbps(self) -> float:
        return self.peak_bandwidth_gbps * BANDWIDTH_FLOOR

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "peak_tflops": self.peak_tflops,
            "peak_bandwidth_gbps": self.peak_bandwidth_gbps,
            "min_tflops": self.min_tflops,
            "min_bandwidth_gbps": self.min_bandwidth_gbps,
        }


@dataclass(frozen=True, slots=True)
class _KnownGpu:
    words: tuple[str, ...]
    """Every one of these must be a word of the device name (case-insensitive)."""
    expected: ExpectedRange
    unless: tuple[str, ...] = ()
    """None of these may be a word of the device name."""


# Peaks from NVIDIA's datasheets (GeForce cards: the architecture whitepapers'
# "BF16 with FP32 accumulate" rows, half the FP16-accumulate figure they
# advertise). Datasheets quote bf16 with 2:4 sparsity; dense is half of it.
# Names are what torch.cuda.get_device_name reports, e.g. "NVIDIA H100 80GB
# HBM3" for the SXM part. Whole words, so "L4" is not "L40" and "H200" is not
# "GH200". The first entry that matches wins: specific variants come first.
_KNOWN_GPUS: tuple[_KnownGpu, ...] = (
    _KnownGpu(("h100", "pcie"), ExpectedRange("H100 PCIe", 756.5, 2000.0)),
    _KnownGpu(("h100", "nvl"), ExpectedRange("H100 NVL", 835.5, 3900.0)),
    _KnownGpu(("h100",), ExpectedRange("H100 SXM", 989.5, 3350.0)),
    # The 144 GB HBM3e GH200 reaches 4.9 TB/s; the 96 GB HBM3 one's 4.0 TB/s
    # is used for both, so neither is flagged when healthy.
    _KnownGpu(("gh200",), ExpectedRange("GH200", 989.5, 4000.0)),
    _KnownGpu(("h200", "nvl"), ExpectedRange("H200 NVL", 835.5, 4800.0)),
    _KnownGpu(("h200",), ExpectedRange("H200 SXM", 989.5, 4800.0)),
    _KnownGpu(("a100", "80gb", "pcie"), ExpectedRange("A100 80GB PCIe", 312.0, 1935.0)),
    _KnownGpu(("a100", "80gb"), ExpectedRange("A100 80GB SXM", 312.0, 2039.0)),
    _KnownGpu(("a100",), ExpectedRange("A100 40GB", 312.0, 1555.0)),
    _KnownGpu(("l40s",), ExpectedRange("L40S", 362.05, 864.0)),
    _KnownGpu(("l40",), ExpectedRange("L40", 181.05, 864.0)),
    _KnownGpu(("l4",), ExpectedRange("L4", 121.0, 300.0)),
    _KnownGpu(("a40",), ExpectedRange("A40", 149.7, 696.0)),
    _KnownGpu(("a10",), ExpectedRange("A10", 125.0, 600.0)),
    # Laptop parts and the China-market 4090 D share the name but not the chip or clocks.
    _KnownGpu(("rtx", "4090"), ExpectedRange("RTX 4090", 165.2, 1008.0), unless=("laptop", "d")),
    _KnownGpu(("rtx", "3090"), ExpectedRange("RTX 3090", 71.0, 936.0), unless=("ti",)),
)


def expected_range(device_name: str) -> ExpectedRange | None:
    """The known GPU whose name words all appear in `device_name`, or None.

    MIG slices get None: a slice has a fraction of the GPU's SMs and memory
    bandwidth, and the table only knows whole GPUs.
    """
    words = set(re.split(r"[^0-9a-z]+", device_name.lower()))
    if "mig" in words:
        return None
    for known in _KNOWN_GPUS:
        if words.issuperset(known.words) and words.isdisjoint(known.unless):
            return known.expected
    return None


def assess(
    device_name: str, tflops: float, bandwidth_gbps: float, *, dtype: str = "bfloat16"
) -> tuple[ExpectedRange | None, bool, list[str]]:
    """(expected range, degraded, reasons) for figures measured on `device_name`.

    No expected range means no verdict: degraded is False and the one reason
    says so. The TFLOP/s peak is a bf16/fp16 tensor-core figure, so a matmul
    that fell back to float32 is not judged against it.
    """
    expected = expected_range(device_name)
    if expected is None:
        return None, False, [f"no expected range for {device_name}"]
    degraded, reasons = False, []
    if dtype not in ("bfloat16", "float16"):
        reasons.append(f"matmul ran in {dtype}; the {expected.name}'s peak is for bf16, so TFLOP/s is not judged")
    elif tflops < expected.min_tflops:
        degraded = True
        reasons.append(
            f"matmul {tflops:.1f} TFLOP/s is {tflops / expected.peak_tflops:.0%} of the {expected.name}'s "
            f"dense bf16 peak of {expected.peak_tflops:g} TFLOP/s (floor {MATMUL_FLOOR:.0%})"
        )
    if bandwidth_gbps < expected.min_bandwidth_gbps:
        degraded = True
        reasons.append(
            f"memory bandwidth {bandwidth_gbps:.0f} GB/s is {bandwidth_gbps / expected.peak_bandwidth_gbps:.0%} "
            f"of the {expected.name}'s peak of {expected.peak_bandwidth_gbps:g} GB/s (floor {BANDWIDTH_FLOOR:.0%})"
        )
    return expected, degraded, reasons


@dataclass(frozen=True, slots=True)
class ProbeResult:
    device: str
    """The device's name: torch.cuda.get_device_name, or "cpu"."""
    dtype: str
    """The matmul's dtype as torch names it: "bfloat16", "float16" or "float32"."""
    tflops: float
    bandwidth_gbps: float
    expected: ExpectedRange | None
    degraded: bool
    reasons: list[str]
    duration_s: float
    torch_device: str = "cpu"
    """Which device ran the probe, as torch spells it ("cuda:0")."""
    size: int = 0
    """The square matrices' side."""
    copy_bytes: int = 0
    """The size of the tensor copied for the bandwidth figure."""
    readings: dict[str, int] = field(default_factory=dict)
    """Taken through torch right after the load, where it can: sm_clock_mhz, temperature_c."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "torch_device": self.torch_device,
            "dtype": self.dtype,
            "tflops": self.tflops,
            "bandwidth_gbps": self.bandwidth_gbps,
            "expected": None if self.expected is None else self.expected.as_dict(),
            "degraded": self.degraded,
            "reasons": list(self.reasons),
            "duration_s": self.duration_s,
            "size": self.size,
            "copy_bytes": self.copy_bytes,
            "readings": dict(self.readings),
        }


def run_probe(
    device: str = "auto", seconds: float = 2.0, *, size: int | None = None, copy_bytes: int | None = None
) -> ProbeResult:
    """Measure matmul throughput and memory bandwidth on `device` for about `seconds`.

    `device` is "auto" (cuda:0 when CUDA is available, else the CPU), "cpu",
    "cuda" or "cuda:N". Half the time goes to matmuls of `size`-square matrices
    (8192 on a GPU, 512 on the CPU) in bf16, or fp16 where the GPU has no bf16
    tensor cores; the other half to copies of a `copy_bytes` tensor (1 GiB on
    a GPU, 64 MiB on the CPU). Tensors are freed, and the CUDA cache emptied,
    before it returns.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    for name, value in (("size", size), ("copy_bytes", copy_bytes)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    torch = _import_torch()
    started = time.perf_counter()
    target = _resolve_device(torch, device)
    is_cuda = target.type == "cuda"
    device_name = torch.cuda.get_device_name(target) if is_cuda else "cpu"
    # CUDA events record on the current device's stream: make it the probed one.
    with torch.cuda.device(target) if is_cuda else contextlib.nullcontext():
        try:
            dtype = _matmul_dtype(torch, target)
            element = torch.empty((), dtype=dtype).element_size()
            if size is None:
                # Three matrices: a, b and the product.
                size = _fit(torch, target, _GPU_MATMUL_SIZE if is_cuda else _CPU_MATMUL_SIZE, 256,
                            lambda n: 3 * n * n * element)  # fmt: skip
            if copy_bytes is None:
                # Source and destination.
                copy_bytes = _fit(torch, target, _GPU_COPY_BYTES if is_cuda else _CPU_COPY_BYTES, 16 << 20,
                                  lambda n: 2 * n)  # fmt: skip
            tflops = _matmul_tflops(torch, target, dtype, size, seconds / 2)
            bandwidth = _copy_bandwidth_gbps(torch, target, copy_bytes, seconds / 2)
            readings = _readings(torch, target) if is_cuda else {}
        finally:
            if is_cuda:
                torch.cuda.empty_cache()
    dtype_name = str(dtype).removeprefix("torch.")
    expected, degraded, reasons = assess(device_name, tflops, bandwidth, dtype=dtype_name)
    return ProbeResult(
        device=device_name,
        dtype=dtype_name,
        tflops=tflops,
        bandwidth_gbps=bandwidth,
        expected=expected,
        degraded=degraded,
        reasons=reasons,
        duration_s=time.perf_counter() - started,
        torch_device=str(target),
        size=size,
        copy_bytes=copy_bytes,
        readings=readings,
    )


def format_probe(result: ProbeResult) -> str:
    """A few lines for a terminal: the figures, how they compare with the peaks, the verdict and why."""
    expected = result.expected
    verdict = "no verdict" if expected is None else "DEGRADED" if result.degraded else "healthy"
    where = result.device if result.device == result.torch_device else f"{result.device} ({result.torch_device})"
    tflops = f"{result.tflops:.2f}" if result.tflops < 10 else f"{result.tflops:.1f}"
    matmul = f"{tflops} TFLOP/s".ljust(16) + f"{result.dtype} {result.size}x{result.size}"
    bandwidth = f"{result.bandwidth_gbps:.1f} GB/s".ljust(16) + f"copies of {_format_bytes(result.copy_bytes)}"
    if expected is not None:
        matmul += f", {result.tflops / expected.peak_tflops:.0%} of peak {expected.peak_tflops:g} (floor {MATMUL_FLOOR:.0%})"
        bandwidth += (
            f", {result.bandwidth_gbps / expected.peak_bandwidth_gbps:.0%} of peak "
            f"{expected.peak_bandwidth_gbps:g} (floor {BANDWIDTH_FLOOR:.0%})"
        )
    lines = [f"GPU probe on {where}: {verdict}"]
    if expected is not None:
        lines.append(f"  expected   {expected.name}")
    lines += [f"  matmul     {matmul}", f"  bandwidth  {bandwidth}"]
    if result.readings:
        lines.append("  after load " + ", ".join(f"{key} {value}" for key, value in result.readings.items()))
    lines += [f"  - {reason}" for reason in result.reasons]
    lines.append(f"  took {result.duration_s:.1f} s")
    return "\n".join(lines)


def _import_torch() -> ModuleType:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"the GPU probe needs torch: {_INSTALL_HINT}") from exc
    return torch


def _resolve_device(torch: ModuleType, device: str) -> Any:
    if device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} asked for, but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            f"for a GPU probe: {_INSTALL_HINT}"
        )
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)


def _matmul_dtype(torch: ModuleType, target: Any) -> Any:
    """bf16, else fp16, else fp32: the first the device multiplies with."""
    candidates = [torch.bfloat16, torch.float16, torch.float32]
    if target.type == "cuda" and torch.cuda.get_device_capability(target)[0] < 8:
        # bf16 tensor cores arrived with Ampere; before it bf16 is emulated and slow.
        candidates.remove(torch.bfloat16)
    elif target.type == "cpu":
        # CPUs without fp16 arithmetic emulate it at a small fraction of fp32 speed.
        candidates.remove(torch.float16)
    for dtype in candidates:
        try:
            torch.ones(2, 2, dtype=dtype, device=target) @ torch.ones(2, 2, dtype=dtype, device=target)
        except RuntimeError:
            continue
        return dtype
    raise RuntimeError(f"no matmul dtype works on {target}")


def _fit(torch: ModuleType, target: Any, wanted: int, minimum: int, footprint: Callable[[int], int]) -> int:
    """`wanted`, halved until its footprint fits the probe's share of free GPU memory."""
    if target.type != "cuda":
        return wanted
    free, _total = torch.cuda.mem_get_info(target)
    budget = free * _FREE_MEMORY_SHARE
    while wanted > minimum and footprint(wanted) > budget:
        wanted //= 2
    return wanted


def _matmul_tflops(torch: ModuleType, target: Any, dtype: Any, size: int, seconds: float) -> float:
    a = torch.randn(size, size, device=target, dtype=dtype)
    b = torch.randn(size, size, device=target, dtype=dtype)
    product = torch.empty(size, size, device=target, dtype=dtype)
    try:
        calls, elapsed = _time_repeated(torch, target, lambda: torch.matmul(a, b, out=product), seconds)
    finally:
        del a, b, product
    return 2 * size**3 * calls / elapsed / 1e12


def _copy_bandwidth_gbps(torch: ModuleType, target: Any, copy_bytes: int, seconds: float) -> float:
    source = torch.ones(copy_bytes, dtype=torch.uint8, device=target)
    destination = torch.empty_like(source)
    try:
        calls, elapsed = _time_repeated(torch, target, lambda: destination.copy_(source), seconds)
    finally:
        del source, destination
    # Each copy reads every byte once and writes it once.
    return 2 * copy_bytes * calls / elapsed / 1e9


def _time_repeated(torch: ModuleType, target: Any, work: Callable[[], object], seconds: float) -> tuple[int, float]:
    """(calls, seconds they took) for `work` repeated over about `seconds`, after a warm-up.

    Calls run in batches that double while the time allows, so the
    synchronisation at the end of each batch costs next to nothing on a GPU.
    CUDA events time the GPU's work; the wall clock only bounds the loop.
    """
    clock = _CudaClock(torch) if target.type == "cuda" else _WallClock()
    warmup_end = time.perf_counter() + seconds * _WARMUP_SHARE
    while True:
        work()
        clock.synchronize()
        if time.perf_counter() >= warmup_end:
            break
    deadline = time.perf_counter() + seconds * (1 - _WARMUP_SHARE)
    calls, elapsed, batch = 0, 0.0, 1
    while True:
        start = clock.start()
        for _ in range(batch):
            work()
        taken = clock.stop(start)
        calls, elapsed = calls + batch, elapsed + taken
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return calls, elapsed
        per_call = max(taken / batch, 1e-7)  # CUDA events tick in half microseconds; a tiny call can read 0
        batch = max(1, min(batch * 2, int(remaining / per_call)))


class _CudaClock:
    def __init__(self, torch: ModuleType) -> None:
        self._torch = torch

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()

    def start(self) -> Any:
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start: Any) -> float:
        end = self._torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000


class _WallClock:
    def synchronize(self) -> None:
        pass

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, start: float) -> float:
        return time.perf_counter() - start


def _readings(torch: ModuleType, target: Any) -> dict[str, int]:
    """SM clock and temperature right after the load: low clocks on a hot GPU explain a slow probe."""
    readings: dict[str, int] = {}
    for key, read in (("sm_clock_mhz", torch.cuda.clock_rate), ("temperature_c", torch.cuda.temperature)):
        try:
            readings[key] = int(read(target))
        except Exception:  # noqa: BLE001 - optional: torch reads these through NVML, absent on MIG slices and some hosts
            continue
    return readings


def _format_bytes(count: int) -> str:
    if count >= 1 << 30:
        return f"{count / (1 << 30):g} GiB"
    return f"{count / (1 << 20):g} MiB"
