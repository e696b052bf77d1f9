"""Write monitoring/prometheusrule.yaml: alerts/sidecar-rules.yml as a PrometheusRule.

The PrometheusRule's `spec` is the rule file itself, indented under `spec:` line by
line, so its comments and block-scalar expressions stay as `sidecar rules export`
wrote them. Run it after regenerating alerts/sidecar-rules.yml:

    python deploy/kubernetes/generate_prometheusrule.py           # rewrite the file
    python deploy/kubernetes/generate_prometheusrule.py --check   # exit 1 if it is stale

tests/deploy/test_deploy.py fails while the committed file differs from the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "alerts" / "sidecar-rules.yml"
OUTPUT_FILE = Path(__file__).resolve().parent / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from alerts/sidecar-rules.yml by deploy/kubernetes/generate_prometheusrule.py.
# DO NOT EDIT: change the rules, re-export alerts/sidecar-rules.yml, then run the script.
#
# The sidecar's exported alert rules and SLO recording rules, for a Prometheus run by the
# Prometheus Operator. The label `release` must match your Prometheus's ruleSelector.
# With these rules in Prometheus, give the sidecars no Alertmanager of their own
# (rules.alertmanagers empty), or every alert arrives twice.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: inference-sidecar
  labels:
    app.kubernetes.io/name: inference-sidecar
    app.kubernetes.io/part-of: vllm
    release: kube-prometheus-stack
spec:
"""


def prometheusrule_text(rules_text: str) -> str:
    """The PrometheusRule manifest whose spec is `rules_text` (a Prometheus rule file)."""
    lines = [("  " + line) if line.strip() else "" for line in rules_text.splitlines()]
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not up to date")
    args = parser.parse_args(argv)
    expected = prometheusrule_text(RULES_FILE.read_text(encoding="utf-8"))
    current = OUTPUT_FILE.read_text(encoding="utf-8") if OUTPUT_FILE.exists() else None
    if args.check:
        if current != expected:
            print(f"{OUTPUT_FILE.relative_to(REPO)} is stale: run {Path(__file__).relative_to(REPO)}", file=sys.stderr)
            return 1
        return 0
    if current != expected:
        OUTPUT_FILE.write_text(expected, encoding="utf-8")
        print(f"wrote {OUTPUT_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
