from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from sidecar.gpu.probe import (
    BANDWIDTH_FLOOR,
    MATMUL_FLOOR,
    ProbeResult,
    assess,
    expected_range,
    format_probe,
    run_probe,
)

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_cpu_probe_measures_both_figures_and_gives_no_verdict(torch):
    result = run_probe("cpu", 0.4, size=128, copy_bytes=4 << 20)
    assert (result.device, result.torch_device, result.size, result.copy_bytes) == ("cpu", "cpu", 128, 4 << 20)
    assert result.dtype in ("bfloat16", "float32")
    assert result.tflops > 0 and result.bandwidth_gbps > 0
    assert (result.expected, result.degraded, result.reasons) == (None, False, ["no expected range for cpu"])
    assert 0.3 < result.duration_s < 3
    assert json.loads(json.dumps(result.as_dict()))["tflops"] == result.tflops
    report = format_probe(result)
    assert "cpu: no verdict" in report and "TFLOP/s" in report and "GB/s" in report


def test_auto_picks_the_cpu_without_cuda(torch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert run_probe("auto", 0.2, size=64, copy_bytes=1 << 20).torch_device == "cpu"


def test_cuda_without_cuda_says_how_to_get_it(torch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match=r"no CUDA GPU.*inference-sidecar\[demo\]"):
        run_probe("cuda:0", 0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "mps"}, "device must be"),
        ({"seconds": 0}, "seconds must be positive"),
        ({"size": 0}, "size must be a positive integer"),
    ],
)
def test_bad_arguments_are_named(torch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_probe(**{"device": "cpu", "seconds": 0.2, **kwargs})


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'inference-sidecar\[demo\]'"):
        run_probe("cpu", 0.2)


@pytest.mark.parametrize(
    ("device_name", "known"),
    [
        (H100, "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A40", "A40"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 3090", "RTX 3090"),
    ],
)
def test_device_names_match_their_gpu(device_name, known):
    expected = expected_range(device_name)
    assert expected is not None and expected.name == known


@pytest.mark.parametrize(
    "device_name",
    [
        "cpu",
        "NVIDIA A10G",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA GeForce RTX 3090 Ti",
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
        "Tesla V100-SXM2-16GB",
    ],
)
def test_lookalikes_and_slices_are_not_matched(device_name):
    assert expected_range(device_name) is None


def test_healthy_h100_figures_pass():
    expected, degraded, reasons = assess(H100, 720.0, 2900.0)
    assert expected is not None and expected.name == "H100 SXM"
    assert (degraded, reasons) == (False, [])


def test_half_speed_h100_is_degraded_with_measured_and_expected_figures():
    expected, degraded, reasons = assess(H100, 450.0, 1500.0)
    assert expected is not None and degraded
    matmul, bandwidth = reasons
    assert "450.0 TFLOP/s" in matmul and "989.5 TFLOP/s" in matmul and "H100 SXM" in matmul
    assert "1500 GB/s" in bandwidth and "3350 GB/s" in bandwidth


def test_each_figure_is_judged_against_its_own_floor():
    expected = expected_range(H100)
    assert expected is not None
    just_above = (expected.peak_tflops * MATMUL_FLOOR * 1.01, expected.peak_bandwidth_gbps * BANDWIDTH_FLOOR * 1.01)
    assert assess(H100, *just_above)[1:] == (False, [])
    _, degraded, reasons = assess(H100, just_above[0], expected.peak_bandwidth_gbps * BANDWIDTH_FLOOR * 0.99)
    assert degraded and len(reasons) == 1 and reasons[0].startswith("memory bandwidth")
    _, degraded, reasons = assess(H100, expected.peak_tflops * MATMUL_FLOOR * 0.99, just_above[1])
    assert degraded and len(reasons) == 1 and reasons[0].startswith("matmul")


def test_unknown_device_gets_no_verdict():
    assert assess("Some Accelerator 9000", 1.0, 1.0) == (None, False, ["no expected range for Some Accelerator 9000"])


def test_float32_matmul_is_not_judged_against_the_bf16_peak():
    _, degraded, reasons = assess(H100, 50.0, 2900.0, dtype="float32")
    assert not degraded
    assert reasons == ["matmul ran in float32; the H100 SXM's peak is for bf16, so TFLOP/s is not judged"]


def test_report_shows_the_verdict_the_peaks_and_the_reasons():
    expected, degraded, reasons = assess(H100, 450.0, 2900.0)
    result = ProbeResult(
        device=H100,
        dtype="bfloat16",
        tflops=450.0,
        bandwidth_gbps=2900.0,
        expected=expected,
        degraded=degraded,
        reasons=reasons,
        duration_s=2.1,
        torch_device="cuda:0",
        size=8192,
        copy_bytes=1 << 30,
        readings={"sm_clock_mhz": 1980, "temperature_c": 71},
    )
    report = format_probe(result)
    assert report.splitlines()[0] == f"GPU probe on {H100} (cuda:0): DEGRADED"
    assert "45% of peak 989.5" in report and "87% of peak 3350" in report and "copies of 1 GiB" in report
    assert "sm_clock_mhz 1980" in report and f"- {reasons[0]}" in report
    assert "healthy" in format_probe(dataclasses.replace(result, tflops=700.0, degraded=False, reasons=[])).splitlines()[0]
    assert result.as_dict()["expected"]["name"] == "H100 SXM"


def test_command_prints_json_and_exits_0_without_a_verdict(torch):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "gpu-probe", "--device", "cpu", "--seconds", "0.3", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"] == "cpu" and report["tflops"] > 0 and report["bandwidth_gbps"] > 0
    assert report["degraded"] is False


def test_command_names_a_bad_device(torch):
    import subprocess

    result = subprocess.run([sys.executable, "-m", "sidecar", "gpu-probe", "--device", "tpu"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tpu" in result.stderr and "cuda" in result.stderr
