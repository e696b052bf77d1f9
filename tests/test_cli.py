"""The `sidecar` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar import __version__
from sidecar.cli import EXIT_OK, EXIT_USAGE, main
from sidecar.config import default_data_dir


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


def test_check_config_lists_problems_in_file_order(tmp_path, capsys):
    path = tmp_path / "sidecar.yaml"
    # Sections in the opposite order to the config's own, and one problem inside a list.
    path.write_text(
        "data_dir: [not, a, path]\n"
        "admin:\n  listen: nowhere\n"
        "rules:\n  alerts:\n    - {name: X, signal: error_ratio, threshold: high}\n"
        "proxy:\n  max_request_body: huge\n"
        "upstream:\n  url: http://127.0.0.1:8000\n  conect_timeout: 5s\n"
    )  # fmt: skip
    assert main(["check-config", str(path), "--no-env"]) == EXIT_USAGE
    lines = [line.strip() for line in capsys.readouterr().err.splitlines()[1:]]
    positions = [tuple(int(n) for n in line.removeprefix(f"{path}:").split(":")[:2]) for line in lines]
    assert len(lines) == 5, lines
    assert positions == sorted(positions), lines
    assert [line.split(": ")[1] for line in lines] == [
        "data_dir", "admin.listen", "rules.alerts[0].threshold", "proxy.max_request_body", "upstream.conect_timeout"
    ]


def test_run_help_shows_every_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help text at the terminal's width
    assert "sets upstream.url (default: http://127.0.0.1:8000)" in text
    assert "sets proxy.listen (default: 127.0.0.1:8080)" in text
    assert "sets admin.listen (default: 127.0.0.1:9180)" in text
    assert f"sets data_dir (default: {default_data_dir()})" in text
