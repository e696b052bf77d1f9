"""`sidecar demo`: the tour runs on its own, and what it prints can be pasted into a shell."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("torch")

from sidecar.config import RulesConfig  # noqa: E402
from sidecar.demo.tour import LATENCY_RULE, fitted_latency_rule, fitted_latency_threshold, sidecar_command  # noqa: E402
from sidecar.rules.spec import effective_rules  # noqa: E402


@pytest.mark.integration
def test_sidecar_demo_serves_sends_traffic_and_stops(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--duration", "1", "--data-dir", str(tmp_path), "--tokens-per-second", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "sidecar proxy      http://127.0.0.1:" in out
    assert "/metrics" in out and "/-/ready" in out
    for label in ("chat, streamed", "KServe predict", "TGI generate_stream", "Ollama chat"):
        assert f"  {label}" in out and f"{label}" in out
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ") and " ms " in line}
    assert " 200 " in lines["chat, streamed"] and " 404 " in lines["unknown model (404)"]
    assert "Traceback" not in result.stderr
    # The tour's traffic is on the audit trail, and the trail verifies.
    assert f"audit trail        {tmp_path / 'audit' / 'events'}" in out
    verify = subprocess.run(
        [sys.executable, "-m", "sidecar", "audit", "verify", "--file", str(tmp_path / "audit" / "events"),
         "--public-key", str(tmp_path / "audit" / "checkpoint.pub")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    records = int(verify.stdout.split("records checked: ")[1].split()[0])
    assert records >= len(lines) + 4  # each request, start and stop, two checkpoints


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _rule(alerts: dict, name: str) -> dict:
    return next(rule for rule in alerts["rules"] if rule["name"] == name)


def _active(alerts: dict) -> dict[str, str]:
    return {alert["labels"]["alertname"]: alert["state"] for alert in alerts["alerts"]}


def _shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _poll(check, attempts: int = 300) -> None:
    """Call `check` until it returns true; bounded by attempts, each 0.1 s apart."""
    for _ in range(attempts):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"still not true after {attempts} attempts: {check.__doc__ or check}")


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_tour_s_printed_commands_work_from_a_shell_without_the_venv_on_path(tmp_path):
    # A newcomer's shell: the virtualenv is not activated, so plain `sidecar` is not on PATH.
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)}
    env.pop("VIRTUAL_ENV", None)
    data = tmp_path / "data"
    demo = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo", "--duration", "250", "--data-dir", str(data), "--tokens-per-second", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        out = []
        for _ in range(200):
            line = demo.stdout.readline()
            assert line, "the demo exited before serving:\n" + "".join(out) + (demo.stderr.read() if demo.stderr else "")
            out.append(line)
            if line.startswith("serving"):
                break
        text = "".join(out)
        pid = int(re.search(r"^demo model server .*\(model .*, pid (\d+)\)$", text, re.M)[1])
        assert "demo-server" in Path(f"/proc/{pid}/cmdline").read_text()
        admin = re.search(r"^metrics +(http://127\.0\.0\.1:\d+)/metrics$", text, re.M)[1]
        model_url = re.search(r"^demo model server +(http://127\.0\.0\.1:\d+) ", text, re.M)[1]
        traces = dict(re.findall(r"^  (\S.*?) +\d{3} .* trace ([0-9a-f]{32})$", text, re.M))
        assert len(traces) == 8, text
        commands = text.split("\ntry it:\n")[1].split("\nserving")[0].replace("\\\n", "").splitlines()
        commands = [line.strip() for line in commands if line.startswith("  ")]
        curl_chat, _metrics, _tail, verify, kill, loop, _alerts = commands

        # The audit command names this installation's sidecar by path, as plain `sidecar` would not run.
        assert verify.startswith(f"{Path(sys.executable).parent / 'sidecar'} audit verify "), verify
        assert kill == f"kill {pid}"

        # The demo's latency rule fits its model: its own burst leaves it inactive.
        def burst_evaluated() -> bool:
            """the latency rule has read the burst"""
            values = _rule(_get_json(f"{admin}/-/alerts"), LATENCY_RULE)["values"]
            return bool(values) and values[0]["value"] > 0

        _poll(burst_evaluated)
        alerts = _get_json(f"{admin}/-/alerts")
        assert _rule(alerts, LATENCY_RULE)["expression"] != "request_duration_quantile(0.99)[5m] > 0.5"
        assert LATENCY_RULE not in _active(alerts) and "SidecarHighErrorRate" not in _active(alerts), alerts["alerts"]

        chat = _shell(curl_chat, tmp_path, env)
        assert chat.returncode == 0 and "data: [DONE]" in chat.stdout, chat.stdout + chat.stderr

        # Step 5: the printed kill stops the model server, the printed loop gets 502s, the alerts follow.
        assert _shell(kill, tmp_path, env).returncode == 0

        def model_server_gone() -> bool:
            """the model server stopped answering"""
            try:
                urllib.request.urlopen(f"{model_url}/health", timeout=1).close()
            except urllib.error.URLError:
                return True
            return False

        _poll(model_server_gone)
        failing = _shell(loop, tmp_path, env)
        assert failing.stdout.split() == ["502"] * 20, failing.stdout + failing.stderr

        def error_alerts_raised() -> bool:
            """SidecarUpstreamDown and SidecarHighErrorRate are active"""
            active = _active(_get_json(f"{admin}/-/alerts"))
            return active.get("SidecarUpstreamDown") == "firing" and "SidecarHighErrorRate" in active

        _poll(error_alerts_raised)
        assert LATENCY_RULE not in _active(_get_json(f"{admin}/-/alerts"))
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0

    checked = _shell(verify, tmp_path, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Each request of the burst is on the audit trail with its caller and its trace.
    records = [json.loads(line) for path in sorted((data / "audit" / "events").glob("*.jsonl"))
               for line in path.read_text().splitlines()]  # fmt: skip
    by_trace = {r["trace"]["id"]: r for r in records if (r.get("trace") or {}).get("id")}
    for label, trace_id in traces.items():
        record = by_trace[trace_id]
        assert record["user"]["name"] == "demo-user", (label, record)
        assert record["organization"]["id"] == "demo"
        assert record["sidecar"]["auth"] == {"method": "api_key", "credential_id": "demo-key"}


def test_the_printed_sidecar_command_is_relative_to_a_clone_when_the_venv_is_not_on_path(tmp_path, monkeypatch):
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").touch()
    (venv_bin / "sidecar").write_text("#!/bin/sh\n")
    (venv_bin / "sidecar").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert sidecar_command() == ".venv/bin/sidecar"
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # an activated virtualenv
    assert sidecar_command() == "sidecar"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir("/")
    assert sidecar_command() == str(venv_bin / "sidecar")
    (venv_bin / "sidecar").unlink()  # not installed as a script: run the module
    assert sidecar_command() == f"{venv_bin / 'python'} -m sidecar"


def test_the_latency_threshold_stays_above_the_measured_answers_with_room():
    assert fitted_latency_threshold(0.05) == 1.0  # never tighter than a second
    assert fitted_latency_threshold(0.7) == 2.5  # twice 0.7 s, raised to the next bucket bound
    assert fitted_latency_threshold(1.7) == 5.0
    assert fitted_latency_threshold(2.5) == 5.0
    assert fitted_latency_threshold(1000.0) == 600.0


def test_the_fitted_latency_rule_replaces_the_shipped_one_and_says_its_threshold():
    rules = effective_rules(RulesConfig.model_validate({"alerts": [fitted_latency_rule(5.0)]})).rules
    latency = [rule for rule in rules if rule.name == LATENCY_RULE]
    assert len(latency) == 1
    assert latency[0].condition.threshold == 5.0 and latency[0].for_s == 120 and latency[0].origin == "config"
    assert "over 5s for 2m" in latency[0].annotations["summary"]
