"""`sidecar rules export` and `sidecar rules check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from sidecar.config import RulesConfig
from sidecar.rules.promql import export_prometheus
from sidecar.rules.spec import effective_rules

CONFIG = """\
rules:
  external_labels:
    cluster: prod-eu
  alerts:
    - name: UpstreamTimeouts
      signal: error_ratio
      error_class: timeout
      threshold: 0.01
      for: 1m
      severity: warning
      annotations:
        summary: "{{ $value | humanizePercentage }} of requests timed out upstream"
"""


@pytest.fixture(autouse=True)
def no_sidecar_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read SIDECAR_* variables as the sidecar does; the tests start without any."""
    for name in list(os.environ):
        if name.startswith("SIDECAR_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


def test_export_writes_the_default_rules_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "export", "--format", "prometheus"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == export_prometheus(effective_rules(RulesConfig()))


def test_export_of_a_config_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "rules.yml"
    config = write_config(tmp_path, CONFIG)
    assert main(["rules", "export", "--config", str(config), "--output", str(output)]) == EXIT_OK
    assert capsys.readouterr().out == ""
    document = yaml.safe_load(output.read_text())
    alerts = {rule["alert"]: rule for group in document["groups"] for rule in group["rules"] if "alert" in rule}
    assert alerts["UpstreamTimeouts"]["labels"] == {"cluster": "prod-eu", "severity": "warning"}
    assert 'error_type=~"upstream_.*timeout"' in alerts["UpstreamTimeouts"]["expr"]
    assert "SidecarHighErrorRate" in alerts  # the defaults stay


def test_export_reads_the_environment_like_the_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIDECAR_CONFIG", str(write_config(tmp_path, CONFIG)))
    monkeypatch.setenv("SIDECAR_RULES__DEFAULTS", "false")
    assert main(["rules", "export"]) == EXIT_OK
    document = yaml.safe_load(capsys.readouterr().out)
    alerts = [rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts == ["UpstreamTimeouts"]


def test_export_with_a_selector(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "export", "--selector", 'job="sidecar"']) == EXIT_OK
    assert 'DCGM_FI_DEV_GPU_TEMP{job="sidecar"}' in capsys.readouterr().out


def test_an_unknown_format_is_refused_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["rules", "export", "--format", "json"])
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument --format: invalid choice: 'json' (choose from 'prometheus')" in err


def test_a_bad_selector_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "export", "--selector", "job=sidecar"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--selector: expected label matchers" in captured.err


def test_an_unwritable_output_fails_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "missing" / "rules.yml"
    assert main(["rules", "export", "--output", str(output)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"--output: cannot write {output}" in err
    assert "Traceback" not in err


def test_check_prints_one_line_per_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["rules", "check", "--config", str(write_config(tmp_path, CONFIG))]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in lines[:-1] if not line.startswith("SloAvailability")}
    assert "critical" in by_name["SidecarHighErrorRate"]
    expected = ("error_ratio (any failure of the service) over 5m > 0.05 ratio, once the window holds 20 requests "
                "and 5 failed ones, for 2m  [default]")
    assert expected in by_name["SidecarHighErrorRate"]
    assert ("error_ratio (upstream timeouts) over 5m > 0.01 ratio, once the window holds 20 requests and 5 failed "
            "ones, for 1m  [config]") in by_name["UpstreamTimeouts"]
    assert "gpu_temperature per GPU > 85 celsius, for 1m" in by_name["GpuTemperatureHigh"]
    slo = [line for line in lines if line.startswith("SloAvailabilityErrorBudgetBurn")]
    assert len(slo) == 2
    assert "page" in slo[0] and "14.4x over 1h and 5m, or 6x over 6h and 30m" in slo[0]
    assert "ticket" in slo[1] and "3x over 1d and 2h, or 1x over 3d and 6h" in slo[1]
    assert lines[-1] == "OK: 15 rules (2 from 1 SLO)"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("    - name: PeakErrors\n      signal: error_ratio\n      aggregate: max\n      threshold: 0.1\n",
         "rules.alerts 'PeakErrors': aggregate applies to gauge signals, not error_ratio"),
        ("    - name: BadSummary\n      signal: gpu_lost\n      threshold: 0\n"
         "      annotations:\n        summary: '{{ .Labels.gpu }}'\n",
         "rules.alerts 'BadSummary': annotations.summary: unsupported template action"),
        ("    - name: NoQuantile\n      signal: ttft_quantile\n      threshold: 2\n",
         "expected quantile (e.g. 0.99) for signal ttft_quantile in rule 'NoQuantile'"),
    ],
)  # fmt: skip
def test_check_names_the_bad_rule_and_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rule: str, expected: str
) -> None:
    config = write_config(tmp_path, "rules:\n  alerts:\n" + rule)
    assert main(["rules", "check", "--config", str(config)]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in captured.err
    assert "Traceback" not in captured.err
    assert main(["rules", "export", "--config", str(config)]) == EXIT_USAGE
    assert expected in capsys.readouterr().err


def test_check_of_a_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", "--config", str(tmp_path / "nope.yaml")]) == EXIT_USAGE
    assert "config file not found" in capsys.readouterr().err


def test_the_console_entry_point_exports(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SIDECAR_")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "rules", "export", "--format", "prometheus"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == export_prometheus(effective_rules(RulesConfig()))
