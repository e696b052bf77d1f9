"""The NVML collector against the pynvml stand-in: readings, unsupported reads, lost GPUs, hung
calls, a missing driver, XIDs, MIG, PCIe pacing and per-process readings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from sidecar.config import NvmlConfig
from sidecar.exchange import GpuEvent, GpuSample, GpuState
from sidecar.gpu import fields as f
from sidecar.gpu.nvml import NvmlCollector
from sidecar.testing.nvml import FakeNvml
from tests.support.tools import wait_for

HOST = "gpu-host-1"


@dataclass
class Recorder:
    samples: list[GpuSample] = field(default_factory=list)
    events: list[GpuEvent] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[GpuEvent]:
        return [event for event in self.events if event.kind == kind]

    def of_gpu(self, gpu: str, state: GpuState | None = GpuState.OK) -> list[GpuSample]:
        return [s for s in list(self.samples)
                if s.gpu == gpu and s.gpu_instance_id is None and (state is None or s.state is state)]  # fmt: skip


Make = Callable[..., tuple[NvmlCollector, Recorder]]


def wait_until(condition: Callable[[], Any], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[FakeNvml]:
    nvml = FakeNvml(2, pcie_delay=0.0)
    yield nvml
    nvml.release()


@pytest.fixture
def make() -> Iterator[Make]:
    made: list[NvmlCollector] = []

    def factory(nvml: Any, *, reinit_interval: float = 30.0, lost_retry_interval: float = 10.0,
                **settings: Any) -> tuple[NvmlCollector, Recorder]:  # fmt: skip
        recorder = Recorder()
        config = NvmlConfig(**{"interval": 0.03, "call_timeout": 0.2, "pcie_interval": 10.0, **settings})
        collector = NvmlCollector(config, HOST, recorder.samples.append, recorder.events.append, nvml=nvml,
                                  reinit_interval=reinit_interval, lost_retry_interval=lost_retry_interval)  # fmt: skip
        made.append(collector)
        return collector, recorder

    yield factory
    for collector in made:
        collector.stop()


def test_every_field_of_every_gpu_in_dcgm_units(fake: FakeNvml, make: Make) -> None:
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 2 and len(recorder.of_gpu("1")) >= 2, what="two samples each")

    latest = collector.latest()
    assert set(latest) == {"0", "1"}
    for index, sample in latest.items():
        assert sample.state is GpuState.OK and sample.error is None
        assert set(sample.fields) == set(f.FIELDS_BY_NAME), "every NVML field, nothing else"
        assert (sample.source, sample.gpu, sample.device, sample.hostname) == ("nvml", index, f"nvidia{index}", HOST)
        assert sample.uuid == fake.gpus[int(index)].uuid
        assert sample.model_name == "NVIDIA H100 80GB HBM3"
    assert latest["0"].pci_bus_id == "00000000:18:00.0"
    assert latest["1"].pci_bus_id == "00000000:2A:00.0"
    fields = latest["0"].fields
    assert fields[f.POWER_USAGE] == 412.5  # mW -> W
    # MiB, from the v2 memory info as DCGM reads it: used leaves out what the driver reserves.
    assert (fields[f.FB_USED], fields[f.FB_RESERVED], fields[f.FB_FREE]) == (73_728, 562, 81_559 - 562 - 73_728)
    assert fields[f.GPU_UTIL] == 87 and fields[f.MEM_COPY_UTIL] == 41
    assert (fields[f.GPU_TEMP], fields[f.MEMORY_TEMP]) == (54, 62)
    assert (fields[f.SM_CLOCK_FIELD], fields[f.MEM_CLOCK_FIELD]) == (1980, 2619)
    assert (fields[f.PCIE_TX_THROUGHPUT], fields[f.PCIE_RX_THROUGHPUT]) == (1234, 5678)
    assert fields[f.CLOCKS_EVENT_REASONS] == fields[f.CLOCK_THROTTLE_REASONS] == pynvml.nvmlClocksEventReasonSwPowerCap
    assert fields[f.XID_ERRORS] == 0, "watched for XIDs and none seen yet"
    energy = [s.fields[f.TOTAL_ENERGY_CONSUMPTION] for s in recorder.of_gpu("0")]
    assert energy[-1] > energy[0], "the energy counter advances with power x time"
    assert recorder.events == []
    assert collector.nvml_available and collector.stats().samples_taken >= 4


def test_unsupported_read_is_tried_once_and_its_fields_are_absent(fake: FakeNvml, make: Make) -> None:
    fake.fail(1, "nvmlDeviceGetPowerUsage", pynvml.NVMLError_NotSupported)
    fake.fail(None, "nvmlDeviceGetTotalEccErrors", pynvml.NVMLError_NotSupported)  # ECC off
    fake.fail(0, "nvmlDeviceGetCurrentClocksEventReasons", pynvml.NVMLError_FunctionNotFound)  # older driver
    fake.fail(1, "nvmlDeviceGetPciInfo", pynvml.NVMLError_NotSupported)
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("1")) >= 6, what="six samples of GPU 1")

    gpu0, gpu1 = collector.latest()["0"].fields, collector.latest()["1"].fields
    assert f.POWER_USAGE not in gpu1 and gpu0[f.POWER_USAGE] == 412.5
    assert fake.calls("nvmlDeviceGetPowerUsage", 1) == 1
    for fields in (gpu0, gpu1):
        assert not {f.ECC_SBE_VOL_TOTAL, f.ECC_DBE_VOL_TOTAL, f.ECC_SBE_AGG_TOTAL, f.ECC_DBE_AGG_TOTAL} & set(fields)
    assert fake.calls("nvmlDeviceGetTotalEccErrors") == 2, "once per GPU"
    # The older name of the same reading answers instead, and the newer one is not asked again.
    assert gpu0[f.CLOCKS_EVENT_REASONS] == gpu0[f.CLOCK_THROTTLE_REASONS] == pynvml.nvmlClocksEventReasonSwPowerCap
    assert fake.calls("nvmlDeviceGetCurrentClocksEventReasons", 0) == 1
    assert fake.calls("nvmlDeviceGetCurrentClocksThrottleReasons", 0) >= 5
    assert collector.stats().read_errors == {}, "unsupported is not an error"
    assert all(s.state is GpuState.OK for s in recorder.samples)
    assert collector.latest()["1"].pci_bus_id == "", "sampled without a bus id rather than not at all"


def test_the_fields_dcgm_exporter_adds_by_default(fake: FakeNvml, make: Make) -> None:
    fake.gpus[0].pcie_replays = 3
    fake.gpus[0].decoder_util = 12
    fake.gpus[1].vgpu_licensed = True  # a vGPU guest with its license
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 4 and len(recorder.of_gpu("1")) >= 4, what="four samples each")
    collector.stop()

    gpu0, gpu1 = collector.latest()["0"].fields, collector.latest()["1"].fields
    assert (gpu0[f.PCIE_REPLAY_COUNTER], gpu1[f.PCIE_REPLAY_COUNTER]) == (3, 0)
    assert (gpu0[f.ENC_UTIL], gpu0[f.DEC_UTIL]) == (0, 12)
    assert fake.calls("nvmlDeviceGetMemoryInfo_v2", 0) >= 4 and fake.calls("nvmlDeviceGetMemoryInfo", 0) == 0
    # As DCGM reports it: 0 on bare metal (no licensable features), 1 for a licensed vGPU.
    assert (gpu0[f.VGPU_LICENSE_STATUS], gpu1[f.VGPU_LICENSE_STATUS]) == (0, 1)
    # NVLink: DCGM's rate, (RX + TX KiB increase) / seconds / 1000, from the second read on.
    first, *later = recorder.of_gpu("0")
    assert f.NVLINK_BANDWIDTH_TOTAL not in first.fields
    assert [s.fields[f.NVLINK_BANDWIDTH_TOTAL] for s in later] == pytest.approx([28_135] * len(later), abs=2)
    assert collector.stats().read_errors == {}


def test_reads_a_gpu_or_driver_lacks_are_tried_once(fake: FakeNvml, make: Make) -> None:
    fake.gpus[1].nvlink = False  # a PCIe card: its NVLink field values answer NOT_SUPPORTED
    fake.fail(1, "nvmlDeviceGetPcieReplayCounter", pynvml.NVMLError_NotSupported)
    fake.fail(None, "nvmlDeviceGetEncoderUtilization", pynvml.NVMLError_NotSupported)
    fake.fail(0, "nvmlDeviceGetGridLicensableFeatures", pynvml.NVMLError_FunctionNotFound)
    fake.fail(None, "nvmlDeviceGetMemoryInfo_v2", pynvml.NVMLError_FunctionNotFound)  # a driver before 510
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 5 and len(recorder.of_gpu("1")) >= 5, what="five samples each")
    collector.stop()

    gpu0, gpu1 = collector.latest()["0"].fields, collector.latest()["1"].fields
    assert f.NVLINK_BANDWIDTH_TOTAL in gpu0 and f.NVLINK_BANDWIDTH_TOTAL not in gpu1
    reads = {gpu: fake.calls("nvmlDeviceGetMigMode", gpu) for gpu in (0, 1)}  # one per read of the GPU
    # Field values: memory temperature every read, NVLink every read on GPU 0 and once on GPU 1.
    assert fake.calls("nvmlDeviceGetFieldValues", 0) == 2 * reads[0]
    assert fake.calls("nvmlDeviceGetFieldValues", 1) == reads[1] + 1
    assert f.PCIE_REPLAY_COUNTER in gpu0 and f.PCIE_REPLAY_COUNTER not in gpu1
    assert fake.calls("nvmlDeviceGetPcieReplayCounter", 1) == 1
    assert f.ENC_UTIL not in gpu0 | gpu1 and f.DEC_UTIL in gpu0 and f.DEC_UTIL in gpu1, "one reader each"
    assert fake.calls("nvmlDeviceGetEncoderUtilization") == 2
    assert f.VGPU_LICENSE_STATUS not in gpu0 and gpu1[f.VGPU_LICENSE_STATUS] == 0
    assert fake.calls("nvmlDeviceGetGridLicensableFeatures", 0) == 1
    # Without the v2 call, v1 answers: used includes the reserved memory, which has no series of its own.
    assert (gpu0[f.FB_USED], gpu0[f.FB_FREE]) == (73_728 + 562, 81_559 - 562 - 73_728)
    assert f.FB_RESERVED not in gpu0
    assert fake.calls("nvmlDeviceGetMemoryInfo_v2", 0) == 1
    assert collector.stats().read_errors == {}, "unsupported is not an error"


def test_nvlink_bandwidth_starts_again_when_its_counters_go_back(fake: FakeNvml, make: Make) -> None:
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 3, what="three samples")
    fake.reset_nvlink_counters(0)
    before = len(recorder.of_gpu("0"))
    wait_until(lambda: len(recorder.of_gpu("0")) >= before + 3, what="three samples after the reset")
    collector.stop()

    rates = [s.fields.get(f.NVLINK_BANDWIDTH_TOTAL) for s in recorder.of_gpu("0")]
    missing = [i for i, rate in enumerate(rates) if rate is None]
    assert len(missing) == 2 and missing[0] == 0 and missing[1] >= before - 1, f"the first read, one after: {rates}"
    assert [rate for rate in rates if rate is not None] == pytest.approx([28_135] * (len(rates) - 2), abs=2)


def test_a_failing_read_is_counted_and_asked_again(fake: FakeNvml, make: Make) -> None:
    fake.fail(0, "nvmlDeviceGetTemperature", pynvml.NVMLError_Unknown, times=2)
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 4, what="four samples of GPU 0")

    first, *_, last = recorder.of_gpu("0")
    assert f.GPU_TEMP not in first.fields and first.error == "failed reads: gpu_temperature"
    assert last.fields[f.GPU_TEMP] == 54 and last.error is None
    assert collector.stats().read_errors == {"gpu_temperature": 2}


def test_lost_gpu_is_reported_once_and_recovers(fake: FakeNvml, make: Make) -> None:
    collector, recorder = make(fake, lost_retry_interval=0.1)
    collector.start()
    wait_until(lambda: recorder.of_gpu("1"), what="a sample of GPU 1")

    fake.lose_gpu(1)
    wait_until(lambda: len(recorder.of_gpu("1", GpuState.LOST)) >= 10, what="GPU 1 lost for a while")
    gpu0_before = len(recorder.of_gpu("0"))
    wait_until(lambda: len(recorder.of_gpu("0")) >= gpu0_before + 3, what="GPU 0 still sampled")
    lost = collector.latest()["1"]
    assert lost.state is GpuState.LOST and lost.fields == {} and "GPU is lost" in (lost.error or "")
    assert lost.uuid == fake.gpus[1].uuid, "still labelled as the GPU it was"
    assert [(e.gpu, e.uuid) for e in recorder.of_kind("gpu_lost")] == [("1", fake.gpus[1].uuid)]
    assert collector.latest()["0"].state is GpuState.OK
    retries = fake.calls("nvmlDeviceGetMigMode", 1)
    assert 2 <= retries < len(recorder.of_gpu("1", None)), "read again now and then, not every interval"

    fake.restore_gpu(1)
    wait_until(lambda: recorder.of_kind("recovered"), what="recovered event")
    wait_until(lambda: collector.latest()["1"].state is GpuState.OK, what="GPU 1 ok")
    assert len(recorder.of_kind("gpu_lost")) == 1
    assert recorder.of_kind("recovered")[0].gpu == "1"
    assert f.POWER_USAGE in collector.latest()["1"].fields


async def test_a_hung_call_makes_its_gpu_stale_without_blocking_anything(fake: FakeNvml, make: Make) -> None:
    fake.hang(1, "nvmlDeviceGetPowerUsage", 5.0)
    collector, recorder = make(fake, interval=0.05, call_timeout=0.2)
    loop = asyncio.get_running_loop()
    worst_lag = 0.0
    ticking = True

    async def tick() -> None:
        nonlocal worst_lag
        while ticking:
            before = loop.time()
            await asyncio.sleep(0.005)
            worst_lag = max(worst_lag, loop.time() - before - 0.005)

    ticker = asyncio.create_task(tick())
    collector.start()
    await wait_for(lambda: recorder.of_kind("read_timeout"), timeout=3.0, what="read_timeout event")
    gpu0_fresh = len(recorder.of_gpu("0"))
    await asyncio.sleep(0.5)
    ticking = False
    await ticker

    assert len(recorder.of_gpu("0")) >= gpu0_fresh + 5, "GPU 0 keeps getting fresh samples"
    stale = collector.latest()["1"]
    assert stale.state is GpuState.STALE and stale.fields == {}
    assert "nvmlDeviceGetPowerUsage" in (stale.error or "")
    assert len(recorder.of_gpu("1", GpuState.STALE)) >= 5
    [event] = recorder.of_kind("read_timeout")
    assert event.gpu == "1" and "nvmlDeviceGetPowerUsage" in event.message
    assert fake.calls("nvmlDeviceGetPowerUsage", 1) == 1, "no second read while the first is stuck"
    assert collector.stats().read_timeouts == 1
    assert worst_lag < 0.05, f"event loop stalled {worst_lag * 1000:.0f} ms"

    started = time.monotonic()
    collector.stop()
    assert time.monotonic() - started < 1.0, "stop() does not wait for the stuck call"


def test_a_gpu_whose_call_returns_late_recovers(fake: FakeNvml, make: Make) -> None:
    fake.hang(0, "nvmlDeviceGetTemperature", 0.4)
    collector, recorder = make(fake, call_timeout=0.1)
    collector.start()
    wait_until(lambda: recorder.of_kind("read_timeout"), what="read_timeout event")
    wait_until(lambda: recorder.of_kind("recovered"), what="recovered event")
    assert collector.latest()["0"].state is GpuState.OK
    assert [e.gpu for e in recorder.events] == ["0", "0"]


def test_missing_library_is_reported_and_picked_up_when_it_arrives(fake: FakeNvml, make: Make) -> None:
    fake.library_missing()
    collector, recorder = make(fake, reinit_interval=0.1)
    collector.start()
    wait_until(lambda: fake.calls("nvmlInit") >= 3, what="init retried")

    assert not collector.nvml_available and not collector.stats().nvml_available
    assert collector.latest() == {}
    [event] = recorder.of_kind("nvml_unavailable")
    assert event.gpu is None and "NVML Shared Library Not Found" in event.message

    fake.library_restored()
    wait_until(lambda: recorder.of_kind("recovered"), what="recovered event")
    wait_until(lambda: collector.latest().get("0") is not None, what="samples")
    assert collector.nvml_available
    assert [e.kind for e in recorder.events] == ["nvml_unavailable", "recovered"]


def test_driver_reload_mid_run(fake: FakeNvml, make: Make) -> None:
    collector, recorder = make(fake, reinit_interval=0.1)
    collector.start()
    wait_until(lambda: recorder.of_gpu("0"), what="a sample")

    fake.library_missing()
    wait_until(lambda: recorder.of_kind("nvml_unavailable"), what="nvml_unavailable event")
    wait_until(lambda: len(recorder.of_gpu("0", GpuState.UNAVAILABLE)) >= 3, what="unavailable samples")
    assert not collector.nvml_available
    assert {s.state for s in collector.latest().values()} == {GpuState.UNAVAILABLE}

    fake.library_restored()
    wait_until(lambda: recorder.of_kind("driver_reloaded"), what="driver_reloaded event")
    wait_until(lambda: collector.latest().get("1") and collector.latest()["1"].state is GpuState.OK, what="ok")
    assert [e.kind for e in recorder.events] == ["nvml_unavailable", "driver_reloaded"]


def test_real_pynvml_never_raises_out(make: Make) -> None:
    # The real module: without a driver this is the "unavailable" path; on a GPU machine, real readings.
    collector, recorder = make(None, reinit_interval=60.0)
    collector.start()
    wait_until(lambda: recorder.events or recorder.samples, what="a sample or an event")
    if collector.nvml_available:
        wait_until(lambda: collector.latest().get("0"), what="a sample of GPU 0")
        sample = collector.latest()["0"]
        assert sample.state is GpuState.OK and sample.uuid.startswith("GPU-")
        assert {f.POWER_USAGE, f.FB_USED, f.GPU_TEMP} <= set(sample.fields)
    else:
        assert [e.kind for e in recorder.events] == ["nvml_unavailable"]


def test_xid_events(fake: FakeNvml, make: Make) -> None:
    fake.fail(1, "nvmlDeviceRegisterEvents", pynvml.NVMLError_NotSupported)
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: f.XID_ERRORS in getattr(collector.latest().get("0"), "fields", {}), what="XID watched")

    fake.inject_xid(0, 79)
    fake.inject_xid(0, 79)
    fake.inject_xid(0, 48)
    wait_until(lambda: len(recorder.of_kind("xid")) == 3, what="three xid events")
    wait_until(lambda: collector.latest()["0"].fields[f.XID_ERRORS] == 48, what="last XID in the sample")

    first = recorder.of_kind("xid")[0]
    assert (first.gpu, first.uuid, first.xid) == ("0", fake.gpus[0].uuid, 79)
    assert "GPU has fallen off the bus" in first.message
    assert collector.stats().xid_errors == {("0", 79): 2, ("0", 48): 1}
    assert f.XID_ERRORS not in collector.latest()["1"].fields, "GPU 1 cannot report XIDs: absent, not 0"


def test_xid_events_off(fake: FakeNvml, make: Make) -> None:
    collector, recorder = make(fake, xid_events=False)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 2, what="samples")
    assert f.XID_ERRORS not in collector.latest()["0"].fields
    assert fake.calls("nvmlEventSetCreate") == 0


def test_mig_instances_get_samples_of_their_own(fake: FakeNvml, make: Make) -> None:
    fake.enable_mig(1, [("3g.40gb", 1), ("1g.10gb", 9)])
    fake.add_process(1, 7001, 3 * 2**30, 50, gpu_instance_id=9)
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: "1/9" in collector.latest(), what="MIG instance samples")

    latest = collector.latest()
    assert set(latest) == {"0", "1", "1/1", "1/9"}
    parent, big, small = latest["1"], latest["1/1"], latest["1/9"]
    assert (big.gpu_instance_profile, big.gpu_instance_id) == ("3g.40gb", "1")
    assert (small.gpu_instance_profile, small.gpu_instance_id) == ("1g.10gb", "9")
    for instance in (big, small):
        assert (instance.gpu, instance.uuid, instance.device) == ("1", parent.uuid, "nvidia1"), "parent's labels"
        assert set(instance.fields) == {f.FB_USED, f.FB_FREE, f.FB_RESERVED}
    assert small.fields[f.FB_USED] == (10 * 1024 - 384) // 2
    assert [(p.pid, p.used_memory_bytes) for p in small.processes] == [(7001, 3 * 2**30)]
    assert big.processes == () and parent.processes == (), "no process counted twice"
    assert parent.gpu_instance_id is None and f.POWER_USAGE in parent.fields
    assert f.GPU_UTIL not in parent.fields, "NVML has no utilisation for a GPU in MIG mode"
    assert latest["0"].gpu_instance_id is None and f.GPU_UTIL in latest["0"].fields


def test_pcie_throughput_is_read_only_every_pcie_interval(fake: FakeNvml, make: Make) -> None:
    collector, recorder = make(fake, interval=0.03, pcie_interval=0.3)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 25, what="25 samples")
    collector.stop()

    samples = recorder.of_gpu("0")
    span = samples[-1].at - samples[0].at
    reads = fake.calls("nvmlDeviceGetPcieThroughput", 0) / 2  # TX and RX
    assert 2 <= reads <= span / 0.3 + 2, f"{reads} reads over {span:.2f}s"
    assert reads < len(samples) / 3
    assert all(s.fields[f.PCIE_TX_THROUGHPUT] == 1234 for s in samples), "the last value in between"


def test_per_process_memory_and_sm_utilisation(fake: FakeNvml, make: Make) -> None:
    fake.add_process(0, 4242, 2 * 2**30, 35)
    fake.add_process(0, 4243, None, 10)  # memory the driver cannot attribute (WDDM, some containers)
    fake.fail(0, "nvmlDeviceGetProcessUtilization", pynvml.NVMLError_NotSupported)
    collector, recorder = make(fake)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 3, what="samples")

    processes = {p.pid: p for p in collector.latest()["0"].processes}
    assert (processes[4242].used_memory_bytes, processes[4242].sm_utilization) == (2 * 2**30, 35)
    assert (processes[4243].used_memory_bytes, processes[4243].sm_utilization) == (None, 10)
    assert collector.latest()["1"].processes == ()
    assert fake.calls("nvmlDeviceGetProcessUtilization", 0) == 1, "unsupported: fell back once"
    assert fake.calls("nvmlDeviceGetProcessesUtilizationInfo", 0) >= 3
    assert collector.stats().read_errors == {}, "no process on GPU 1 (NVML_ERROR_NOT_FOUND) is not an error"


def test_processes_off(fake: FakeNvml, make: Make) -> None:
    fake.add_process(0, 4242, 2 * 2**30, 35)
    collector, recorder = make(fake, processes=False)
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("0")) >= 2, what="samples")
    assert collector.latest()["0"].processes == ()
    assert fake.calls("nvmlDeviceGetComputeRunningProcesses") == 0


def test_only_the_configured_devices(fake: FakeNvml, make: Make) -> None:
    collector, recorder = make(fake, devices=[1, 7])
    collector.start()
    wait_until(lambda: len(recorder.of_gpu("1")) >= 2, what="samples")
    assert set(collector.latest()) == {"1"}
    assert fake.calls("nvmlDeviceGetPowerUsage", 0) == 0


def test_an_observer_that_raises_does_not_stop_sampling(fake: FakeNvml) -> None:
    seen: list[GpuSample] = []

    def fragile(sample: GpuSample) -> None:
        seen.append(sample)
        raise RuntimeError("observer bug")

    collector = NvmlCollector(NvmlConfig(interval=0.03), HOST, fragile, lambda event: None, nvml=fake)
    collector.start()
    try:
        wait_until(lambda: len(seen) >= 6, what="sampling to go on")
    finally:
        collector.stop()


def test_lifecycle_edges(fake: FakeNvml, make: Make) -> None:
    idle, _ = make(fake)
    idle.stop()  # never started
    disabled, _ = make(fake, enabled=False)
    disabled.start()
    assert fake.calls("nvmlInit") == 0
    collector, _ = make(fake)
    collector.start()
    with pytest.raises(RuntimeError, match="called twice"):
        collector.start()


def test_cpu_cost_of_sampling(make: Make, capsys: pytest.CaptureFixture[str]) -> None:
    one_gpu = FakeNvml(1)  # with the driver's 20 ms PCIe sleep
    one_gpu.add_process(0, 4242, 60 * 2**30, 80)
    collector, _ = make(one_gpu, interval=1.0, call_timeout=2.0)
    wall, cpu = time.monotonic(), time.process_time()
    collector.start()
    time.sleep(3.05)  # samples at 0, 1, 2 and 3 s
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    samples = collector.stats().samples_taken
    with capsys.disabled():
        print(f"\nNVML collector, 1 GPU at 1 s (stand-in): {samples} samples in {wall:.2f}s, "
              f"{cpu * 1000:.1f} ms CPU = {cpu / samples * 1000:.2f} ms per sample, "
              f"{cpu / wall * 100:.3f}% of one core")  # fmt: skip
    assert samples >= 3
