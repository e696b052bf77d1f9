"""`sidecar demo` runs the whole tour on its own and stops by itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_sidecar_demo_serves_sends_traffic_and_stops(tmp_path):
    pytest.importorskip("torch")
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
