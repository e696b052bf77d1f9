"""Annotations render as Prometheus renders them: checked by promtool against our own rendering."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from sidecar.rules.spec import render_template, template_problem
from tests.support.tools import require_tool

TEMPLATES = {
    "plain": "{{ $value }}",
    "humanize": "{{ $value | humanize }}",
    "percentage": "{{ $value | humanizePercentage }}",
    "duration": "{{ $value | humanizeDuration }}",
    "printf": '{{ $value | printf "%.2f" }}',
    "label": "GPU {{ $labels.gpu }} at {{ $value }}",
}
VALUES = (1e6, 1e-5, 0.0001, 0.1234, 0.5, 3.0, 123456.0, 1234567.0, 3600.0, 90061.0, 61.0, 12.3456, 0.0005)


def test_every_supported_template_renders_as_promtool_renders_it(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules, tests = [], []
    for index, value in enumerate(VALUES):
        name = f"Value{index}"
        rules.append({"alert": name, "expr": f'label_replace(vector({value!r}), "gpu", "0", "", "")',
                      "annotations": TEMPLATES})  # fmt: skip
        tests.append({
            "alertname": name,
            "eval_time": "0m",
            "exp_alerts": [{"exp_labels": {"gpu": "0"},
                            "exp_annotations": {key: render_template(text, value, {"gpu": "0"})
                                                for key, text in TEMPLATES.items()}}],  # fmt: skip
        })
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "t", "rules": rules}]}))
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [], "alert_rule_test": tests}],
    }))  # fmt: skip
    result = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{{ $value | humanise }}", "humanise"), ("{{ range $labels }}", "range"), ("{{ $value }} ok", None)],
)
def test_unsupported_templates_are_named(text: str, problem: str | None) -> None:
    found = template_problem(text)
    assert (found is None) if problem is None else (found is not None and problem in found)
