"""The `sidecar` command line."""

from __future__ import annotations

import subprocess
import sys

from sidecar import __version__
from sidecar.cli import EXIT_OK, EXIT_USAGE, main


def test_check_config_reports_every_problem_with_key_paths_and_fails(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("upstream:\n  url: http://127.0.0.1:8000\n  conect_timeout: 5s\nproxy:\n  max_request_body: huge\n")
    assert main(["check-config", str(path), "--no-env"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid configuration (2 problems):" in err
    assert f"{path}:3:19: upstream.conect_timeout: unknown key" in err
    assert "did you mean 'connect_timeout'" in err
    assert f"{path}:5:21: proxy.max_request_body: got 'huge'" in err


def test_check_config_accepts_a_valid_file(tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text("upstream:\n  url: unix:/run/model.sock\n")
    assert main(["check-config", str(path), "--no-env"]) == EXIT_OK
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{path}: OK: upstream unix:/run/model.sock, proxy 127.0.0.1:8080")
    assert len(out.splitlines()) == 1


def test_check_config_sees_the_environment_unless_told_not_to(tmp_path, monkeypatch, capsys):
    path = tmp_path / "good.yaml"
    path.write_text("{}\n")
    monkeypatch.setenv("SIDECAR_PROXY__LISTEN", "everywhere")
    assert main(["check-config", str(path)]) == EXIT_USAGE
    assert "environment variable SIDECAR_PROXY__LISTEN: proxy.listen: got 'everywhere'" in capsys.readouterr().err
    assert main(["check-config", str(path), "--no-env"]) == EXIT_OK


def test_version_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "sidecar", "version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith(f"inference-sidecar {__version__} (Python ")


def test_run_with_a_bad_config_exits_2_before_binding(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("admin:\n  listen: nowhere\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{path}:2:11: admin.listen: got 'nowhere'" in result.stderr


def test_check_config_reports_a_rule_it_cannot_evaluate(tmp_path, capsys):
    path = tmp_path / "sidecar.yaml"
    path.write_text("rules:\n  alerts:\n    - {name: X, signal: error_ratio, threshold: 0.1,"
                    " annotations: {summary: '{{ $value | humanise }}'}}\n")  # fmt: skip
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "rules.alerts 'X': annotations.summary" in err and "humanise" in err
