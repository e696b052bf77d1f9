"""GPU readings through NVML (nvidia-ml-py), as `GpuSample`s under dcgm-exporter's field names.

Threads, and why:

- The sampler thread wakes every `interval`, hands each GPU's read to that
  GPU's worker, and waits for the answers. NVML calls block (PCIe throughput
  about 20 ms inside the driver; a GPU in trouble can block for seconds), so
  none runs on the event loop, and none runs on the sampler either.
- One worker thread per GPU, one read in flight per GPU. A call that runs past
  `call_timeout` marks its GPU stale (event `read_timeout`); the other GPUs keep
  being sampled, and the stuck GPU gets no second read until the first returns.
  Workers are daemon threads: a call that never returns must not keep the
  process from exiting.
- The XID thread waits on an NVML event set, a short timeout at a time so that
  `stop()` is prompt.

Failures are states and events, never exceptions out of the collector:

- A read the GPU or driver does not support (`NVMLError_NotSupported`,
  `NVMLError_FunctionNotFound`, `NVMLError_NoPermission`, or a function missing
  from an older nvidia-ml-py) is tried once per GPU and skipped afterwards; its
  fields are absent from samples, never zero.
- `NVMLError_GpuIsLost`: state lost, event `gpu_lost` once, a read every
  `lost_retry_interval`, event `recovered` when the GPU answers again.
- No library, no driver, or NVML uninitialised (a driver reload): the collector
  reports `nvml_available=False` with event `nvml_unavailable`, tries `nvmlInit`
  again every `reinit_interval`, and says `driver_reloaded` (or `recovered`, if
  NVML was never up) when it works again.

Callbacks (`on_sample`, `on_event`) run on the collector's threads; hand records
to the event loop with `loop.call_soon_threadsafe`. A callback that raises is
logged and does not stop sampling. Events are logged at debug level only: the
receiver of `on_event` decides how loudly to report them.

MIG: with MIG mode on, each GPU instance gets a sample of its own (memory and
processes, keyed `"<gpu>/<gpu instance id>"` in `latest()`), labelled as
dcgm-exporter labels it: the parent GPU's index, UUID, bus id and model, plus
`gpu_instance_profile` (GPU_I_PROFILE, e.g. "1g.10gb") and `gpu_instance_id`
(GPU_I_ID). The parent's sample keeps the device-wide fields (power, energy,
temperatures, clocks, errors) and lists no processes, so none is counted twice.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sidecar.config import NvmlConfig
from sidecar.exchange import GpuEvent, GpuProcess, GpuSample, GpuState
from sidecar.gpu import fields as f

logger = logging.getLogger(__name__)

REINIT_INTERVAL_S = 30.0
"""How often to try `nvmlInit` again while NVML is unavailable (a driver upgrade reloads it)."""
LOST_RETRY_INTERVAL_S = 10.0
"""How often to read a lost GPU again: a reset can bring it back without a reboot."""
_XID_WAIT_MS = 200
"""Longest single wait on the event set; bounds how long `stop()` waits for the XID thread."""
_MIB = 1024 * 1024
_ALL_LINKS = 0xFFFFFFFF
"""The NVLink scope id NVML sums every link under (UINT_MAX), as DCGM asks for its bandwidth total."""
_MEMORY_V2 = "nvmlDeviceGetMemoryInfo_v2"


@dataclass(frozen=True, slots=True)
class NvmlStats:
    """The collector's own counters, for `/metrics`."""

    nvml_available: bool
    samples_taken: int
    """Successful reads of a whole GPU."""
    read_errors: Mapping[str, int]
    """Failed reads by reader (`sidecar.gpu.fields` names them), unsupported ones excepted."""
    read_timeouts: int
    """NVML calls that ran past `call_timeout`."""
    xid_errors: Mapping[tuple[str, int], int] = field(default_factory=dict)
    """(GPU index, XID) -> how many since the collector started."""


class _Unsupported(Exception):
    """The GPU or driver cannot answer this read; asking again will not change that."""


class _GpuLost(Exception):
    pass


class _NvmlGone(Exception):
    """NVML itself is unusable (library missing, driver not loaded, uninitialised)."""


@dataclass
class _InstanceReading:
    profile: str
    gpu_instance_id: str
    fields: dict[str, float]
    processes: tuple[GpuProcess, ...]


@dataclass
class _Reading:
    fields: dict[str, float]
    processes: tuple[GpuProcess, ...] = ()
    instances: list[_InstanceReading] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class _Worker:
    """A daemon thread that runs one GPU's reads, one at a time."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, job))
        return future

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # delivered to the sampler, which owns the decision
                future.set_exception(exc)


class _Gpu:
    """One GPU as the sampler knows it. Its read-side attributes are touched only by its worker,
    and only while a read is in flight, so they need no lock."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.key = str(index)
        self.worker = _Worker(f"nvml-gpu{index}")
        self.handle: Any = None
        self.uuid = ""
        self.model_name = ""
        self.pci_bus_id = ""
        self.state = GpuState.OK
        self.error: str | None = None
        self.in_flight: Future[_Reading] | None = None
        self.call: tuple[str, float] | None = None
        """The NVML function running now for this GPU and when it started (monotonic)."""
        self.retry_at = 0.0
        self.unsupported: set[str] = set()
        self.mig_mode: int | None = None
        self.pcie: dict[str, float] = {}
        self.pcie_read_at = float("-inf")
        self.nvlink: tuple[int, int] | None = None
        """The last NVLink read: RX + TX KiB since the driver loaded, and when (microseconds)."""
        self.process_util_since_us = 0


def _text(value: str | bytes) -> str:
    # nvidia-ml-py decodes strings; older pynvml releases hand back bytes.
    return value.decode() if isinstance(value, bytes) else value


def _handle_key(handle: Any) -> Hashable:
    # NVML hands out a fresh ctypes pointer object per call; the address identifies the device.
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return handle


def _mig_profile(mig_device_name: str) -> str:
    # A MIG device is named "<GPU model> MIG <profile>"; dcgm-exporter's GPU_I_PROFILE is the profile.
    _, marker, profile = mig_device_name.rpartition("MIG ")
    return profile.strip() if marker else mig_device_name


def nvml_present() -> bool:
    """Whether NVML answers on this machine (an NVIDIA driver and nvidia-ml-py). Blocks briefly."""
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


class NvmlCollector:
    """Samples every GPU NVML sees (or `config.devices`) every `config.interval`; see the module docstring."""

    def __init__(
        self,
        config: NvmlConfig,
        hostname: str,
        on_sample: Callable[[GpuSample], None],
        on_event: Callable[[GpuEvent], None],
        nvml: Any | None = None,
        clock: Callable[[], float] = time.time,
        *,
        reinit_interval: float = REINIT_INTERVAL_S,
        lost_retry_interval: float = LOST_RETRY_INTERVAL_S,
        simulated: bool = False,
    ) -> None:
        """`simulated`: `nvml` is a simulation (gpu.nvml.simulate); every sample says so."""
        self._config = config
        self._simulated = simulated
        self._hostname = hostname
        self._on_sample = on_sample
        self._on_event = on_event
        self._clock = clock
        self._reinit_interval = reinit_interval
        self._lost_retry_interval = lost_retry_interval
        self._nvml = nvml if nvml is not None else self._import_pynvml()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._xid: _XidWatcher | None = None
        self._gpus: dict[int, _Gpu] = {}
        self._available = False
        self._ever_available = False
        self._unavailable_reported = False
        self._driver_version = ""
        self._init_at = 0.0
        self._latest: dict[str, GpuSample] = {}
        # Per thread: only the sampler's own events wait for its pass; the XID watcher's go at once.
        self._held = threading.local()
        self._samples_taken = 0
        self._read_errors: dict[str, int] = {}
        self._read_timeouts = 0
        self._xid_watched: frozenset[str] = frozenset()
        self._last_xid: dict[str, int] = {}
        self._xid_counts: dict[tuple[str, int], int] = {}

    @staticmethod
    def _import_pynvml() -> Any:
        try:
            return importlib.import_module("pynvml")
        except ImportError:
            return None  # reported as NVML unavailable when sampling starts

    # --- public surface -------------------------------------------------------------------

    @property
    def nvml_available(self) -> bool:
        return self._available

    def latest(self) -> dict[str, GpuSample]:
        """The newest sample of each GPU (key: index) and MIG instance (key: "<index>/<GPU instance id>")."""
        with self._lock:
            return dict(self._latest)

    def stats(self) -> NvmlStats:
        with self._lock:
            return NvmlStats(
                nvml_available=self._available,
                samples_taken=self._samples_taken,
                read_errors=dict(self._read_errors),
                read_timeouts=self._read_timeouts,
                xid_errors=dict(self._xid_counts),
            )

    def start(self) -> None:
        """Start sampling in the background; returns at once (even if NVML is missing or stuck)."""
        if self._thread is not None:
            raise RuntimeError("NvmlCollector.start() was called twice; build a new collector to restart")
        if not self._config.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop sampling; waits at most `timeout` seconds, even with an NVML call stuck."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("NVML sampler did not stop within %.1fs; left running as a daemon thread", timeout)

    # --- sampler thread -------------------------------------------------------------------

    def _run(self) -> None:
        next_cycle = time.monotonic()
        try:
            while not self._stopping.is_set():
                try:
                    self._cycle()
                except Exception:
                    logger.exception("NVML sampling cycle failed; trying again next interval")
                next_cycle = max(next_cycle + self._config.interval, time.monotonic())
                self._stopping.wait(next_cycle - time.monotonic())
        finally:
            self._close_nvml(shutdown=True)

    def _cycle(self) -> None:
        if not self._available:
            if time.monotonic() >= self._init_at:
                self._init_nvml()
            if not self._available:
                self._publish([self._state_sample(gpu, GpuState.UNAVAILABLE) for gpu in self._gpus.values()])
                return
        # A pass's events go out after its samples: whoever hears "recovered" (or "read_timeout")
        # then finds the state it announces in `latest()`, not the pass before.
        held = self._held.events = []
        try:
            samples = self._sample_gpus()
        finally:
            self._held.events = None
        self._publish(samples)
        for event in held:
            self._deliver(event)

    def _init_nvml(self) -> None:
        nvml = self._nvml
        try:
            if nvml is None:
                raise _NvmlGone("the pynvml module (package nvidia-ml-py) is not installed")
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            self._driver_version = self._read_driver_version()
        except Exception as exc:
            self._init_at = time.monotonic() + self._reinit_interval
            if not self._unavailable_reported:
                self._unavailable_reported = True
                self._event("nvml_unavailable", None, f"NVML could not be initialised ({exc}); "
                            f"trying again every {self._reinit_interval:g}s")  # fmt: skip
            return
        indices = list(self._config.devices) or list(range(count))
        missing = [i for i in indices if not 0 <= i < count]
        if missing:
            logger.warning("GPUs %s in nvml.devices do not exist (NVML sees %d); skipped", missing, count)
        for gpu in self._gpus.values():
            gpu.worker.close()
        self._gpus = {i: _Gpu(i) for i in indices if 0 <= i < count}
        with self._lock:
            self._available = True
        if self._unavailable_reported:
            kind = "driver_reloaded" if self._ever_available else "recovered"
            self._event(kind, None, f"NVML is available again ({count} GPUs)")
        self._ever_available = True
        self._unavailable_reported = False
        if self._config.xid_events and self._gpus:
            self._xid = _XidWatcher(self._nvml, list(self._gpus), self._xid_started, self._xid_seen)

    def _read_driver_version(self) -> str:
        # Read once per init: a driver upgrade reloads NVML, and the init after it reads again.
        try:
            return _text(self._nvml.nvmlSystemGetDriverVersion())
        except Exception as exc:
            logger.debug("nvmlSystemGetDriverVersion failed: %s", exc)
            return ""

    def _lose_nvml(self, reason: str) -> list[GpuSample]:
        """Marks NVML and every GPU unavailable; returns the unavailable samples to publish."""
        for gpu in self._gpus.values():
            gpu.state, gpu.error = GpuState.UNAVAILABLE, reason
        unavailable = [self._state_sample(gpu, GpuState.UNAVAILABLE) for gpu in self._gpus.values()]
        with self._lock:
            # In one step: a scrape must never see NVML down beside readings that look current.
            self._available = False
            self._latest = {sample.gpu: sample for sample in unavailable}
        self._unavailable_reported = True
        self._init_at = time.monotonic() + self._reinit_interval
        self._event("nvml_unavailable", None, f"NVML stopped answering ({reason}); "
                    f"trying again every {self._reinit_interval:g}s")  # fmt: skip
        self._close_nvml(shutdown=False)
        return unavailable

    def _close_nvml(self, *, shutdown: bool) -> None:
        if self._xid is not None:
            self._xid.stop(timeout=_XID_WAIT_MS / 1000 * 2.5)
            self._xid = None
            self._xid_watched = frozenset()
        stuck = any(gpu.in_flight is not None and not gpu.in_flight.done() for gpu in self._gpus.values())
        if shutdown:
            for gpu in self._gpus.values():
                gpu.worker.close()
        # Shut down only an NVML that is up, and not while a call is still inside the driver:
        # nvmlShutdown could then block this thread as well.
        if self._available and not stuck and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                logger.debug("nvmlShutdown failed: %s", exc)
            with self._lock:
                self._available = False

    def _sample_gpus(self) -> list[GpuSample]:
        now = time.monotonic()
        samples: list[GpuSample] = []
        pending: dict[Future[_Reading], _Gpu] = {}
        for gpu in self._gpus.values():
            if gpu.in_flight is not None:
                if not gpu.in_flight.done():
                    samples.append(self._state_sample(gpu, GpuState.STALE))
                    continue
                gpu.in_flight = None  # the late answer of a timed-out read: dropped, a fresh read follows
            if gpu.state is GpuState.LOST and now < gpu.retry_at:
                samples.append(self._state_sample(gpu, GpuState.LOST))
                continue
            gpu.in_flight = gpu.worker.submit(partial(self._read_gpu, gpu))
            pending[gpu.in_flight] = gpu

        gone: str | None = None
        timeout = self._config.call_timeout
        poll = min(0.05, timeout / 4)
        while pending and not self._stopping.is_set():
            done, _ = wait(pending, timeout=poll, return_when=FIRST_COMPLETED)
            for future in done:
                gpu = pending.pop(future)
                gpu.in_flight = None
                try:
                    samples.extend(self._finish_read(gpu, future))
                except _NvmlGone as exc:
                    gone = str(exc)
            now = time.monotonic()
            for future, gpu in list(pending.items()):
                call = gpu.call
                if call is not None and now - call[1] > timeout:
                    del pending[future]  # stays in gpu.in_flight: no second read until this one returns
                    samples.append(self._timed_out(gpu, call[0]))
        if gone is not None:
            return self._lose_nvml(gone)
        return samples

    def _finish_read(self, gpu: _Gpu, future: Future[_Reading]) -> list[GpuSample]:
        error = future.exception()
        if isinstance(error, _NvmlGone):
            raise error
        if isinstance(error, _GpuLost):
            gpu.retry_at = time.monotonic() + self._lost_retry_interval
            if gpu.state is not GpuState.LOST:
                gpu.state, gpu.error = GpuState.LOST, str(error)
                self._event("gpu_lost", gpu, f"GPU {gpu.index} is lost ({error}); reading it again every "
                            f"{self._lost_retry_interval:g}s")  # fmt: skip
            return [self._state_sample(gpu, GpuState.LOST)]
        if error is not None:
            # A failure no reader accounted for (identity unreadable, or a bug): stale until a read works.
            self._count_error(f.IDENTITY if gpu.handle is None else "internal")
            if not isinstance(error, (_Unsupported, *self._nvml_error_types())):
                logger.error("Reading GPU %d failed", gpu.index, exc_info=error)
            gpu.state, gpu.error = GpuState.STALE, f"{type(error).__name__}: {error}"
            return [self._state_sample(gpu, GpuState.STALE)]
        reading = future.result()
        if gpu.state is not GpuState.OK:
            self._event("recovered", gpu, f"GPU {gpu.index} answers again (was {gpu.state.value})")
            gpu.state, gpu.error = GpuState.OK, None
        with self._lock:
            self._samples_taken += 1
        return self._ok_samples(gpu, reading)

    def _timed_out(self, gpu: _Gpu, function: str) -> GpuSample:
        with self._lock:
            self._read_timeouts += 1
        message = (f"{function} on GPU {gpu.index} did not return within {self._config.call_timeout:g}s; "
                   "the GPU is reported stale until it answers")  # fmt: skip
        if gpu.state is not GpuState.STALE:
            gpu.state, gpu.error = GpuState.STALE, message
            self._event("read_timeout", gpu, message)
        return self._state_sample(gpu, GpuState.STALE)

    # --- samples and events ---------------------------------------------------------------

    def _sample(self, gpu: _Gpu, state: GpuState, fields: Mapping[str, float], **extra: Any) -> GpuSample:
        return GpuSample(
            at=self._clock(),
            source="nvml",
            gpu=gpu.key,
            uuid=gpu.uuid,
            pci_bus_id=gpu.pci_bus_id,
            device=f"nvidia{gpu.index}",
            model_name=gpu.model_name,
            hostname=self._hostname,
            state=state,
            fields=fields,
            driver_version=self._driver_version,
            simulated=self._simulated,
            **extra,
        )

    def _state_sample(self, gpu: _Gpu, state: GpuState) -> GpuSample:
        # No values: a GPU that is not answering must not look like one that reads the same as before.
        return self._sample(gpu, state, {}, error=gpu.error or state.value)

    def _ok_samples(self, gpu: _Gpu, reading: _Reading) -> list[GpuSample]:
        watched = gpu.key in self._xid_watched
        if watched:
            with self._lock:
                reading.fields[f.XID_ERRORS] = float(self._last_xid.get(gpu.key, 0))
        error = f"failed reads: {', '.join(reading.failed)}" if reading.failed else None
        samples = [self._sample(gpu, GpuState.OK, reading.fields, processes=reading.processes, error=error)]
        samples.extend(
            self._sample(gpu, GpuState.OK, instance.fields, processes=instance.processes,
                         gpu_instance_profile=instance.profile, gpu_instance_id=instance.gpu_instance_id)
            for instance in reading.instances
        )  # fmt: skip
        return samples

    def _publish(self, samples: list[GpuSample]) -> None:
        latest = {
            sample.gpu if sample.gpu_instance_id is None else f"{sample.gpu}/{sample.gpu_instance_id}": sample
            for sample in samples
        }
        with self._lock:
            self._latest = latest
        for sample in samples:
            try:
                self._on_sample(sample)
            except Exception:
                logger.exception("GPU sample observer raised; sample of GPU %s dropped", sample.gpu)

    def _event(self, kind: str, gpu: _Gpu | None, message: str, xid: int | None = None) -> None:
        # Debug only: events are the report, and whoever receives them decides how loudly to log.
        logger.debug("%s", message, extra={"gpu_event": kind, "gpu": gpu.key if gpu else None})
        event = GpuEvent(
            at=self._clock(), kind=kind, gpu=gpu.key if gpu else None, uuid=gpu.uuid if gpu else None,
            message=message, xid=xid,
        )  # fmt: skip
        held: list[GpuEvent] | None = getattr(self._held, "events", None)
        if held is not None:
            held.append(event)
        else:
            self._deliver(event)

    def _deliver(self, event: GpuEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            logger.exception("GPU event observer raised; %s event dropped", event.kind)

    def _count_error(self, reader: str) -> None:
        with self._lock:
            self._read_errors[reader] = self._read_errors.get(reader, 0) + 1

    # --- XID callbacks (XID thread) -------------------------------------------------------

    def _xid_started(self, watched: frozenset[str]) -> None:
        self._xid_watched = watched

    def _xid_seen(self, gpu_key: str, xid: int) -> None:
        with self._lock:
            self._last_xid[gpu_key] = xid
            self._xid_counts[(gpu_key, xid)] = self._xid_counts.get((gpu_key, xid), 0) + 1
        gpu = next((g for g in self._gpus.values() if g.key == gpu_key), None)
        self._event("xid", gpu, f"XID {xid} ({f.xid_name(xid)}) on GPU {gpu_key}", xid=xid)

    # --- reading one GPU (its worker thread) ----------------------------------------------

    def _nvml_error_types(self) -> tuple[type[BaseException], ...]:
        return (self._nvml.NVMLError,) if self._nvml is not None else ()

    def _classified(self, function: str, exc: BaseException) -> BaseException:
        nvml = self._nvml
        if isinstance(exc, nvml.NVMLError_GpuIsLost | nvml.NVMLError_ResetRequired):
            return _GpuLost(f"{function}: {exc}")
        if isinstance(exc, nvml.NVMLError_LibraryNotFound | nvml.NVMLError_DriverNotLoaded
                      | nvml.NVMLError_Uninitialized):  # fmt: skip
            return _NvmlGone(f"{function}: {exc}")
        if isinstance(exc, nvml.NVMLError_NotSupported | nvml.NVMLError_FunctionNotFound
                      | nvml.NVMLError_NoPermission):  # fmt: skip
            return _Unsupported(f"{function}: {exc}")
        return exc

    def _call(self, gpu: _Gpu, function: str, *args: Any) -> Any:
        try:
            fn = getattr(self._nvml, function)
        except AttributeError:
            raise _Unsupported(f"{function} is not in this nvidia-ml-py") from None
        gpu.call = (function, time.monotonic())
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise self._classified(function, exc) from exc
        finally:
            gpu.call = None

    def _read_gpu(self, gpu: _Gpu) -> _Reading:
        if gpu.handle is None:
            handle = self._call(gpu, "nvmlDeviceGetHandleByIndex", gpu.index)
            gpu.uuid = _text(self._call(gpu, "nvmlDeviceGetUUID", handle))
            # Without a model name or bus id the GPU is still worth sampling; without a UUID it is not.
            try:
                gpu.model_name = _text(self._call(gpu, "nvmlDeviceGetName", handle))
            except _Unsupported:
                gpu.model_name = ""
            try:
                gpu.pci_bus_id = _text(self._call(gpu, "nvmlDeviceGetPciInfo", handle).busId)
            except _Unsupported:
                gpu.pci_bus_id = ""
            gpu.handle = handle
        reading = _Reading(fields={})
        mig = self._attempt(gpu, reading, f.MIG, self._read_mig_mode) or False
        for reader, read in (
            (f.UTILIZATION, self._read_utilization),
            (f.MEMORY, self._read_memory),
            (f.GPU_TEMPERATURE, self._read_gpu_temperature),
            (f.MEMORY_TEMPERATURE, self._read_memory_temperature),
            (f.POWER, self._read_power),
            (f.ENERGY, self._read_energy),
            (f.SM_CLOCK, self._read_sm_clock),
            (f.MEMORY_CLOCK, self._read_memory_clock),
            (f.PCIE_THROUGHPUT, self._read_pcie),
            (f.PCIE_REPLAYS, self._read_pcie_replays),
            (f.ENCODER_UTILIZATION, self._read_encoder_utilization),
            (f.DECODER_UTILIZATION, self._read_decoder_utilization),
            (f.NVLINK_THROUGHPUT, self._read_nvlink_throughput),
            (f.VGPU_LICENSE, self._read_vgpu_license),
            (f.ECC, self._read_ecc),
            (f.REMAPPED_ROWS, self._read_remapped_rows),
            (f.CLOCK_EVENTS, self._read_clock_events),
        ):
            reading.fields.update(self._attempt(gpu, reading, reader, read) or {})
        if mig:
            reading.instances = self._attempt(gpu, reading, f.MIG, self._read_mig_instances) or []
        elif self._config.processes:
            reading.processes = self._read_processes(gpu, reading, gpu.handle, utilization=True)
        return reading

    def _attempt(self, gpu: _Gpu, reading: _Reading, reader: str, read: Callable[[_Gpu], Any]) -> Any:
        """`read(gpu)`, or None when the reader is unsupported (remembered) or failed (counted)."""
        if reader in gpu.unsupported:
            return None
        try:
            return read(gpu)
        except _Unsupported as exc:
            gpu.unsupported.add(reader)
            logger.info("GPU %d: %s is not supported (%s); not asked again", gpu.index, reader, exc)
        except (_GpuLost, _NvmlGone):
            raise
        except Exception as exc:
            self._count_error(reader)
            reading.failed.append(reader)
            logger.debug("GPU %d: reading %s failed: %s", gpu.index, reader, exc)
        return None

    def _first_supported(self, gpu: _Gpu, functions: Iterable[str], *args: Any) -> Any:
        """The answer of the first of `functions` this GPU supports (newer NVML names first)."""
        for function in functions:
            if function in gpu.unsupported:
                continue
            try:
                return self._call(gpu, function, *args)
            except _Unsupported:
                gpu.unsupported.add(function)
        raise _Unsupported(" and ".join(functions))

    def _read_mig_mode(self, gpu: _Gpu) -> bool:
        current, _pending = self._call(gpu, "nvmlDeviceGetMigMode", gpu.handle)
        if gpu.mig_mode is not None and current != gpu.mig_mode:
            # Which reads a GPU supports depends on its MIG mode (utilisation is not, under MIG).
            gpu.unsupported.clear()
        gpu.mig_mode = current
        return bool(current == self._nvml.NVML_DEVICE_MIG_ENABLE)

    def _read_utilization(self, gpu: _Gpu) -> dict[str, float]:
        rates = self._call(gpu, "nvmlDeviceGetUtilizationRates", gpu.handle)
        return {f.GPU_UTIL: float(rates.gpu), f.MEM_COPY_UTIL: float(rates.memory)}

    def _read_memory(self, gpu: _Gpu, handle: Any = None) -> dict[str, float]:
        target = gpu.handle if handle is None else handle
        # v2, as DCGM reads it from driver 510 on: `used` without the reserved memory, which it reports.
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if version is not None and _MEMORY_V2 not in gpu.unsupported:
            try:
                memory = self._call(gpu, "nvmlDeviceGetMemoryInfo", target, version)
            except _Unsupported:
                gpu.unsupported.add(_MEMORY_V2)
            else:
                # DCGM reports whole MiB.
                return {f.FB_FREE: float(memory.free // _MIB), f.FB_USED: float(memory.used // _MIB),
                        f.FB_RESERVED: float(memory.reserved // _MIB)}  # fmt: skip
        memory = self._call(gpu, "nvmlDeviceGetMemoryInfo", target)
        return {f.FB_FREE: float(memory.free // _MIB), f.FB_USED: float(memory.used // _MIB)}

    def _read_gpu_temperature(self, gpu: _Gpu) -> dict[str, float]:
        temperature = self._call(gpu, "nvmlDeviceGetTemperature", gpu.handle, self._nvml.NVML_TEMPERATURE_GPU)
        return {f.GPU_TEMP: float(temperature)}

    def _field_values(self, gpu: _Gpu, field_ids: list[Any]) -> list[Any]:
        """`nvmlDeviceGetFieldValues` answers each field on its own; any field's error is the read's error."""
        nvml = self._nvml
        values = list(self._call(gpu, "nvmlDeviceGetFieldValues", gpu.handle, field_ids))
        for value in values:
            if value.nvmlReturn != nvml.NVML_SUCCESS:
                raise self._classified("nvmlDeviceGetFieldValues", nvml.NVMLError(value.nvmlReturn))
        return values

    def _number(self, value: Any) -> int | float:
        """A field value's number, from the union member its value type names."""
        nvml = self._nvml
        member = {
            nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
            nvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        }.get(value.valueType, "uiVal")
        number: int | float = getattr(value.value, member)
        return number

    def _read_memory_temperature(self, gpu: _Gpu) -> dict[str, float]:
        # NVML has no getter for HBM temperature; it is a field value.
        [value] = self._field_values(gpu, [self._nvml.NVML_FI_DEV_MEMORY_TEMP])
        return {f.MEMORY_TEMP: float(self._number(value))}

    def _read_power(self, gpu: _Gpu) -> dict[str, float]:
        return {f.POWER_USAGE: self._call(gpu, "nvmlDeviceGetPowerUsage", gpu.handle) / 1000.0}  # mW -> W

    def _read_energy(self, gpu: _Gpu) -> dict[str, float]:
        energy = self._call(gpu, "nvmlDeviceGetTotalEnergyConsumption", gpu.handle)
        return {f.TOTAL_ENERGY_CONSUMPTION: float(energy)}

    def _read_sm_clock(self, gpu: _Gpu) -> dict[str, float]:
        clock = self._call(gpu, "nvmlDeviceGetClockInfo", gpu.handle, self._nvml.NVML_CLOCK_SM)
        return {f.SM_CLOCK_FIELD: float(clock)}

    def _read_memory_clock(self, gpu: _Gpu) -> dict[str, float]:
        clock = self._call(gpu, "nvmlDeviceGetClockInfo", gpu.handle, self._nvml.NVML_CLOCK_MEM)
        return {f.MEM_CLOCK_FIELD: float(clock)}

    def _read_pcie(self, gpu: _Gpu) -> dict[str, float]:
        # Each read blocks ~20 ms in the driver: read every pcie_interval, repeat the last value between.
        now = time.monotonic()
        if now - gpu.pcie_read_at >= self._config.pcie_interval:
            gpu.pcie_read_at = now  # a failed read waits its turn too
            nvml = self._nvml
            tx = self._call(gpu, "nvmlDeviceGetPcieThroughput", gpu.handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
            rx = self._call(gpu, "nvmlDeviceGetPcieThroughput", gpu.handle, nvml.NVML_PCIE_UTIL_RX_BYTES)
            gpu.pcie = {f.PCIE_TX_THROUGHPUT: float(tx), f.PCIE_RX_THROUGHPUT: float(rx)}
        return dict(gpu.pcie)

    def _read_pcie_replays(self, gpu: _Gpu) -> dict[str, float]:
        return {f.PCIE_REPLAY_COUNTER: float(self._call(gpu, "nvmlDeviceGetPcieReplayCounter", gpu.handle))}

    def _read_encoder_utilization(self, gpu: _Gpu) -> dict[str, float]:
        utilization, _sampling_period_us = self._call(gpu, "nvmlDeviceGetEncoderUtilization", gpu.handle)
        return {f.ENC_UTIL: float(utilization)}

    def _read_decoder_utilization(self, gpu: _Gpu) -> dict[str, float]:
        utilization, _sampling_period_us = self._call(gpu, "nvmlDeviceGetDecoderUtilization", gpu.handle)
        return {f.DEC_UTIL: float(utilization)}

    def _read_nvlink_throughput(self, gpu: _Gpu) -> dict[str, float]:
        # DCGM's DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL: the RX + TX data counters of all links (KiB), their
        # increase since the last read per second, divided by 1000 (DCGM's unit, MB/s), truncated.
        nvml = self._nvml
        values = self._field_values(gpu, [(nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, _ALL_LINKS),
                                          (nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, _ALL_LINKS)])  # fmt: skip
        total_kib = sum(int(self._number(value)) for value in values)
        at_us = max(int(value.timestamp) for value in values) or time.monotonic_ns() // 1000
        previous, gpu.nvlink = gpu.nvlink, (total_kib, at_us)
        if previous is None or at_us <= previous[1] or total_kib < previous[0]:
            return {}  # no rate from one read, nor across counters that started again (a driver reload)
        rate = (total_kib - previous[0]) / ((at_us - previous[1]) / 1_000_000) / 1000
        return {f.NVLINK_BANDWIDTH_TOTAL: float(int(rate))}

    def _read_vgpu_license(self, gpu: _Gpu) -> dict[str, float]:
        # As DCGM: 0 where NVML reports no licensable features (not a vGPU), else the vGPU feature's state.
        features = self._call(gpu, "nvmlDeviceGetGridLicensableFeatures", gpu.handle)
        if not features.isGridLicenseSupported:
            return {f.VGPU_LICENSE_STATUS: 0.0}
        for feature in list(features.gridLicensableFeatures)[: features.licensableFeaturesCount]:
            if feature.featureCode == self._nvml.NVML_GRID_LICENSE_FEATURE_CODE_VGPU:
                return {f.VGPU_LICENSE_STATUS: 1.0 if feature.featureState > 0 else 0.0}
        return {}

    def _read_ecc(self, gpu: _Gpu) -> dict[str, float]:
        nvml = self._nvml
        values = {}
        for name, error_type, counter_type in (
            (f.ECC_SBE_VOL_TOTAL, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC),
            (f.ECC_DBE_VOL_TOTAL, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC),
            (f.ECC_SBE_AGG_TOTAL, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_AGGREGATE_ECC),
            (f.ECC_DBE_AGG_TOTAL, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_AGGREGATE_ECC),
        ):
            values[name] = float(self._call(gpu, "nvmlDeviceGetTotalEccErrors", gpu.handle, error_type, counter_type))
        return values

    def _read_remapped_rows(self, gpu: _Gpu) -> dict[str, float]:
        correctable, uncorrectable, pending, failure = self._call(gpu, "nvmlDeviceGetRemappedRows", gpu.handle)
        return {
            f.CORRECTABLE_REMAPPED_ROWS: float(correctable),
            f.UNCORRECTABLE_REMAPPED_ROWS: float(uncorrectable),
            f.ROW_REMAP_PENDING: float(bool(pending)),
            f.ROW_REMAP_FAILURE: float(bool(failure)),
        }

    def _read_clock_events(self, gpu: _Gpu) -> dict[str, float]:
        reasons = float(self._first_supported(
            gpu, ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"), gpu.handle
        ))  # fmt: skip
        return {f.CLOCKS_EVENT_REASONS: reasons, f.CLOCK_THROTTLE_REASONS: reasons}

    def _read_processes(
        self, gpu: _Gpu, reading: _Reading, handle: Any, *, utilization: bool
    ) -> tuple[GpuProcess, ...]:
        running = self._attempt(gpu, reading, f.PROCESSES,
                                lambda g: self._call(g, "nvmlDeviceGetComputeRunningProcesses", handle))  # fmt: skip
        memory: dict[int, int | None] = {}
        for process in running or ():
            used = process.usedGpuMemory
            memory[int(process.pid)] = None if used is None else int(used)
        sm: dict[int, float] = {}
        if utilization:
            sm = self._attempt(gpu, reading, f.PROCESS_UTILIZATION, self._read_process_utilization) or {}
        return tuple(
            GpuProcess(pid=pid, used_memory_bytes=memory.get(pid), sm_utilization=sm.get(pid))
            for pid in sorted(memory.keys() | sm.keys())
        )

    def _read_process_utilization(self, gpu: _Gpu) -> dict[int, float]:
        # NVML keeps a ring of per-process samples; ask for those newer than the last one seen.
        since = gpu.process_util_since_us or int((time.time() - self._config.interval) * 1_000_000)
        try:
            samples = self._first_supported(
                gpu, ("nvmlDeviceGetProcessUtilization", "nvmlDeviceGetProcessesUtilizationInfo"), gpu.handle, since
            )
        except self._nvml.NVMLError_NotFound:
            return {}  # no process ran since `since`
        totals: dict[int, list[float]] = {}
        for sample in samples:
            totals.setdefault(int(sample.pid), []).append(float(sample.smUtil))
            gpu.process_util_since_us = max(gpu.process_util_since_us, int(sample.timeStamp))
        return {pid: sum(values) / len(values) for pid, values in totals.items()}

    def _read_mig_instances(self, gpu: _Gpu) -> list[_InstanceReading]:
        instances = []
        for slot in range(int(self._call(gpu, "nvmlDeviceGetMaxMigDeviceCount", gpu.handle))):
            try:
                handle = self._call(gpu, "nvmlDeviceGetMigDeviceHandleByIndex", gpu.handle, slot)
            except self._nvml.NVMLError_NotFound:
                continue  # an empty slot
            reading = _Reading(fields=self._read_memory(gpu, handle))
            processes = self._read_processes(gpu, reading, handle, utilization=False) if self._config.processes else ()
            instances.append(_InstanceReading(
                profile=_mig_profile(_text(self._call(gpu, "nvmlDeviceGetName", handle))),
                gpu_instance_id=str(self._call(gpu, "nvmlDeviceGetGpuInstanceId", handle)),
                fields=reading.fields,
                processes=processes,
            ))  # fmt: skip
        return instances


class _XidWatcher:
    """Waits for XID critical errors on an NVML event set, in a daemon thread of its own."""

    def __init__(
        self,
        nvml: Any,
        indices: list[int],
        on_started: Callable[[frozenset[str]], None],
        on_xid: Callable[[str, int], None],
    ) -> None:
        self._nvml = nvml
        self._indices = indices
        self._on_started = on_started
        self._on_xid = on_xid
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        nvml = self._nvml
        try:
            event_set = nvml.nvmlEventSetCreate()
        except Exception as exc:
            logger.info("XID events unavailable (nvmlEventSetCreate: %s); DCGM_FI_DEV_XID_ERRORS not reported", exc)
            return
        try:
            registered = self._register(event_set)
            self._on_started(frozenset(registered.values()))
            if registered:
                self._wait_loop(event_set, registered)
        except Exception:
            logger.exception("XID watcher failed; XIDs are no longer reported")
        finally:
            try:
                nvml.nvmlEventSetFree(event_set)
            except Exception as exc:
                logger.debug("nvmlEventSetFree failed: %s", exc)

    def _register(self, event_set: Any) -> dict[Hashable, str]:
        nvml = self._nvml
        registered: dict[Hashable, str] = {}
        for index in self._indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, event_set)
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound, nvml.NVMLError_NoPermission,
                    AttributeError) as exc:  # fmt: skip
                logger.info("GPU %d does not report XID events (%s)", index, exc)
                continue
            except nvml.NVMLError as exc:
                logger.warning("GPU %d: registering for XID events failed: %s", index, exc)
                continue
            registered[_handle_key(handle)] = str(index)
        return registered

    def _wait_loop(self, event_set: Any, registered: Mapping[Hashable, str]) -> None:
        nvml = self._nvml
        while not self._stopping.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(event_set, _XID_WAIT_MS)
            except nvml.NVMLError_Timeout:
                continue
            except (nvml.NVMLError_Uninitialized, nvml.NVMLError_DriverNotLoaded, nvml.NVMLError_LibraryNotFound):
                return  # NVML went away; the sampler starts a new watcher after nvmlInit works again
            except nvml.NVMLError as exc:
                logger.debug("Waiting for XID events failed: %s", exc)
                self._stopping.wait(1.0)
                continue
            if not data.eventType & nvml.nvmlEventTypeXidCriticalError:
                continue
            gpu = registered.get(_handle_key(data.device))
            if gpu is not None:
                self._on_xid(gpu, int(data.eventData))
