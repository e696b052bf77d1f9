"""The Prometheus export: valid for promtool, true to its unit tests, in step with the committed
file, and reading only series the sidecar serves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from sidecar.config import RulesConfig, load_config
from sidecar.rules.promql import (
    bad_event_matchers,
    export_prometheus,
    prom_duration,
    selector_problem,
    signal_expr,
)
from sidecar.rules.signals import ERROR_CLASSES, SIGNALS, BadEvents, Shape
from sidecar.rules.spec import SignalCondition, effective_rules
from sidecar.testing.nvml import FakeNvml
from tests.conftest import SidecarFactory
from tests.support.endings import ENDINGS
from tests.support.tools import require_tool, wait_for
from tests.support.upstream import TestUpstream

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "alerts" / "sidecar-rules.yml"
TESTS_FILE = ROOT / "alerts" / "tests" / "sidecar-rules.test.yml"
REGENERATE = "sidecar rules export --format prometheus > alerts/sidecar-rules.yml"
PROMTOOL_TIMEOUT_S = 60

CUSTOM_CONFIG = """\
rules:
  external_labels:
    cluster: prod-eu
    team: ml-platform
  alerts:
    - name: UpstreamTimeouts
      signal: error_ratio
      error_class: timeout
      window: 5m
      op: ">"
      threshold: 0.01
      severity: warning
      labels:
        team: inference
      annotations:
        summary: "{{ $value | humanizePercentage }} of requests timed out upstream"
    - name: GpuHotPeak
      signal: gpu_temperature
      aggregate: max
      window: 10m
      op: ">"
      threshold: 80
      severity: info
      annotations:
        summary: "GPU {{ $labels.gpu }} peaked at {{ $value }} C in 10m"
    - name: SlowUpstreamRecovery
      signal: upstream_up
      aggregate: avg
      window: 15m
      op: "<"
      threshold: 0.5
      keep_firing_for: 10m
      severity: warning
  slos:
    - name: ttft-fast
      sli: latency
      latency_signal: ttft
      latency_threshold: 1s
      objective: 99
      period: 28d
"""


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False
    )


def default_export() -> str:
    return export_prometheus(effective_rules(RulesConfig()))


def custom_config(tmp_path: Path):
    path = tmp_path / "sidecar.yaml"
    path.write_text(CUSTOM_CONFIG)
    return load_config(path, env={})


# --- the committed files -------------------------------------------------------------------------


def test_committed_rules_are_a_fresh_export_of_the_defaults() -> None:
    assert RULES_FILE.read_text() == default_export(), (
        f"{RULES_FILE.relative_to(ROOT)} is out of date with the rule spec; regenerate it with: {REGENERATE}"
    )


@pytest.mark.integration
def test_committed_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.integration
def test_committed_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(TESTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_export_is_deterministic_with_a_header_and_the_three_groups() -> None:
    text = default_export()
    assert text == default_export()
    assert text.startswith("# ")
    assert REGENERATE in text.split("groups:")[0]
    document = yaml.safe_load(text)
    names = [group["name"] for group in document["groups"]]
    assert names == ["sidecar-slo-recording-availability", "sidecar-alerts", "sidecar-slo-alerts"]
    alerts = {rule["alert"]: rule for rule in document["groups"][1]["rules"]}
    error_rate = alerts["SidecarHighErrorRate"]
    assert error_rate["for"] == "2m"
    assert "keep_firing_for" not in error_rate
    assert error_rate["labels"] == {"severity": "critical"}
    assert error_rate["annotations"]["summary"] == (
        "{{ $value | humanizePercentage }} of requests are failing (over 5% for 2m)"
    )
    assert "for" not in alerts["GpuLost"]


# --- a custom config ------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_custom_config_exports_rules_promtool_accepts_and_that_fire_as_meant(tmp_path: Path) -> None:
    config = custom_config(tmp_path)
    text = export_prometheus(effective_rules(config.rules), external_labels=config.rules.external_labels)
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(text)
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr

    document = yaml.safe_load(text)
    alerts = {rule["alert"]: rule for group in document["groups"] for rule in group["rules"] if "alert" in rule}
    # External labels on every alert; a rule's own label wins over an external one of the same name.
    assert alerts["UpstreamTimeouts"]["labels"] == {"cluster": "prod-eu", "team": "inference", "severity": "warning"}
    default_labels = {"cluster": "prod-eu", "team": "ml-platform", "severity": "critical"}
    assert alerts["SidecarHighErrorRate"]["labels"] == default_labels
    assert alerts["SlowUpstreamRecovery"]["keep_firing_for"] == "10m"
    assert "max_over_time(DCGM_FI_DEV_GPU_TEMP[10m])" in alerts["GpuHotPeak"]["expr"]
    groups = {group["name"]: group["rules"] for group in document["groups"]}
    ttft = {rule["record"]: rule for rule in groups["sidecar-slo-recording-ttft-fast"]}
    assert 'gen_ai_server_time_to_first_token_seconds_bucket{le="1.0"}' in ttft["slo:sli_error:ratio_rate5m"]["expr"]
    assert "slo:sli_error:ratio_rate28d" in ttft
    assert ttft["slo:time_period:days"]["expr"] == "vector(28)"

    tests_file = tmp_path / "rules.test.yml"
    unit_tests = custom_unit_tests(rules_file.name)
    # Recording groups before the alerts that read them: promtool's own group order is random.
    unit_tests["group_eval_order"] = list(groups)
    tests_file.write_text(yaml.safe_dump(unit_tests, sort_keys=False))
    result = promtool("test", "rules", str(tests_file))
    assert result.returncode == 0, result.stdout + result.stderr


def custom_unit_tests(rules_file: str) -> dict[str, object]:
    """promtool tests for the custom config: the timeout class counts upstream timeouts and
    nothing else, `aggregate: max` remembers a peak for its window, and the ttft latency SLO
    counts calls slower than the 1.0 bucket as bad."""
    sidecar = 'job="inference-sidecar", instance="sidecar-0:9180"'
    route = f'{sidecar}, http_request_method="POST", http_route="/v1/chat/completions"'
    requests = "http_server_request_duration_seconds_count"
    model = f'{sidecar}, gen_ai_operation_name="chat", gen_ai_provider_name="openai", gen_ai_request_model="m"'
    gpu = f'{sidecar}, gpu="0", UUID="GPU-aaaa", device="nvidia0"'
    return {
        "rule_files": [rules_file],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # 100 requests a minute: 2 upstream timeouts, 10 unreachable upstream (not timeouts).
                    {"series": f'{requests}{{{route}, http_response_status_code="200", error_type=""}}',
                     "values": "0+88x20"},
                    {"series": f'{requests}{{{route}, http_response_status_code="504", error_type="upstream_connect_timeout"}}',
                     "values": "0+1x20"},
                    {"series": f'{requests}{{{route}, http_response_status_code="200", error_type="upstream_idle_timeout"}}',
                     "values": "0+1x20"},
                    {"series": f'{requests}{{{route}, http_response_status_code="502", error_type="upstream_connect_error"}}',
                     "values": "0+10x20"},
                    {"series": f"DCGM_FI_DEV_GPU_TEMP{{{gpu}}}", "values": "70 70 90 70+0x17"},
                    # 100 streamed calls a minute, 90 with their first token within 1s.
                    {"series": f'gen_ai_server_time_to_first_token_seconds_bucket{{{model}, le="1.0"}}',
                     "values": "0+90x20"},
                    {"series": f'gen_ai_server_time_to_first_token_seconds_bucket{{{model}, le="+Inf"}}',
                     "values": "0+100x20"},
                    {"series": f"gen_ai_server_time_to_first_token_seconds_count{{{model}}}", "values": "0+100x20"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "UpstreamTimeouts", "exp_alerts": [{
                        "exp_labels": {"severity": "warning", "cluster": "prod-eu", "team": "inference",
                                       "job": "inference-sidecar", "instance": "sidecar-0:9180"},
                        "exp_annotations": {"summary": "2% of requests timed out upstream"},
                    }]},
                    {"eval_time": "1m", "alertname": "GpuHotPeak", "exp_alerts": []},
                    {"eval_time": "11m", "alertname": "GpuHotPeak", "exp_alerts": [{
                        "exp_labels": {"severity": "info", "cluster": "prod-eu", "team": "ml-platform",
                                       "job": "inference-sidecar", "instance": "sidecar-0:9180", "gpu": "0",
                                       "UUID": "GPU-aaaa"},
                        "exp_annotations": {"summary": "GPU 0 peaked at 90 C in 10m"},
                    }]},
                    {"eval_time": "13m", "alertname": "GpuHotPeak", "exp_alerts": []},
                ],
                "promql_expr_test": [{
                    "expr": 'round(slo:sli_error:ratio_rate5m{sloth_slo="ttft-fast"}, 0.000001)',
                    "eval_time": "10m",
                    "exp_samples": [{
                        "labels": '{job="inference-sidecar", instance="sidecar-0:9180", '
                                  'sloth_id="inference-sidecar-ttft-fast", sloth_service="inference-sidecar", '
                                  'sloth_slo="ttft-fast", sloth_window="5m"}',
                        "value": 0.1,
                    }],
                }],
            }
        ],
    }  # fmt: skip


@pytest.mark.integration
def test_a_rule_on_every_signal_passes_promtool_check(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(every_signal_export())
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_selectors_are_added_to_every_series_read(tmp_path: Path) -> None:
    text = export_prometheus(effective_rules(RulesConfig()), selector='job="sidecar"')
    expressions = [rule["expr"] for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]
    for name in referenced_metrics("\n".join(expressions)) - recorded_names(text):
        for mention in re.finditer(rf"\b{name}\b(\{{[^}}]*\}})?", "\n".join(expressions)):
            assert mention.group(1) and 'job="sidecar"' in mention.group(1), (name, mention.group(0))


def test_a_bad_selector_is_refused() -> None:
    assert selector_problem('job="a", env=~"prod.*"') is None
    assert selector_problem("") is None
    assert "label matchers" in (selector_problem("job=sidecar") or "")
    with pytest.raises(ValueError, match="selector"):
        export_prometheus(effective_rules(RulesConfig()), selector="}")


def test_prometheus_durations_have_no_decimals() -> None:
    assert prom_duration(300) == "5m"
    assert prom_duration(5400) == "1h30m"
    assert prom_duration(1.5) == "1s500ms"
    assert prom_duration(2_592_000) == "30d"


_MATCHER_PARTS = re.compile(r'([A-Za-z_]+)(=~|!~|!=|=)"((?:[^"\\]|\\.)*)"')


def matches(matchers: tuple[str, ...], labels: dict[str, str]) -> bool:
    """Whether a series with `labels` is selected by `matchers`, as Prometheus matches (anchored)."""
    for matcher in matchers:
        match = _MATCHER_PARTS.fullmatch(matcher)
        assert match is not None, matcher
        name, op, value = match.groups()
        value = json.loads(f'"{value}"')
        actual = labels.get(name, "")
        selected = {"=": actual == value, "!=": actual != value, "=~": re.fullmatch(value, actual) is not None,
                    "!~": re.fullmatch(value, actual) is None}[op]  # fmt: skip
        if not selected:
            return False
    return True


CLASSIFICATIONS = {
    **{f"error class {name}": events for name, events in ERROR_CLASSES.items()},
    "rate limits too": BadEvents.build(statuses=["5xx", "429"], outcomes=["upstream_timeout", "client_closed"]),
    "only some upstream failures": BadEvents.build(outcomes=["upstream_error", "aborted"]),
    "refusals and all": BadEvents.build(statuses=["4xx", "5xx"], outcomes=["rejected", "upstream_unavailable"],
                                        good_refusals=["429"]),  # fmt: skip
    "lenient": BadEvents.build(statuses=["500", "502", "504"], good_refusals=["5xx"], good_outcomes=["aborted"]),
}


@pytest.mark.parametrize("events", CLASSIFICATIONS.values(), ids=CLASSIFICATIONS.keys())
def test_the_exported_matchers_select_exactly_the_requests_the_engine_counts_as_bad(events: BadEvents) -> None:
    sets = bad_event_matchers(events)
    for status, error_type, outcome in ENDINGS:
        labels = {"http_response_status_code": str(status), "error_type": error_type}
        selected = [matchers for matchers in sets if matches(matchers, labels)]
        assert len(selected) <= 1, f"{labels} counted twice: {selected}"
        assert bool(selected) == events.counts(status, outcome), (labels, outcome, sets)


def test_error_classes_read_the_series_they_name() -> None:
    def numerator(error_class: str) -> str:
        expr = signal_expr(SignalCondition("error_ratio", 300.0, ">", 0.05, error_class=error_class))
        return expr.split("or\n  0 *")[0]

    assert 'http_server_request_duration_seconds_count{error_type=~"upstream_.*timeout"}[5m]' in numerator("timeout")
    assert 'http_server_request_duration_seconds_count{error_type="upstream_connect_error"}[5m]' in numerator(
        "upstream_down"
    )
    assert 'http_response_status_code!~"501|505"' in numerator("any")
    assert 'http_response_status_code!~"501|505"' in numerator("5xx")


def test_the_minimum_of_evidence_is_part_of_the_exported_alerts() -> None:
    document = yaml.safe_load(default_export())
    rules = {rule.get("alert") or rule["record"]: rule for group in document["groups"] for rule in group["rules"]}
    error_rate = rules["SidecarHighErrorRate"]["expr"]
    requests = "sum by (job, instance) (increase(http_server_request_duration_seconds_count[5m]))"
    assert f"and on (job, instance)\n{requests} >= 20" in error_rate
    assert error_rate.rstrip().endswith(">= 5")
    for severity_windows in (("5m", "30m"), ("2h", "6h")):
        [burn] = [rule["expr"] for group in document["groups"] for rule in group["rules"]
                  if rule.get("alert") == "SloAvailabilityErrorBudgetBurn"
                  and f"slo:sli_total:increase{severity_windows[0]}" in rule["expr"]]  # fmt: skip
        for window in severity_windows:
            assert f'slo:sli_total:increase{window}{{sloth_id="inference-sidecar-availability"' in burn
            assert re.search(rf"slo:sli_error:increase{window}\{{[^}}]*\}} >= 5", burn)
    # Without a minimum, no such clause and no such records.
    bare = RulesConfig.model_validate({"defaults": False, "slos": [{"name": "a", "objective": 99, "min_events": 0,
                                                                   "min_bad_events": 0}]})  # fmt: skip
    assert "increase" not in export_prometheus(effective_rules(bare))


@pytest.mark.integration
def test_promtool_counts_the_bad_requests_the_engine_counts(tmp_path: Path) -> None:
    """Every way a request can end, each with its own power of two of requests a minute, through the
    shipped availability SLO and an SLO that counts rate limits and clients gone as bad: the exported
    records hold the same counts as the engine."""
    config = RulesConfig.model_validate({"defaults": True, "slos": [
        {"name": "strict", "objective": 99, "bad_statuses": ["5xx", "429"], "good_refusals": ["400"],
         "bad_outcomes": ["upstream_unavailable", "upstream_timeout", "upstream_error", "client_closed"],
         "good_outcomes": []}]})  # fmt: skip
    ruleset = effective_rules(config)
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(export_prometheus(ruleset))
    sidecar = 'job="inference-sidecar", instance="sidecar-0:9180", http_request_method="POST", http_route="/x"'
    series = [{"series": f'http_server_request_duration_seconds_count{{{sidecar}, http_response_status_code="{status}", '
                         f'error_type="{error_type}"}}', "values": f"0+{2 ** index}x10"}
              for index, (status, error_type, _) in enumerate(ENDINGS)]  # fmt: skip
    expected = []
    for slo in ruleset.slos:
        assert slo.bad_events is not None
        counted = [index for index, (status, _, outcome) in enumerate(ENDINGS) if slo.bad_events.counts(status, outcome)]
        bad = sum(2**index for index in counted)
        labels = (f'{{job="inference-sidecar", instance="sidecar-0:9180", sloth_id="inference-sidecar-{slo.name}", '
                  f'sloth_service="inference-sidecar", sloth_slo="{slo.name}", sloth_window="5m"}}')  # fmt: skip
        expected.append({"labels": labels, "value": 5 * bad})  # 5 minutes of them
    assert len({sample["value"] for sample in expected}) == 2, "the two SLOs count differently"
    tests = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": "round(slo:sli_error:increase5m)", "eval_time": "10m", "exp_samples": expected}],
    }]}  # fmt: skip
    tests_file = tmp_path / "agree.test.yml"
    tests_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(tests_file))
    assert result.returncode == 0, result.stdout + result.stderr


# --- every series read exists -------------------------------------------------------------------


_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def referenced_metrics(promql: str) -> set[str]:
    """Metric names a PromQL text selects (a small tokenizer: enough for the generated rules)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b(?:group_left|group_right)\b", " ", text)
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in names if name.lower() not in _KEYWORDS}


def recorded_names(rule_file: str) -> set[str]:
    groups = yaml.safe_load(rule_file)["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry serves or would serve once observed (labelled histograms and
    counters have no samples until their first observation)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",),
                "summary": ("_count", "_sum")}  # fmt: skip
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def every_signal_export() -> str:
    """An export with a rule on every signal (and every aggregate of a gauge)."""
    alerts: list[dict[str, object]] = []
    for signal in SIGNALS.values():
        rule: dict[str, object] = {"name": f"Watch_{signal.name}", "signal": signal.name, "threshold": 1}
        if signal.shape is Shape.QUANTILE:
            rule["quantile"] = 0.9
        alerts.append(rule)
        if signal.shape is Shape.GAUGE:
            alerts.append({**rule, "name": f"Peak_{signal.name}", "aggregate": "max"})
    for error_class in ("5xx", "timeout", "upstream_down"):
        alerts.append({"name": f"Errors_{error_class}", "signal": "error_ratio", "error_class": error_class,
                       "threshold": 0.1})  # fmt: skip
    slos = [
        {"name": "fast", "sli": "latency", "latency_threshold": "500ms", "objective": 99},
        {"name": "tokens", "sli": "latency", "latency_signal": "ttft", "latency_threshold": "250ms", "objective": 95},
        {"name": "short-period", "objective": 99.5, "period": "3d"},  # the period is one of the burn windows
    ]
    config = RulesConfig.model_validate({"alerts": alerts, "slos": slos})
    return export_prometheus(effective_rules(config))


async def test_every_series_the_exported_rules_read_is_served_by_a_running_sidecar(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    nvml = FakeNvml(2, pcie_delay=0.0)
    running = await make_sidecar(upstream.url, nvml=nvml, gpu__nvml__interval="20ms")
    sidecar = running.sidecar
    assert sidecar.nvml is not None and sidecar.audit is not None  # GPU and audit series on
    nvml_collector = sidecar.nvml
    # XID events are delivered once the GPU's events are waited on, which the last-XID field shows.
    await wait_for(lambda: "DCGM_FI_DEV_XID_ERRORS" in getattr(nvml_collector.latest().get("0"), "fields", {}),
                   timeout=10, what="XID events being waited on")  # fmt: skip
    nvml.inject_xid(0, 79)  # DCGM_EXP_XID_ERRORS_TOTAL appears with the first XID
    await wait_for(lambda: bool(sidecar.nvml and sidecar.nvml.stats().xid_errors), timeout=10, what="an XID")
    served = exposed_names(sidecar.registry)

    config = custom_config(tmp_path)
    exports = (default_export(), export_prometheus(effective_rules(config.rules)), every_signal_export())
    for text in exports:
        expressions = "\n".join(rule["expr"] for group in yaml.safe_load(text)["groups"] for rule in group["rules"])
        read = referenced_metrics(expressions) - recorded_names(text)
        assert "http_server_request_duration_seconds_count" in read  # the tokenizer finds names
        assert read - served == set(), f"the rules read series no sidecar serves: {sorted(read - served)}"
