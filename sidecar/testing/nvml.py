"""A stand-in for the `pynvml` module (nvidia-ml-py), for tests, benchmarks and demos without a GPU.

`FakeNvml` has the functions the NVML collector calls, under pynvml's names and
signatures, answering with values recorded from H100 80GB HBM3 GPUs serving a
model (an 8-GPU HGX board's bus ids, ~410 W, ~72 GiB used). Errors are pynvml's
own classes (`pynvml.NVMLError_NotSupported`, `NVMLError_GpuIsLost`, ...), and
its constants and error classes are the real module's, so code that catches or
compares them behaves as against the real library.

Faults on demand:

- `fail(gpu, function, error, times=None)`: that function raises `error` for that
  GPU (`None`: every GPU), `times` times or for good.
- `lose_gpu(i)` / `restore_gpu(i)`: every call about GPU i raises
  `NVMLError_GpuIsLost`, as after XID 79 (fallen off the bus).
- `hang(i, function, seconds, times=1)`: the call blocks for `seconds` (`release()`
  ends every hang at once), as a driver stuck in a firmware call does.
- `library_missing()` / `library_restored()`: `nvmlInit` raises
  `NVMLError_LibraryNotFound` and every other call `NVMLError_Uninitialized`, as
  while the driver is unloaded for an upgrade.
- `inject_xid(i, xid)`: delivered through `nvmlEventSetWait_v2` to event sets GPU i
  registered `nvmlEventTypeXidCriticalError` on.
- `enable_mig(i, [(profile, gpu_instance_id), ...])`: MIG mode with those GPU
  instances.
- `reset_nvlink_counters(i)`: the NVLink throughput counters restart from 0, as
  after a driver reload.

Following a load (`load=`, what `gpu.nvml.simulate` uses): given the seconds
the model server has been busy so far, each GPU reads as idle (0 % utilisation,
72 W, 345 MHz) while it is not and as the recorded busy H100 (87 %, 412.5 W,
1980 MHz) while it is, blended by the busy share of the last driver sampling
period (1/6 s) or more, and its energy counter integrates that power exactly.

Where it differs from NVML: without `load`, values do not move except energy
(power x elapsed time), the NVLink throughput counters (rate x elapsed time)
and what the test sets; NVLink counters answer only for all links at once (scope id UINT_MAX, as
DCGM asks), not per link; `nvmlDeviceGetPcieThroughput` sleeps
`pcie_delay` (20 ms, as the driver blocks) without using CPU; handles are plain
objects, not ctypes pointers; only one sample per process is kept for the
process-utilisation calls; functions the collector does not call are absent
(AttributeError, as with an older nvidia-ml-py).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml

_NO_INSTANCE = 0xFFFFFFFF
_ALL_LINKS = 0xFFFFFFFF
_MIB = 1024 * 1024
_H100_MEMORY_MIB = 81559
_H100_RESERVED_MIB = 562
"""What the driver keeps for itself: the recorded dcgm-exporter payload's total less free less used."""
_SAMPLING_PERIOD_US = 167_000
_IDLE_POWER_MW = 72_000
"""An H100 SXM with a model loaded and nothing to do draws 60-80 W."""
_IDLE_SM_CLOCK_MHZ = 345


@dataclass(frozen=True, slots=True)
class _BusyReadings:
    """What a GPU reads while fully busy; `FakeGpu`'s defaults, kept when a load moves them."""

    power_mw: int
    gpu_util: int
    memory_util: int
    sm_clock_mhz: int


@dataclass
class _LoadState:
    """Where a load-following GPU's averaging period started, and the busy share of the last one."""

    period_start: float
    busy_at_start: float
    busy_share: float = 0.0
    busy_counted: float = 0.0
    """The load's reading the energy counter has integrated up to."""
_H100_BUS_IDS = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")


@dataclass(frozen=True, slots=True)
class FakeHandle:
    """A device handle: a GPU, or one of its MIG devices (`mig_slot`)."""

    index: int
    mig_slot: int | None = None


@dataclass
class FakeProcess:
    pid: int
    used_memory_bytes: int | None
    sm_util: int
    gpu_instance_id: int | None = None


@dataclass
class FakeMigInstance:
    profile: str
    gpu_instance_id: int
    uuid: str
    memory_total_mib: int
    memory_used_mib: int


@dataclass
class FakeGpu:
    """One GPU's readings; tests may change any of them while a collector runs."""

    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    bus_id: str = "00000000:18:00.0"
    gpu_util: int = 87
    memory_util: int = 41
    memory_total_mib: int = _H100_MEMORY_MIB
    memory_used_mib: int = 73_728
    """Allocated by processes (nvmlMemory_v2_t.used); the v1 answer's `used` adds the reserved memory."""
    memory_reserved_mib: int = _H100_RESERVED_MIB
    temperature_c: int = 54
    memory_temperature_c: int = 62
    power_mw: int = 412_500
    energy_mj: float = 1_523_456_789.0
    sm_clock_mhz: int = 1980
    memory_clock_mhz: int = 2619
    pcie_tx_kbs: int = 1_234
    pcie_rx_kbs: int = 5_678
    pcie_replays: int = 0
    encoder_util: int = 0
    decoder_util: int = 0
    nvlink: bool = True
    """False: a GPU without NVLink (a PCIe card), whose NVLink field values answer NOT_SUPPORTED."""
    nvlink_rx_kib_per_s: int = 14_067_500
    nvlink_tx_kib_per_s: int = 14_067_500
    """Together 28 135 MB/s as DCGM counts it, what the recorded dcgm-exporter payload shows for GPU 0."""
    nvlink_rx_kib: float = 0.0
    nvlink_tx_kib: float = 0.0
    vgpu_licensed: bool | None = None
    """None: not a vGPU (bare metal, NVML reports no licensable features); else the vGPU's license state."""
    ecc: dict[tuple[int, int], int] = field(default_factory=dict)
    """(NVML_MEMORY_ERROR_TYPE_*, NVML_VOLATILE_ECC / NVML_AGGREGATE_ECC) -> count."""
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Correctable, uncorrectable, pending, failure."""
    clocks_event_reasons: int = pynvml.nvmlClocksEventReasonSwPowerCap
    processes: list[FakeProcess] = field(default_factory=list)
    mig_enabled: bool = False
    mig_instances: list[FakeMigInstance] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FakeUtilization:
    gpu: int
    memory: int


@dataclass(frozen=True, slots=True)
class FakeMemory:
    total: int
    free: int
    used: int


@dataclass(frozen=True, slots=True)
class FakeMemoryV2:
    version: int
    total: int
    reserved: int
    free: int
    used: int


@dataclass(frozen=True, slots=True)
class FakeGridLicensableFeature:
    featureCode: int  # noqa: N815 - pynvml's attribute names
    featureState: int  # noqa: N815
    licenseInfo: str  # noqa: N815
    productName: str  # noqa: N815
    featureEnabled: int  # noqa: N815


@dataclass(frozen=True, slots=True)
class FakeGridLicensableFeatures:
    isGridLicenseSupported: int  # noqa: N815
    licensableFeaturesCount: int  # noqa: N815
    gridLicensableFeatures: tuple[FakeGridLicensableFeature, ...]  # noqa: N815


@dataclass(frozen=True, slots=True)
class FakePciInfo:
    busId: str  # noqa: N815 - pynvml's attribute names
    busIdLegacy: str  # noqa: N815
    domain: int
    bus: int
    device: int
    pciDeviceId: int  # noqa: N815
    pciSubSystemId: int  # noqa: N815


@dataclass(frozen=True, slots=True)
class FakeProcessInfo:
    pid: int
    usedGpuMemory: int | None  # noqa: N815
    gpuInstanceId: int  # noqa: N815
    computeInstanceId: int  # noqa: N815


@dataclass(frozen=True, slots=True)
class FakeProcessUtilization:
    pid: int
    timeStamp: int  # noqa: N815 - microseconds since the epoch, as NVML stamps samples
    smUtil: int  # noqa: N815
    memUtil: int  # noqa: N815
    encUtil: int = 0  # noqa: N815
    decUtil: int = 0  # noqa: N815


@dataclass(frozen=True, slots=True)
class FakeFieldValueUnion:
    uiVal: int = 0  # noqa: N815
    ullVal: int = 0  # noqa: N815
    dVal: float = 0.0  # noqa: N815


@dataclass(frozen=True, slots=True)
class FakeFieldValue:
    fieldId: int  # noqa: N815
    nvmlReturn: int  # noqa: N815
    valueType: int  # noqa: N815
    value: FakeFieldValueUnion
    scopeId: int = 0  # noqa: N815
    timestamp: int = 0
    """Microseconds, from the stand-in's clock (NVML: since the epoch)."""
    latencyUsec: int = 0  # noqa: N815


@dataclass(frozen=True, slots=True)
class FakeEventData:
    device: FakeHandle
    eventType: int  # noqa: N815
    eventData: int  # noqa: N815
    gpuInstanceId: int = _NO_INSTANCE  # noqa: N815
    computeInstanceId: int = _NO_INSTANCE  # noqa: N815


@dataclass
class FakeEventSet:
    registered: set[int] = field(default_factory=set)
    pending: deque[tuple[int, int]] = field(default_factory=deque)
    freed: bool = False


@dataclass
class _Fault:
    gpu: int | None
    function: str
    times: int | None
    error: type[pynvml.NVMLError] | None = None
    hang_s: float = 0.0

    def matches(self, gpu: int | None, function: str) -> bool:
        return self.function == function and (self.gpu is None or self.gpu == gpu)


def _mig_memory_mib(profile: str) -> int:
    match = re.fullmatch(r"\d+g\.(\d+)gb", profile)
    if match is None:
        raise ValueError(f"MIG profile {profile!r}: expected a name such as 1g.10gb or 3g.40gb")
    return int(match.group(1)) * 1024 - 384  # what 1g.10gb reports (9856 MiB), scaled


class FakeNvml:
    """Stands in for the `pynvml` module; see the module docstring."""

    def __init__(
        self,
        gpu_count: int = 2,
        *,
        clock: Callable[[], float] = time.monotonic,
        pcie_delay: float = 0.02,
        load: Callable[[], float] | None = None,
    ) -> None:
        """`load`: seconds the simulated GPUs have been busy so far (non-decreasing, any thread); they
        then follow it, see the module docstring."""
        self.gpus = [
            FakeGpu(
                index=i,
                uuid=f"GPU-6f2d2a1c-9b3e-4c51-8a7d-{0x5e0a11c0de00 + i:012x}",
                bus_id=f"00000000:{_H100_BUS_IDS[i % len(_H100_BUS_IDS)]}:00.0",
            )
            for i in range(gpu_count)
        ]
        self._clock = clock
        self._pcie_delay = pcie_delay
        self._lock = threading.Lock()
        self._events = threading.Condition(self._lock)
        self._released = threading.Event()
        self._counted_until = {gpu.index: clock() for gpu in self.gpus}
        self._load = load
        self._busy = {gpu.index: _BusyReadings(gpu.power_mw, gpu.gpu_util, gpu.memory_util, gpu.sm_clock_mhz)
                      for gpu in self.gpus}  # fmt: skip
        self._load_states: dict[int, _LoadState] = {}
        if load is not None:
            busy = load()
            self._load_states = {gpu.index: _LoadState(clock(), busy, busy_counted=busy) for gpu in self.gpus}
            for gpu in self.gpus:
                self._show_load(gpu, 0.0)
        self._calls: Counter[tuple[str, int | None]] = Counter()
        self._faults: list[_Fault] = []
        self._lost: set[int] = set()
        self._library_missing = False
        self._init_count = 0
        self._event_sets: list[FakeEventSet] = []

    def __getattr__(self, name: str) -> Any:
        # Constants and error classes come from the real module; its functions do not, so a call
        # the stand-in lacks fails loudly instead of reaching for a driver that is not there.
        value = getattr(pynvml, name)
        if callable(value) and not (isinstance(value, type) and issubclass(value, BaseException)):
            raise AttributeError(f"FakeNvml has no {name}(); add it to sidecar/testing/nvml.py if needed")
        return value

    # --- faults and inspection -------------------------------------------------------------

    def fail(self, gpu: int | None, function: str, error: type[pynvml.NVMLError], times: int | None = None) -> None:
        with self._lock:
            self._faults.append(_Fault(gpu, function, times, error=error))

    def hang(self, gpu: int | None, function: str, seconds: float, times: int | None = 1) -> None:
        with self._lock:
            self._released.clear()
            self._faults.append(_Fault(gpu, function, times, hang_s=seconds))

    def release(self) -> None:
        """End every hang now."""
        self._released.set()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.release()

    def lose_gpu(self, gpu: int) -> None:
        with self._lock:
            self._lost.add(gpu)

    def restore_gpu(self, gpu: int) -> None:
        with self._lock:
            self._lost.discard(gpu)

    def library_missing(self) -> None:
        with self._lock:
            self._library_missing = True
            self._init_count = 0

    def library_restored(self) -> None:
        with self._lock:
            self._library_missing = False

    def inject_xid(self, gpu: int, xid: int) -> None:
        with self._events:
            for event_set in self._event_sets:
                if gpu in event_set.registered and not event_set.freed:
                    event_set.pending.append((gpu, xid))
            self._events.notify_all()

    def enable_mig(self, gpu: int, instances: Sequence[tuple[str, int]]) -> None:
        """MIG mode on GPU `gpu` with these (profile, GPU instance id) pairs, e.g. [("3g.40gb", 1)]."""
        with self._lock:
            target = self.gpus[gpu]
            target.mig_enabled = True
            target.mig_instances = [
                FakeMigInstance(
                    profile=profile,
                    gpu_instance_id=gi,
                    uuid=f"MIG-0b7c3e1a-5d2f-5a6b-9c8d-{gpu:04x}{gi:08x}",
                    memory_total_mib=_mig_memory_mib(profile),
                    memory_used_mib=_mig_memory_mib(profile) // 2,
                )
                for profile, gi in instances
            ]

    def add_process(
        self, gpu: int, pid: int, used_memory_bytes: int | None, sm_util: int, gpu_instance_id: int | None = None
    ) -> None:
        with self._lock:
            self.gpus[gpu].processes.append(FakeProcess(pid, used_memory_bytes, sm_util, gpu_instance_id))

    def set_power(self, gpu: int, watts: float) -> None:
        """Change the power draw; the energy counter keeps what was drawn so far."""
        with self._lock:
            self._accumulate(self.gpus[gpu])
            self.gpus[gpu].power_mw = int(watts * 1000)

    def reset_nvlink_counters(self, gpu: int) -> None:
        """The NVLink throughput counters start again from 0, as after a driver reload."""
        with self._lock:
            self._accumulate(self.gpus[gpu])
            self.gpus[gpu].nvlink_rx_kib = self.gpus[gpu].nvlink_tx_kib = 0.0

    def calls(self, function: str, gpu: int | None = None) -> int:
        """How often `function` was called (about GPU `gpu`; None: in all)."""
        with self._lock:
            if gpu is None:
                return sum(count for (name, _), count in self._calls.items() if name == function)
            return self._calls[(function, gpu)]

    # --- the gate every call goes through ---------------------------------------------------

    def _enter(self, function: str, gpu: int | None = None) -> None:
        error: type[pynvml.NVMLError] | None = None
        hang_s = 0.0
        with self._lock:
            self._calls[(function, gpu)] += 1
            if function == "nvmlInit":
                if self._library_missing:
                    raise pynvml.NVMLError_LibraryNotFound()
            elif self._init_count == 0:
                raise pynvml.NVMLError_Uninitialized()
            if gpu is not None and gpu in self._lost:
                raise pynvml.NVMLError_GpuIsLost()
            if gpu is not None and not 0 <= gpu < len(self.gpus):
                raise pynvml.NVMLError_InvalidArgument()
            for fault in self._faults:
                if fault.matches(gpu, function):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    error, hang_s = fault.error, fault.hang_s
                    break
        if hang_s:
            self._released.wait(hang_s)
        if error is not None:
            raise error()

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        return self.gpus[handle.index]

    def _instance(self, handle: FakeHandle) -> FakeMigInstance | None:
        if handle.mig_slot is None:
            return None
        return self._gpu(handle).mig_instances[handle.mig_slot]

    def _accumulate(self, gpu: FakeGpu) -> float:
        """Advances the energy and NVLink counters (and a load-following GPU's readings) to now; returns now."""
        now = self._clock()
        elapsed = now - self._counted_until[gpu.index]
        state = self._load_states.get(gpu.index)
        if state is not None and self._load is not None:
            busy = self._load()
            # Idle power all along, and the busy surplus for the time the load was busy (mW x s = mJ).
            busy_s = min(max(busy - state.busy_counted, 0.0), max(elapsed, 0.0))
            state.busy_counted = max(busy, state.busy_counted)
            gpu.energy_mj += _IDLE_POWER_MW * elapsed + (self._busy[gpu.index].power_mw - _IDLE_POWER_MW) * busy_s
            if now - state.period_start >= _SAMPLING_PERIOD_US / 1e6:
                state.busy_share = min(max((busy - state.busy_at_start) / (now - state.period_start), 0.0), 1.0)
                state.period_start, state.busy_at_start = now, max(busy, state.busy_at_start)
            self._show_load(gpu, state.busy_share)
        else:
            gpu.energy_mj += gpu.power_mw * elapsed  # mW x s = mJ
        gpu.nvlink_rx_kib += gpu.nvlink_rx_kib_per_s * elapsed
        gpu.nvlink_tx_kib += gpu.nvlink_tx_kib_per_s * elapsed
        self._counted_until[gpu.index] = now
        return now

    def _show_load(self, gpu: FakeGpu, share: float) -> None:
        """Sets a load-following GPU's readings for a busy share (0-1) of the last period."""
        busy = self._busy[gpu.index]
        gpu.power_mw = round(_IDLE_POWER_MW + (busy.power_mw - _IDLE_POWER_MW) * share)
        gpu.gpu_util = round(busy.gpu_util * share)
        gpu.memory_util = round(busy.memory_util * share)
        gpu.sm_clock_mhz = round(_IDLE_SM_CLOCK_MHZ + (busy.sm_clock_mhz - _IDLE_SM_CLOCK_MHZ) * share)

    def _whole_gpu_only(self, handle: FakeHandle) -> FakeGpu:
        # MIG devices answer memory, name, UUID and processes; device-wide readings stay on the GPU.
        if handle.mig_slot is not None:
            raise pynvml.NVMLError_NotSupported()
        return self._gpu(handle)

    # --- library --------------------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names throughout
        self._enter("nvmlInit")
        with self._lock:
            self._init_count += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._enter("nvmlShutdown")
        with self._lock:
            self._init_count = max(0, self._init_count - 1)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._enter("nvmlSystemGetDriverVersion")
        return "550.54.15"

    # --- identity -------------------------------------------------------------------------

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByIndex", index)
        return FakeHandle(index)

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetIndex", handle.index)
        return handle.index

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:  # noqa: N802
        self._enter("nvmlDeviceGetUUID", handle.index)
        instance = self._instance(handle)
        return instance.uuid if instance else self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:  # noqa: N802
        self._enter("nvmlDeviceGetName", handle.index)
        instance = self._instance(handle)
        name = self._gpu(handle).name
        return f"{name} MIG {instance.profile}" if instance else name

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> FakePciInfo:  # noqa: N802
        self._enter("nvmlDeviceGetPciInfo", handle.index)
        bus_id = self._gpu(handle).bus_id
        domain, bus, device_function = bus_id.split(":")
        return FakePciInfo(
            busId=bus_id,
            busIdLegacy=bus_id[4:],
            domain=int(domain, 16),
            bus=int(bus, 16),
            device=int(device_function.split(".")[0], 16),
            pciDeviceId=0x233010DE,
            pciSubSystemId=0x16C110DE,
        )

    # --- readings -------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> FakeUtilization:  # noqa: N802
        self._enter("nvmlDeviceGetUtilizationRates", handle.index)
        gpu = self._whole_gpu_only(handle)
        if gpu.mig_enabled:
            raise pynvml.NVMLError_NotSupported()
        with self._lock:
            self._accumulate(gpu)
            return FakeUtilization(gpu.gpu_util, gpu.memory_util)

    def nvmlDeviceGetMemoryInfo(  # noqa: N802
        self, handle: FakeHandle, version: int | None = None
    ) -> FakeMemory | FakeMemoryV2:
        # pynvml calls nvmlDeviceGetMemoryInfo_v2 when given a version: faults name that function.
        self._enter("nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo", handle.index)
        instance = self._instance(handle)
        gpu = self._gpu(handle)
        total, used, reserved = (instance.memory_total_mib, instance.memory_used_mib, 0) if instance else (
            gpu.memory_total_mib, gpu.memory_used_mib, gpu.memory_reserved_mib)  # fmt: skip
        free = total - reserved - used
        if not version:
            return FakeMemory(total=total * _MIB, free=free * _MIB, used=(total - free) * _MIB)
        if version != pynvml.nvmlMemory_v2:
            raise pynvml.NVMLError_ArgumentVersionMismatch()
        return FakeMemoryV2(version, total * _MIB, reserved=reserved * _MIB, free=free * _MIB, used=used * _MIB)

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTemperature", handle.index)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError_InvalidArgument()
        return self._whole_gpu_only(handle).temperature_c

    def nvmlDeviceGetFieldValues(  # noqa: N802
        self, handle: FakeHandle, field_ids: Sequence[int | tuple[int, int]]
    ) -> list[FakeFieldValue]:
        self._enter("nvmlDeviceGetFieldValues", handle.index)
        gpu = self._whole_gpu_only(handle)
        with self._lock:
            at_us = int(self._accumulate(gpu) * 1_000_000)
            nvlink = {pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: int(gpu.nvlink_rx_kib),
                      pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: int(gpu.nvlink_tx_kib)}  # fmt: skip
        values = []
        for requested in field_ids:
            # pynvml takes a field id, or a (field id, scope id) pair.
            field_id, scope = requested if isinstance(requested, tuple) else (requested, 0)
            if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP:
                values.append(FakeFieldValue(field_id, pynvml.NVML_SUCCESS, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT,
                                             FakeFieldValueUnion(uiVal=gpu.memory_temperature_c), scope,
                                             at_us))  # fmt: skip
            elif field_id in nvlink and gpu.nvlink:
                status = pynvml.NVML_SUCCESS if scope == _ALL_LINKS else pynvml.NVML_ERROR_INVALID_ARGUMENT
                values.append(FakeFieldValue(field_id, status, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                                             FakeFieldValueUnion(ullVal=nvlink[field_id]), scope, at_us))  # fmt: skip
            else:
                values.append(FakeFieldValue(field_id, pynvml.NVML_ERROR_NOT_SUPPORTED,
                                             pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, FakeFieldValueUnion(), scope,
                                             at_us))  # fmt: skip
        return values

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetPowerUsage", handle.index)
        gpu = self._whole_gpu_only(handle)
        with self._lock:
            self._accumulate(gpu)
            return gpu.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTotalEnergyConsumption", handle.index)
        gpu = self._whole_gpu_only(handle)
        with self._lock:
            self._accumulate(gpu)
            return int(gpu.energy_mj)

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetClockInfo", handle.index)
        gpu = self._whole_gpu_only(handle)
        if clock_type == pynvml.NVML_CLOCK_SM:
            with self._lock:
                self._accumulate(gpu)
                return gpu.sm_clock_mhz
        if clock_type == pynvml.NVML_CLOCK_MEM:
            return gpu.memory_clock_mhz
        raise pynvml.NVMLError_InvalidArgument()

    def nvmlDeviceGetPcieThroughput(self, handle: FakeHandle, counter: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetPcieThroughput", handle.index)
        gpu = self._whole_gpu_only(handle)
        if self._pcie_delay:
            time.sleep(self._pcie_delay)
        if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES:
            return gpu.pcie_tx_kbs
        if counter == pynvml.NVML_PCIE_UTIL_RX_BYTES:
            return gpu.pcie_rx_kbs
        raise pynvml.NVMLError_InvalidArgument()

    def nvmlDeviceGetPcieReplayCounter(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetPcieReplayCounter", handle.index)
        return self._whole_gpu_only(handle).pcie_replays

    def nvmlDeviceGetEncoderUtilization(self, handle: FakeHandle) -> list[int]:  # noqa: N802
        self._enter("nvmlDeviceGetEncoderUtilization", handle.index)
        return [self._whole_gpu_only(handle).encoder_util, _SAMPLING_PERIOD_US]

    def nvmlDeviceGetDecoderUtilization(self, handle: FakeHandle) -> list[int]:  # noqa: N802
        self._enter("nvmlDeviceGetDecoderUtilization", handle.index)
        return [self._whole_gpu_only(handle).decoder_util, _SAMPLING_PERIOD_US]

    def nvmlDeviceGetGridLicensableFeatures(self, handle: FakeHandle) -> FakeGridLicensableFeatures:  # noqa: N802
        self._enter("nvmlDeviceGetGridLicensableFeatures", handle.index)
        licensed = self._whole_gpu_only(handle).vgpu_licensed
        if licensed is None:
            return FakeGridLicensableFeatures(0, 0, ())
        vgpu = FakeGridLicensableFeature(
            featureCode=pynvml.NVML_GRID_LICENSE_FEATURE_CODE_VGPU, featureState=int(licensed),
            licenseInfo="", productName="NVIDIA Virtual Compute Server", featureEnabled=1,
        )  # fmt: skip
        return FakeGridLicensableFeatures(1, 1, (vgpu,))

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, error_type: int, counter_type: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTotalEccErrors", handle.index)
        return self._whole_gpu_only(handle).ecc.get((error_type, counter_type), 0)

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, int, int, int]:  # noqa: N802
        self._enter("nvmlDeviceGetRemappedRows", handle.index)
        return self._whole_gpu_only(handle).remapped_rows

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle.index)
        return self._whole_gpu_only(handle).clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle.index)
        return self._whole_gpu_only(handle).clocks_event_reasons

    # --- processes ------------------------------------------------------------------------

    def _processes(self, handle: FakeHandle) -> list[FakeProcess]:
        gpu = self._gpu(handle)
        instance = self._instance(handle)
        if instance is None:
            return list(gpu.processes)
        return [p for p in gpu.processes if p.gpu_instance_id == instance.gpu_instance_id]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[FakeProcessInfo]:  # noqa: N802
        self._enter("nvmlDeviceGetComputeRunningProcesses", handle.index)
        return [
            FakeProcessInfo(
                pid=p.pid,
                usedGpuMemory=p.used_memory_bytes,
                gpuInstanceId=_NO_INSTANCE if p.gpu_instance_id is None else p.gpu_instance_id,
                computeInstanceId=_NO_INSTANCE if p.gpu_instance_id is None else 0,
            )
            for p in self._processes(handle)
        ]

    def _utilization_samples(self, handle: FakeHandle, since_us: int) -> list[FakeProcessUtilization]:
        gpu = self._whole_gpu_only(handle)
        if gpu.mig_enabled:
            raise pynvml.NVMLError_NotSupported()
        now_us = max(int(time.time() * 1_000_000), since_us + 1)
        samples = [FakeProcessUtilization(p.pid, now_us, p.sm_util, p.sm_util // 2) for p in gpu.processes]
        if not samples:
            raise pynvml.NVMLError_NotFound()  # what the driver answers when no process ran since `since_us`
        return samples

    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self, handle: FakeHandle, timestamp: int
    ) -> list[FakeProcessUtilization]:
        self._enter("nvmlDeviceGetProcessUtilization", handle.index)
        return self._utilization_samples(handle, timestamp)

    def nvmlDeviceGetProcessesUtilizationInfo(  # noqa: N802
        self, handle: FakeHandle, timestamp: int
    ) -> list[FakeProcessUtilization]:
        self._enter("nvmlDeviceGetProcessesUtilizationInfo", handle.index)
        return self._utilization_samples(handle, timestamp)

    # --- MIG ------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:  # noqa: N802
        self._enter("nvmlDeviceGetMigMode", handle.index)
        enabled = self._whole_gpu_only(handle).mig_enabled
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetMaxMigDeviceCount", handle.index)
        return 7 if self._whole_gpu_only(handle).mig_enabled else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:  # noqa: N802
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex", handle.index)
        gpu = self._whole_gpu_only(handle)
        if not gpu.mig_enabled or index >= len(gpu.mig_instances):
            raise pynvml.NVMLError_NotFound()
        return FakeHandle(handle.index, index)

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetGpuInstanceId", handle.index)
        instance = self._instance(handle)
        if instance is None:
            raise pynvml.NVMLError_InvalidArgument()
        return instance.gpu_instance_id

    # --- events ---------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> FakeEventSet:  # noqa: N802
        self._enter("nvmlEventSetCreate")
        event_set = FakeEventSet()
        with self._lock:
            self._event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(  # noqa: N802
        self, handle: FakeHandle, event_types: int, event_set: FakeEventSet
    ) -> None:
        self._enter("nvmlDeviceRegisterEvents", handle.index)
        if event_types & pynvml.nvmlEventTypeXidCriticalError:
            with self._lock:
                event_set.registered.add(handle.index)

    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> FakeEventData:  # noqa: N802
        self._enter("nvmlEventSetWait_v2")
        with self._events:
            self._events.wait_for(lambda: bool(event_set.pending) or event_set.freed, timeout_ms / 1000)
            if not event_set.pending:
                raise pynvml.NVMLError_Timeout()
            gpu, xid = event_set.pending.popleft()
        return FakeEventData(FakeHandle(gpu), pynvml.nvmlEventTypeXidCriticalError, xid)

    def nvmlEventSetWait(self, event_set: FakeEventSet, timeout_ms: int) -> FakeEventData:  # noqa: N802
        return self.nvmlEventSetWait_v2(event_set, timeout_ms)

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:  # noqa: N802
        self._enter("nvmlEventSetFree")
        with self._events:
            event_set.freed = True
            self._event_sets.remove(event_set)
            self._events.notify_all()
