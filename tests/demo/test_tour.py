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
