"""Writes the Grafana dashboards in this folder from the definitions below.

    python dashboards/generate.py            # rewrite the JSON files
    python dashboards/generate.py --check    # exit 1 if a JSON file differs from what this writes

The JSON files are what Grafana imports (and what a provisioning config points at);
this script is where they are edited. A test (tests/dashboards) fails when a file
and this script disagree, and runs every panel query against a real Prometheus
scraping a running sidecar.

Conventions, so that the dashboards read like Grafana 10/11 exports:

- schemaVersion 39; a `datasource` variable (type datasource, Prometheus) and every
  panel and target reading `${datasource}`;
- query variables `instance`, `model`, `tenant`, `gpu` (the GPU dashboard adds
  dcgm-exporter's `Hostname`), multi-valued with "All" as `.*`, so every matcher
  is a regex match (`=~"$model"`);
- rate windows are `$__rate_interval`; totals over the time picker's range use
  `$__range`;
- latency panels over the histograms that carry trace-id exemplars ask for them
  (`"exemplar": true`), so a point opens its trace;
- GPU panels follow NVIDIA's dcgm-exporter dashboard (Grafana id 12239): the
  `DCGM_FI_*` names, `max by (Hostname, gpu, UUID)`, legends "{{Hostname}} - GPU
  {{gpu}}", clocks in Hz.

Only the standard library; no grafanalib/grafonnet, so it runs wherever Python does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
TAG = "inference-sidecar"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Selectors shared by the panels. Every one is a regex match, so "All" (.*) and multi-value
# selections ((a|b)) both work.
I = 'instance=~"$instance"'
GENAI = f'{I}, gen_ai_request_model=~"$model"'
GPU = f'{I}, Hostname=~"$Hostname", gpu=~"$gpu"'
USAGE = f'{I}, model=~"$model"'
COST = f'{I}, model=~"$model", tenant=~"$tenant"'
RATE = "[$__rate_interval]"
RANGE = "[$__range]"

# Histograms whose observations carry the request's trace id as an exemplar
# (sidecar.telemetry.metrics): panels over them ask Grafana for exemplars.
EXEMPLAR_HISTOGRAMS = (
    "http_server_request_duration_seconds",
    "gen_ai_server_request_duration_seconds",
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
)

HTTP_COUNT = "http_server_request_duration_seconds_count"
# signals.py's server-side failure: a 5xx answer, or an upstream failure whatever its status
# (a stream broken off mid-answer keeps its 200). The `or 0 * total` keeps the ratio at 0,
# not absent, while nothing failed.
SERVER_ERRORS_BY_INSTANCE = (
    f'sum by (instance) (rate({HTTP_COUNT}{{{I}, http_response_status_code=~"5.."}}{RATE})'
    f' or rate({HTTP_COUNT}{{{I}, http_response_status_code!~"5..", error_type=~"upstream_.*"}}{RATE}))'
)
REQUESTS_BY_INSTANCE = f"sum by (instance) (rate({HTTP_COUNT}{{{I}}}{RATE}))"


# --- targets, panels, layout ---------------------------------------------------------------------


@dataclass(frozen=True)
class Q:
    """One PromQL target: `legend` is Grafana's legendFormat; `instant` for stats, gauges and tables."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False

    def target(self, ref_id: str, *, exemplar: bool) -> dict[str, Any]:
        return {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "exemplar": exemplar,
            "expr": self.expr,
            "format": "table" if self.table else "time_series",
            "instant": self.instant or self.table,
            "legendFormat": self.legend or "__auto",
            "range": not (self.instant or self.table),
            "refId": ref_id,
        }


def reads_exemplar_histogram(expr: str) -> bool:
    return any(f"{name}_bucket" in expr for name in EXEMPLAR_HISTOGRAMS)


def quantiles(histogram: str, selector: str, by: str = "", qs: Iterable[float] = (0.5, 0.95, 0.99)) -> list[Q]:
    group = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        Q(f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{{{selector}}}{RATE})))",
          f"{prefix}P{round(q * 100)}")
        for q in qs
    ]  # fmt: skip


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


GREEN = thresholds(("green", None))
UP_DOWN = [
    {"type": "value", "options": {"0": {"text": "Down", "color": "red", "index": 0},
                                  "1": {"text": "Up", "color": "green", "index": 1}}},
]  # fmt: skip


@dataclass
class Panel:
    kind: str
    title: str
    description: str
    queries: list[Q]
    unit: str = "short"
    w: int = 12
    h: int = 8
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    thresholds: dict[str, Any] = field(default_factory=lambda: GREEN)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    stack: bool = False
    threshold_lines: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    transformations: list[dict[str, Any]] = field(default_factory=list)

    def render(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        exemplar = self.kind == "timeseries"
        defaults: dict[str, Any] = {"unit": self.unit, "thresholds": self.thresholds, "mappings": self.mappings}
        for key in ("min", "max", "decimals"):
            if getattr(self, key) is not None:
                defaults[key] = getattr(self, key)
        if self.kind == "timeseries":
            defaults["color"] = {"mode": "palette-classic"}
            defaults["custom"] = {
                "drawStyle": "line", "lineInterpolation": "linear", "lineWidth": 1, "fillOpacity": 10,
                "gradientMode": "none", "showPoints": "never", "pointSize": 5, "spanNulls": False,
                "axisPlacement": "auto", "axisLabel": "", "axisCenteredZero": False,
                "stacking": {"mode": "normal" if self.stack else "none", "group": "A"},
                "thresholdsStyle": {"mode": "line" if self.threshold_lines else "off"},
                **self.custom,
            }  # fmt: skip
        elif self.kind == "state-timeline":
            defaults["color"] = {"mode": "thresholds"}
            defaults["custom"] = {"fillOpacity": 70, "lineWidth": 0, **self.custom}
        else:
            defaults["color"] = {"mode": "thresholds"}
            if self.custom:
                defaults["custom"] = self.custom
        panel: dict[str, Any] = {
            "datasource": DATASOURCE,
            "description": self.description,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": {"h": self.h, "w": self.w, "x": x, "y": y},
            "id": panel_id,
            "options": {**_default_options(self.kind), **self.options},
            "targets": [
                query.target(chr(ord("A") + i), exemplar=exemplar and reads_exemplar_histogram(query.expr))
                for i, query in enumerate(self.queries)
            ],
            "title": self.title,
            "type": self.kind,
        }
        if self.transformations:
            panel["transformations"] = self.transformations
        return panel


def _default_options(kind: str) -> dict[str, Any]:
    last = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if kind == "timeseries":
        return {"legend": {"calcs": ["mean", "lastNotNull", "max"], "displayMode": "table", "placement": "bottom",
                           "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"}}  # fmt: skip
    if kind == "stat":
        return {"reduceOptions": last, "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                "orientation": "auto", "textMode": "auto", "wideLayout": True, "showPercentChange": False}  # fmt: skip
    if kind == "gauge":
        return {"reduceOptions": last, "orientation": "auto", "showThresholdLabels": False,
                "showThresholdMarkers": True}  # fmt: skip
    if kind == "bargauge":
        return {"reduceOptions": last, "orientation": "horizontal", "displayMode": "gradient",
                "showUnfilled": True, "valueMode": "color", "namePlacement": "auto", "minVizHeight": 16,
                "minVizWidth": 8, "maxVizHeight": 300, "sizing": "auto"}  # fmt: skip
    if kind == "state-timeline":
        return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "mergeValues": True, "rowHeight": 0.9, "showValue": "auto", "alignValue": "left",
                "tooltip": {"mode": "single", "sort": "none"}}  # fmt: skip
    if kind == "table":
        return {"cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
                "showHeader": True}  # fmt: skip
    raise ValueError(f"unknown panel type {kind!r}")


@dataclass
class Row:
    title: str


def hide_columns(*names: str) -> list[dict[str, Any]]:
    """A table transformation that drops Grafana's Time column and the given label columns."""
    return [{"id": "organize", "options": {"excludeByName": {name: True for name in ("Time", *names)},
                                           "indexByName": {}, "renameByName": {"Value": "value"}}}]  # fmt: skip


def layout(items: list[Panel | Row]) -> list[dict[str, Any]]:
    """Places panels left to right in rows 24 units wide; a Row starts a new titled section."""
    panels: list[dict[str, Any]] = []
    x = y = line_height = 0
    panel_id = 1
    for item in items:
        if isinstance(item, Row):
            if x:
                y, x, line_height = y + line_height, 0, 0
            panels.append({"collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "id": panel_id,
                           "panels": [], "title": item.title, "type": "row"})  # fmt: skip
            panel_id += 1
            y += 1
            continue
        if x + item.w > 24:
            y, x, line_height = y + line_height, 0, 0
        panels.append(item.render(panel_id, x, y))
        panel_id += 1
        x += item.w
        line_height = max(line_height, item.h)
    return panels


# --- template variables ---------------------------------------------------------------------------


def datasource_variable() -> dict[str, Any]:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_variable(name: str, label: str, query: str, description: str) -> dict[str, Any]:
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "description": description,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def variables(*, hostname: bool = False) -> list[dict[str, Any]]:
    gpu_selector = f'{I}, Hostname=~"$Hostname"' if hostname else I
    result = [
        datasource_variable(),
        query_variable("instance", "Sidecar", "label_values(sidecar_build_info, instance)",
                       "Sidecars, by their scrape address (every sidecar exports sidecar_build_info)."),
        query_variable("model", "Model", f"label_values(gen_ai_server_request_duration_seconds_count{{{I}}}, gen_ai_request_model)",
                       "Requested models (the first metrics.max_models names; later ones are 'other')."),
        query_variable("tenant", "Tenant", f"label_values(sidecar_cost_total{{{I}}}, tenant)",
                       "Authenticated tenants ('none' without authentication); on cost series only."),
    ]  # fmt: skip
    if hostname:
        result.append(query_variable("Hostname", "Host", f"label_values(DCGM_FI_DEV_FB_FREE{{{I}}}, Hostname)",
                                     "dcgm-exporter's Hostname label: the machine the GPUs are in."))  # fmt: skip
    result.append(
        query_variable("gpu", "GPU", f"label_values(DCGM_FI_DEV_FB_FREE{{{gpu_selector}}}, gpu)",
                       "GPU index (dcgm-exporter's gpu label).")
    )
    return result


def dashboard(uid: str, title: str, description: str, items: list[Panel | Row], *, hostname: bool = False) -> dict:
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},  # fmt: skip
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": True, "keepTime": True,
                   "tags": [TAG], "targetBlank": False, "title": "inference-sidecar", "tooltip": "",
                   "type": "dashboards", "url": ""}],  # fmt: skip
        "panels": layout(items),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": variables(hostname=hostname)},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# --- the dashboards -------------------------------------------------------------------------------


def overview() -> dict:
    error_ratio_total = (
        f'(sum(rate({HTTP_COUNT}{{{I}, http_response_status_code=~"5.."}}{RATE})'
        f' or rate({HTTP_COUNT}{{{I}, http_response_status_code!~"5..", error_type=~"upstream_.*"}}{RATE}))'
        f" or vector(0))\n/\nsum(rate({HTTP_COUNT}{{{I}}}{RATE}))"
    )
    error_ratio_by_instance = f"({SERVER_ERRORS_BY_INSTANCE}\n or 0 * {REQUESTS_BY_INSTANCE})\n/\n({REQUESTS_BY_INSTANCE} > 0)"
    ratio_thresholds = thresholds(("green", None), ("orange", 0.01), ("red", 0.05))
    items: list[Panel | Row] = [
        Row("Now"),
        Panel("stat", "Request rate", "Requests finished per second, every route (http_server_request_duration_seconds).",
              [Q(f"sum(rate({HTTP_COUNT}{{{I}}}{RATE}))", "requests/s", instant=True)], "reqps", w=4, h=4),
        Panel("stat", "Error ratio", "Server-side failures / requests: 5xx answers, and upstream failures whatever "
              "their status (a stream broken off mid-answer keeps its 200), as the SLO and rules count them.",
              [Q(error_ratio_total, "errors", instant=True)], "percentunit", w=4, h=4, thresholds=ratio_thresholds,
              decimals=2),
        Panel("stat", "P99 latency", "99th percentile of request duration, first byte in to last byte out.",
              quantiles("http_server_request_duration_seconds", I, qs=(0.99,)), "s", w=4, h=4,
              thresholds=thresholds(("green", None), ("orange", 0.5), ("red", 2))),
        Panel("stat", "Active requests", "Requests (streams included) being handled by the proxy right now.",
              [Q(f"sum(http_server_active_requests{{{I}}})", "in flight", instant=True)], "short", w=4, h=4),
        Panel("stat", "Upstream", "The model server as the active health check sees it (Down if any selected "
              "sidecar's upstream is not up; no data while health checks are off).",
              [Q(f'min(sidecar_upstream_health{{{I}, sidecar_upstream_health="up"}})', "upstream", instant=True)],
              "none", w=4, h=4, mappings=UP_DOWN, thresholds=thresholds(("red", None), ("green", 1))),
        Panel("stat", "Proxy overhead P99", "99th percentile of the time a request spent inside the sidecar itself "
              "(not waiting on the client or the model server).",
              quantiles("sidecar_proxy_overhead_seconds", I, qs=(0.99,)), "s", w=4, h=4,
              thresholds=thresholds(("green", None), ("orange", 0.001), ("red", 0.005))),
        Row("Requests"),
        Panel("timeseries", "Request latency", "P50, P95 and P99 of request duration (every route). Exemplars "
              "link slow requests to their traces.", quantiles("http_server_request_duration_seconds", I), "s"),
        Panel("timeseries", "Request rate by status", "Requests per second by HTTP status code.",
              [Q(f"sum by (http_response_status_code) (rate({HTTP_COUNT}{{{I}}}{RATE}))",
                 "{{http_response_status_code}}")], "reqps", stack=True),
        Panel("timeseries", "Error ratio per sidecar", "Server-side failures / requests per sidecar (5xx answers and upstream "
              "failures, the availability SLO's definition); 0 while nothing fails.",
              [Q(error_ratio_by_instance, "{{instance}}")], "percentunit", min=0, thresholds=ratio_thresholds,
              threshold_lines=True),
        Panel("timeseries", "Requests by outcome", "How requests ended: completed, client_closed, rejected "
              "(limits, fail_closed audit), upstream_unavailable, upstream_timeout, upstream_error, aborted.",
              [Q(f"sum by (outcome) (rate(sidecar_exchanges_total{{{I}}}{RATE}))", "{{outcome}}")], "reqps",
              stack=True),
        Row("Model calls ($model)"),
        Panel("timeseries", "Time to first token", "P50, P95 and P99 of the time to the first content-bearing "
              "chunk of streamed answers (successful calls). Exemplars link to traces.",
              quantiles("gen_ai_server_time_to_first_token_seconds", GENAI), "s", w=8),
        Panel("timeseries", "Time per output token", "P50, P95 and P99 of the time per output token after the "
              "first: (duration - TTFT) / (output tokens - 1). Exemplars link to traces.",
              quantiles("gen_ai_server_time_per_output_token_seconds", GENAI), "s", w=8),
        Panel("timeseries", "Model call duration P95", "95th percentile of model-call duration, to the last byte "
              "of the answer, by model. Exemplars link to traces.",
              quantiles("gen_ai_server_request_duration_seconds", GENAI, "gen_ai_request_model", (0.95,)), "s", w=8),
        Panel("timeseries", "Tokens per second", "Input (prompt) and output (generated) tokens per second, from "
              "gen_ai_client_token_usage (reported usage, else counted chunks).",
              [Q(f"sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{GENAI}}}{RATE}))",
                 "{{gen_ai_token_type}}")], "suffix: tok/s", w=8),
        Panel("timeseries", "Model calls by operation", "Model calls per second by GenAI operation (chat, "
              "text_completion, embeddings, predict).",
              [Q(f"sum by (gen_ai_operation_name) (rate(gen_ai_server_request_duration_seconds_count{{{GENAI}}}{RATE}))",
                 "{{gen_ai_operation_name}}")], "reqps", w=8, stack=True),
        Panel("timeseries", "Active requests per sidecar", "Requests (streams included) in flight in the proxy, per sidecar.",
              [Q(f"sum by (instance) (http_server_active_requests{{{I}}})", "{{instance}}")], "short", w=8, min=0),
        Row("Sidecar and upstream"),
        Panel("timeseries", "Proxy overhead", "Time spent inside the sidecar per request: accept to upstream "
              "call, upstream headers to client headers, and each chunk's arrival to written.",
              quantiles("sidecar_proxy_overhead_seconds", I, qs=(0.5, 0.99)), "s"),
        Panel("state-timeline", "Upstream health", "Per sidecar: the active health check's verdict on the model "
              "server (Up, Down; no data while unknown or health checks are off).",
              [Q(f'max by (instance) (sidecar_upstream_health{{{I}, sidecar_upstream_health="up"}})', "{{instance}}")],
              "none", mappings=UP_DOWN, thresholds=thresholds(("red", None), ("green", 1))),
    ]  # fmt: skip
    return dashboard("sidecar-overview", "inference-sidecar / Overview",
                     "Traffic, errors, latency, tokens and the upstream, from the sidecar in front of the model server.",
                     items)  # fmt: skip


def _bit(field_name: str, mask: int) -> str:
    return f"floor({field_name}{{{GPU}}} / {mask}) % 2"


CLOCK_EVENT_REASONS = (
    (0x1, "GPU idle"),
    (0x2, "application clocks setting"),
    (0x4, "SW power cap"),
    (0x8, "HW slowdown"),
    (0x10, "sync boost"),
    (0x20, "SW thermal slowdown"),
    (0x40, "HW thermal slowdown"),
    (0x80, "HW power brake"),
)


GPU_STATES = ((0, "ok"), (1, "stale"), (2, "unavailable"), (3, "lost"))
GPU_STATE_COLOURS = ((0, "ok", "green"), (1, "stale", "orange"), (2, "unavailable", "red"), (3, "lost", "dark-red"))


def gpu() -> dict:
    legend = "{{Hostname}} - GPU {{gpu}}"
    by = "by (Hostname, gpu, UUID)"
    reasons = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
    throttled = " + ".join(_bit(reasons, mask) for mask in (0x8, 0x20, 0x40, 0x80))
    temperature = thresholds(("green", None), ("#EAB839", 83), ("red", 87))
    items: list[Panel | Row] = [
        Row("GPUs (dcgm-exporter fields)"),
        Panel("timeseries", "GPU Temperature", "DCGM_FI_DEV_GPU_TEMP: GPU temperature (in C).",
              [Q(f"max {by} (DCGM_FI_DEV_GPU_TEMP{{{GPU}}})", legend)], "celsius", w=18,
              options={"legend": {"calcs": ["mean", "lastNotNull", "max"], "displayMode": "table",
                                  "placement": "right", "showLegend": True}}),
        Panel("gauge", "GPU Avg. Temp", "Mean of DCGM_FI_DEV_GPU_TEMP over the selected GPUs.",
              [Q(f"avg(DCGM_FI_DEV_GPU_TEMP{{{GPU}}})", instant=True)], "celsius", w=6, min=0, max=100,
              thresholds=temperature),
        Panel("timeseries", "GPU Power Usage", "DCGM_FI_DEV_POWER_USAGE: power draw (in W).",
              [Q(f"max {by} (DCGM_FI_DEV_POWER_USAGE{{{GPU}}})", legend)], "watt", w=18,
              options={"legend": {"calcs": ["mean", "lastNotNull", "max"], "displayMode": "table",
                                  "placement": "right", "showLegend": True}}),
        Panel("gauge", "GPU Power Total", "Sum of DCGM_FI_DEV_POWER_USAGE over the selected GPUs.",
              [Q(f"sum(max by (Hostname, gpu) (DCGM_FI_DEV_POWER_USAGE{{{GPU}}}))", instant=True)], "watt", w=6,
              min=0, max=5600, thresholds=thresholds(("green", None), ("#EAB839", 4200), ("red", 5000))),
        Panel("timeseries", "GPU SM Clocks", "DCGM_FI_DEV_SM_CLOCK: SM clock frequency (MHz, shown in Hz).",
              [Q(f"max {by} (DCGM_FI_DEV_SM_CLOCK{{{GPU}}} * 1000000)", legend)], "hertz"),
        Panel("timeseries", "GPU Memory Clocks", "DCGM_FI_DEV_MEM_CLOCK: memory clock frequency (MHz, shown in Hz).",
              [Q(f"max {by} (DCGM_FI_DEV_MEM_CLOCK{{{GPU}}} * 1000000)", legend)], "hertz"),
        Panel("timeseries", "GPU Utilization", "DCGM_FI_DEV_GPU_UTIL: percent of the last period in which a "
              "kernel was running (DCGM_FI_PROF_GR_ENGINE_ACTIVE needs dcgm-exporter's profiling module).",
              [Q(f"max {by} (DCGM_FI_DEV_GPU_UTIL{{{GPU}}})", legend)], "percent", min=0, max=100),
        Panel("timeseries", "GPU Memory Copy Utilization", "DCGM_FI_DEV_MEM_COPY_UTIL: percent of the last period "
              "in which device memory was being read or written.",
              [Q(f"max {by} (DCGM_FI_DEV_MEM_COPY_UTIL{{{GPU}}})", legend)], "percent", min=0, max=100),
        Panel("timeseries", "GPU Framebuffer Mem Used", "DCGM_FI_DEV_FB_USED: framebuffer memory used (MiB), per "
              "GPU and MIG instance.",
              [Q(f"max by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE) (DCGM_FI_DEV_FB_USED{{{GPU}}})",
                 "{{Hostname}} - GPU {{gpu}} {{GPU_I_PROFILE}}")], "decmbytes", w=9),
        Panel("timeseries", "GPU Framebuffer Mem Free", "DCGM_FI_DEV_FB_FREE: framebuffer memory free (MiB), per "
              "GPU and MIG instance.",
              [Q(f"max by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE) (DCGM_FI_DEV_FB_FREE{{{GPU}}})",
                 "{{Hostname}} - GPU {{gpu}} {{GPU_I_PROFILE}}")], "decmbytes", w=9),
        Panel("bargauge", "Framebuffer used", "FB_USED / (FB_USED + FB_FREE) per GPU; the GpuMemoryNearlyFull "
              "rule fires over 95 %.",
              [Q(f"max {by} (DCGM_FI_DEV_FB_USED{{{GPU}}} / (DCGM_FI_DEV_FB_USED{{{GPU}}} + DCGM_FI_DEV_FB_FREE{{{GPU}}}))",
                 legend, instant=True)], "percentunit", w=6, min=0, max=1,
              thresholds=thresholds(("green", None), ("orange", 0.9), ("red", 0.95))),
        Panel("timeseries", "GPU Memory Temperature", "DCGM_FI_DEV_MEMORY_TEMP: HBM temperature (in C).",
              [Q(f"max {by} (DCGM_FI_DEV_MEMORY_TEMP{{{GPU}}})", legend)], "celsius"),
        Panel("timeseries", "PCIe throughput", "DCGM_FI_DEV_PCIE_TX/RX_THROUGHPUT: PCIe transfer rate (KB/s over "
              "NVML's 20 ms window, read every gpu.nvml.pcie_interval).",
              [Q(f"max {by} (DCGM_FI_DEV_PCIE_TX_THROUGHPUT{{{GPU}}})", f"{legend} TX"),
               Q(f"max {by} (DCGM_FI_DEV_PCIE_RX_THROUGHPUT{{{GPU}}})", f"{legend} RX")], "KBs"),
        Row("Errors, clock events and state"),
        Panel("stat", "XID errors since start", "XIDs the driver reported since the sidecar started "
              "(DCGM_EXP_XID_ERRORS_TOTAL); 0 while none.",
              [Q(f"sum(DCGM_EXP_XID_ERRORS_TOTAL{{{GPU}}}) or vector(0)", "XIDs", instant=True)], "short", w=4,
              thresholds=thresholds(("green", None), ("red", 1))),
        Panel("table", "XID errors", "Per GPU: the last XID seen (DCGM_FI_DEV_XID_ERRORS, err_code and err_msg; 0 "
              "while none) and XIDs counted since the sidecar started, by XID. XID 79: fallen off the bus.",
              [Q(f"max by (Hostname, gpu, err_code, err_msg) (DCGM_FI_DEV_XID_ERRORS{{{GPU}}})", table=True),
               Q(f"sum by (Hostname, gpu, xid) (DCGM_EXP_XID_ERRORS_TOTAL{{{GPU}}})", table=True)], "none", w=10,
              transformations=hide_columns()),
        Panel("stat", "ECC and row remapping", "Double- and single-bit volatile ECC errors, rows remapped for "
              "uncorrectable errors, and a pending remap (a reset is due) per GPU.",
              [Q(f"max {by} (DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{GPU}}})", f"{legend} DBE", instant=True),
               Q(f"max {by} (DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{GPU}}})", f"{legend} SBE", instant=True),
               Q(f"max {by} (DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{GPU}}})", f"{legend} remapped rows",
                 instant=True),
               Q(f"max {by} (DCGM_FI_DEV_ROW_REMAP_PENDING{{{GPU}}})", f"{legend} remap pending", instant=True)],
              "short", w=10, thresholds=thresholds(("green", None), ("red", 1)), options={"textMode": "value_and_name"}),
        Panel("state-timeline", "Clock event reasons", "Which DCGM_FI_DEV_CLOCKS_EVENT_REASONS bits are set, per "
              "GPU. SW power cap is routine under load; HW slowdown, thermal and power brake mean trouble.",
              [Q(f"max {by} ({_bit(reasons, mask)})", f"{legend} {name}") for mask, name in CLOCK_EVENT_REASONS],
              "none", w=16, h=10,
              mappings=[{"type": "value", "options": {"0": {"text": "-", "color": "transparent", "index": 0},
                                                      "1": {"text": "active", "color": "orange", "index": 1}}}],
              thresholds=thresholds(("transparent", None), ("orange", 1))),
        Panel("stat", "Throttled", "1 while clocks are held down by HW slowdown, SW/HW thermal slowdown or the HW "
              "power brake (the GpuThrottled rule's condition), per GPU.",
              [Q(f"max {by} (clamp_max({throttled}, 1))", legend, instant=True)], "none", w=8, h=10,
              mappings=[{"type": "value", "options": {"0": {"text": "No", "color": "green", "index": 0},
                                                      "1": {"text": "Throttled", "color": "red", "index": 1}}}],
              thresholds=thresholds(("green", None), ("red", 1))),
        Panel("state-timeline", "GPU state", "Whether the sidecar can read each GPU: ok, stale (a read timed "
              "out), unavailable (no driver) or lost (fallen off the bus). A GPU not ok serves no readings.",
              [Q(" + ".join(f'{weight} * max by (instance, gpu) (sidecar_gpu_state{{{I}, gpu=~"$gpu", state="{state}"}})'
                            for weight, state in GPU_STATES), "GPU {{gpu}}")], "none", w=16, h=6,
              mappings=[{"type": "value", "options": {str(weight): {"text": state, "color": color, "index": weight}
                                                      for weight, state, color in GPU_STATE_COLOURS}}],
              thresholds=thresholds(("green", None), ("orange", 1), ("red", 2))),
        Panel("stat", "NVML", "sidecar_nvml_up: 1 while NVML is loaded and answering.",
              [Q(f"min(sidecar_nvml_up{{{I}}})", "NVML", instant=True)], "none", w=8, h=6, mappings=UP_DOWN,
              thresholds=thresholds(("red", None), ("green", 1))),
        Row("Processes"),
        Panel("timeseries", "GPU memory by process", "GPU memory used per process (host PID), as NVML reports it.",
              [Q(f'sum by (gpu, pid) (sidecar_gpu_process_memory_bytes{{{I}, gpu=~"$gpu"}})', "GPU {{gpu}} pid {{pid}}")],
              "bytes", stack=True),
        Panel("timeseries", "SM utilization by process", "Percent of the GPU's SMs a process kept busy over the "
              "last sample period.",
              [Q(f'sum by (gpu, pid) (sidecar_gpu_process_sm_utilization{{{I}, gpu=~"$gpu"}})', "GPU {{gpu}} pid {{pid}}")],
              "percent", min=0),
        Row("Per request ($model)"),
        Panel("timeseries", "Energy per output token", "GPU energy attributed to a request / its output tokens "
              "(sidecar_gpu_energy_per_output_token_joules): mean and P95, by model.",
              [Q(f"sum by (model) (rate(sidecar_gpu_energy_per_output_token_joules_sum{{{USAGE}}}{RATE}))\n/\n"
                 f"sum by (model) (rate(sidecar_gpu_energy_per_output_token_joules_count{{{USAGE}}}{RATE}))",
                 "{{model}} mean"),
               *quantiles("sidecar_gpu_energy_per_output_token_joules", USAGE, "model", (0.95,))], "joule", w=8),
        Panel("timeseries", "GPU-seconds per model call", "GPU busy time (utilisation x wall time) attributed to "
              "model calls / model calls, by model.",
              [Q(f"sum by (model) (rate(sidecar_gpu_seconds_total{{{USAGE}}}{RATE}))\n/\n"
                 f"sum by (model) (label_replace(rate(gen_ai_server_request_duration_seconds_count{{{GENAI}}}{RATE}), "
                 '"model", "$1", "gen_ai_request_model", "(.*)"))', "{{model}}")], "s", w=8),
        Panel("timeseries", "Attributed power", "GPU energy per second charged to requests, by model, beside the "
              "selected GPUs' whole draw (the difference: idle time and work not behind this proxy).",
              [Q(f"sum by (model) (rate(sidecar_gpu_energy_joules_total{{{USAGE}}}{RATE}))", "{{model}}"),
               Q(f"sum(DCGM_FI_DEV_POWER_USAGE{{{GPU}}})", "GPU power draw")], "watt", w=8),
    ]  # fmt: skip
    return dashboard("sidecar-gpu", "inference-sidecar / GPU",
                     "GPU readings under dcgm-exporter's names (from NVML, or dcgm-exporter re-exposed), the GPU "
                     "events, and each request's share of GPU time and energy.", items, hostname=True)  # fmt: skip


def slo() -> dict:
    budget = thresholds(("red", None), ("orange", 0.25), ("green", 0.5))
    burn_windows = (("1h", "5m", 14.4, "page"), ("6h", "30m", 6, "page"), ("1d", "2h", 3, "ticket"),
                    ("3d", "6h", 1, "ticket"))  # fmt: skip
    items: list[Panel | Row] = [
        Row("Objectives"),
        Panel("stat", "Objective", "Each SLO's objective (sidecar_slo_objective_ratio).",
              [Q(f"max by (slo) (sidecar_slo_objective_ratio{{{I}}})", "{{slo}}", instant=True)], "percentunit",
              w=6, h=5, decimals=2, options={"textMode": "value_and_name", "graphMode": "none"}),
        Panel("stat", "SLI over the period", "Good / total requests over each SLO's period: 1 - (1 - objective) x "
              "(1 - budget remaining). For availability, the availability.",
              [Q(f"min by (slo) (1 - (1 - sidecar_slo_objective_ratio{{{I}}}) * (1 - sidecar_slo_error_budget_remaining_ratio{{{I}}}))",
                 "{{slo}}", instant=True)], "percentunit", w=6, h=5, decimals=3,
              options={"textMode": "value_and_name"}),
        Panel("gauge", "Error budget remaining", "Error budget left over each SLO's period: 1 - error ratio / "
              "(1 - objective); negative when overspent.",
              [Q(f"min by (slo) (sidecar_slo_error_budget_remaining_ratio{{{I}}})", "{{slo}}", instant=True)],
              "percentunit", w=6, h=5, min=0, max=1, thresholds=budget),
        Panel("stat", "Alerts", "Alerts of the in-process rules firing and pending now (sidecar_alerts).",
              [Q(f'count(sidecar_alerts{{{I}, alertstate="firing"}}) or vector(0)', "firing", instant=True),
               Q(f'count(sidecar_alerts{{{I}, alertstate="pending"}}) or vector(0)', "pending", instant=True)],
              "short", w=6, h=5, thresholds=thresholds(("green", None), ("red", 1)),
              options={"textMode": "value_and_name", "graphMode": "none"}),
        Row("Burn rates"),
        Panel("timeseries", "Burn rate by window", "Error ratio over each window / error budget; 1 spends the "
              "budget exactly over the period. Lines: 14.4 and 6 (page), 3 and 1 (ticket).",
              [Q(f"max by (slo, window) (sidecar_slo_burn_rate{{{I}}})", "{{slo}} {{window}}")], "short", min=0,
              thresholds=thresholds(("green", None), ("#EAB839", 1), ("orange", 3), ("red", 6), ("dark-red", 14.4)),
              threshold_lines=True),
        Panel("bargauge", "Burn rate now", "The current burn rate per SLO and window.",
              [Q(f"max by (slo, window) (sidecar_slo_burn_rate{{{I}}})", "{{slo}} {{window}}", instant=True)],
              "short", min=0, max=20,
              thresholds=thresholds(("green", None), ("#EAB839", 1), ("orange", 3), ("red", 6), ("dark-red", 14.4))),
        Panel("timeseries", "Multiwindow burn (page and ticket conditions)", "The SRE Workbook's conditions: the "
              "lower of the long and short window's burn rate, beside its threshold. An alert fires when a line "
              "crosses its threshold (14.4: 1h and 5m; 6: 6h and 30m; 3: 1d and 2h; 1: 3d and 6h).",
              [Q(f'min by (slo) (sidecar_slo_burn_rate{{{I}, window=~"{long}|{short}"}}) / {factor}',
                 f"{{{{slo}}}} {severity} {long}/{short} (x{factor})") for long, short, factor, severity in burn_windows],
              "percentunit", min=0, thresholds=thresholds(("green", None), ("red", 1)), threshold_lines=True),
        Panel("timeseries", "Error ratio by window", "Bad / total requests over each window "
              "(sidecar_slo_sli_error_ratio), the SLO's period included.",
              [Q(f"max by (slo, window) (sidecar_slo_sli_error_ratio{{{I}}})", "{{slo}} {{window}}")],
              "percentunit", min=0),
        Panel("timeseries", "Error budget remaining over time", "Error budget left over each SLO's period.",
              [Q(f"min by (slo) (sidecar_slo_error_budget_remaining_ratio{{{I}}})", "{{slo}}")], "percentunit",
              thresholds=budget, threshold_lines=True),
        Row("Alerts"),
        Panel("table", "Active alerts", "Pending and firing alerts of the in-process rules (sidecar_alerts, "
              "Prometheus's ALERTS under the sidecar's name; the sidecar's own instance label becomes "
              "exported_instance). /-/alerts on the admin port has their annotations.",
              [Q(f"sidecar_alerts{{{I}}}", table=True)], "none", w=16,
              transformations=hide_columns("__name__", "job", "Value", "value")),
        Panel("timeseries", "Alerts over time", "Pending and firing alerts by name.",
              [Q(f"count by (alertname, alertstate) (sidecar_alerts{{{I}}})", "{{alertname}} ({{alertstate}})")],
              "short", w=8, min=0, stack=True),
        Row("Evaluator"),
        Panel("timeseries", "Rule evaluation", "How long the last evaluation of every rule took, per sidecar "
              "(evaluated every rules.interval).",
              [Q(f"max by (instance) (sidecar_rule_evaluation_duration_seconds{{{I}}})", "{{instance}}")], "s"),
        Panel("timeseries", "Evaluation failures", "Rule evaluations that failed per second (one per rule per "
              "tick); the rule's error is on /-/alerts.",
              [Q(f"sum by (instance) (rate(sidecar_rule_evaluation_failures_total{{{I}}}{RATE}))", "{{instance}}")],
              "short", min=0),
    ]  # fmt: skip
    return dashboard("sidecar-slo", "inference-sidecar / SLOs and alerts",
                     "SLO objectives, error budgets, multiwindow burn rates and the in-process alerts, from the "
                     "sidecar's sidecar_slo_* and sidecar_alerts series.", items)  # fmt: skip


def audit() -> dict:
    delivered = "sidecar_audit_events_delivered_total"
    items: list[Panel | Row] = [
        Row("Now"),
        Panel("stat", "Events accepted", "Audit events written to the spool per second (they count as recorded "
              "from there on).",
              [Q(f"sum(rate(sidecar_audit_events_accepted_total{{{I}}}{RATE}))", "accepted", instant=True)],
              "suffix: events/s", w=4, h=4),
        Panel("stat", "Sink", "1 when the last delivery attempt reached the sink (Elasticsearch or files); Down "
              "if any selected sidecar's is down.",
              [Q(f"min(sidecar_audit_sink_up{{{I}}})", "sink", instant=True)], "none", w=4, h=4, mappings=UP_DOWN,
              thresholds=thresholds(("red", None), ("green", 1))),
        Panel("gauge", "Spool fill", "Undelivered bytes on disk / audit.spool.max_size. When full, "
              "audit.spool.when_full applies (fail_open drops, fail_closed answers 503).",
              [Q(f"max(sidecar_audit_spool_bytes{{{I}}} / sidecar_audit_spool_limit_bytes{{{I}}})", "fill",
                 instant=True)], "percentunit", w=4, h=4, min=0, max=1,
              thresholds=thresholds(("green", None), ("orange", 0.5), ("red", 0.8))),
        Panel("stat", "Sink lag", "Audit events in the spool not yet delivered.",
              [Q(f"sum(sidecar_audit_spool_events{{{I}}})", "events", instant=True)], "short", w=4, h=4,
              thresholds=thresholds(("green", None), ("orange", 1000), ("red", 100000))),
        Panel("stat", "Dropped", "Audit events lost over the dashboard's range (spool full or queue full under "
              "fail_open, or unencodable).",
              [Q(f"sum(increase(sidecar_audit_events_dropped_total{{{I}}}{RANGE}))", "dropped", instant=True)],
              "short", w=4, h=4, decimals=0, thresholds=thresholds(("green", None), ("red", 1))),
        Panel("stat", "Dead letters", "Audit events the sink refused for good over the dashboard's range (kept in "
              "the dead-letter file).",
              [Q(f'sum(increase({delivered}{{{I}, result="dead_letter"}}{RANGE}))', "dead letters", instant=True)],
              "short", w=4, h=4, decimals=0, thresholds=thresholds(("green", None), ("red", 1))),
        Row("Flow"),
        Panel("timeseries", "Events in and out", "Events accepted into the spool and events leaving it, by "
              "result (stored, duplicate: the sink already held it, dead_letter).",
              [Q(f"sum(rate(sidecar_audit_events_accepted_total{{{I}}}{RATE}))", "accepted"),
               Q(f"sum by (result) (rate({delivered}{{{I}}}{RATE}))", "delivered: {{result}}")],
              "suffix: events/s"),
        Panel("timeseries", "Spool", "Undelivered bytes on disk against audit.spool.max_size.",
              [Q(f"sum by (instance) (sidecar_audit_spool_bytes{{{I}}})", "{{instance}} used"),
               Q(f"sum by (instance) (sidecar_audit_spool_limit_bytes{{{I}}})", "{{instance}} limit")], "bytes",
              min=0),
        Panel("timeseries", "Sink lag over time", "Events in the spool not yet delivered, and events waiting for the spool "
              "writer.",
              [Q(f"sum by (instance) (sidecar_audit_spool_events{{{I}}})", "{{instance}} in spool"),
               Q(f"sum by (instance) (sidecar_audit_queue_events{{{I}}})", "{{instance}} queued")], "short", min=0),
        Panel("timeseries", "Time since last delivery", "Since a batch last reached the sink (no data until one "
              "has).",
              [Q(f"time() - max by (instance) (sidecar_audit_last_delivery_timestamp_seconds{{{I}}} > 0)",
                 "{{instance}}")], "s", min=0),
        Row("Failures"),
        Panel("timeseries", "Retries", "Failed delivery attempts that will be retried, by reason: rejected "
              "(429), server_error, connection.",
              [Q(f"sum by (sink, reason) (rate(sidecar_audit_sink_retries_total{{{I}}}{RATE}))",
                 "{{sink}} {{reason}}")], "suffix: retries/s", w=8, min=0),
        Panel("timeseries", "Drops", "Audit events lost per second, by reason: spool_full, queue_full "
              "(fail_open), encode_error.",
              [Q(f"sum by (reason) (rate(sidecar_audit_events_dropped_total{{{I}}}{RATE}))", "{{reason}}")],
              "suffix: events/s", w=8, min=0),
        Panel("timeseries", "Dead letters per second", "Audit events refused for good per second, by sink.",
              [Q(f'sum by (sink) (rate({delivered}{{{I}, result="dead_letter"}}{RATE}))', "{{sink}}")],
              "suffix: events/s", w=8, min=0),
        Panel("state-timeline", "Sink up", "Per sidecar: whether the last delivery attempt reached the sink.",
              [Q(f"max by (instance) (sidecar_audit_sink_up{{{I}}})", "{{instance}}")], "none", mappings=UP_DOWN,
              thresholds=thresholds(("red", None), ("green", 1))),
        Panel("state-timeline", "Spool full", "1 while the spool is full; the label names the policy then in force.",
              [Q(f"max by (instance, policy) (sidecar_audit_spool_full{{{I}}})", "{{instance}} ({{policy}})")],
              "none",
              mappings=[{"type": "value", "options": {"0": {"text": "room", "color": "green", "index": 0},
                                                      "1": {"text": "full", "color": "red", "index": 1}}}],
              thresholds=thresholds(("green", None), ("red", 1))),
    ]  # fmt: skip
    return dashboard("sidecar-audit", "inference-sidecar / Audit pipeline",
                     "The audit trail's pipeline: events into the spool, delivery to the sink, lag, retries, "
                     "dead letters and drops.", items)  # fmt: skip


def cost() -> dict:
    def over_range(kind: str) -> str:
        return f'sum(increase(sidecar_cost_total{{{COST}, kind="{kind}"}}{RANGE}))'

    money = "none"  # the currency is the sidecar's gpu.cost.currency (see the Currency panel)
    output_tokens_per_1k = (
        f'sum(rate(gen_ai_client_token_usage_sum{{{GENAI}, gen_ai_token_type="output"}}{RATE})) / 1000'
    )
    items: list[Panel | Row] = [
        Row("Over the dashboard's range ($model, $tenant)"),
        Panel("stat", "Local cost", "Electricity and amortised hardware charged to requests over the range.",
              [Q(over_range("local"), "local", instant=True)], money, w=4, h=4, decimals=4),
        Panel("stat", "Cloud equivalent", "What the same tokens would have cost at the configured cloud prices "
              "(gpu.cost.cloud_prices) over the range.",
              [Q(over_range("cloud_equivalent"), "cloud equivalent", instant=True)], money, w=4, h=4, decimals=4),
        Panel("stat", "Saved", "Cloud equivalent less local cost over the range.",
              [Q(f"{over_range('cloud_equivalent')}\n-\n{over_range('local')}", "saved", instant=True)], money, w=4,
              h=4, decimals=4, thresholds=thresholds(("red", None), ("green", 0))),
        Panel("stat", "Payback", "Months for the savings (less electricity), at the last 24 hours' rate, to pay "
              "back gpu.cost.hardware_price (no data without a hardware price or savings).",
              [Q(f"min(sidecar_cost_payback_months{{{I}}})", "payback", instant=True)], "suffix: months", w=4, h=4,
              decimals=1, thresholds=thresholds(("green", None), ("orange", 24), ("red", 36))),
        Panel("stat", "Energy attributed", "GPU energy charged to requests over the range.",
              [Q(f"sum(increase(sidecar_gpu_energy_joules_total{{{USAGE}}}{RANGE})) / 3600000", "energy",
                 instant=True)], "kwatth", w=4, h=4, decimals=3),
        Panel("stat", "Currency", "The currency of every cost on this dashboard (gpu.cost.currency).",
              [Q(f"max by (currency) (sidecar_cost_currency_info{{{I}}})", "{{currency}}", instant=True)], "none",
              w=4, h=4, options={"textMode": "name", "graphMode": "none", "colorMode": "none"}),
        Row("Local against cloud"),
        Panel("timeseries", "Cost per hour", "Local cost and its cloud equivalent, per hour at the current rate.",
              [Q(f"sum by (kind) (rate(sidecar_cost_total{{{COST}}}{RATE})) * 3600", "{{kind}}")], money,
              decimals=4),
        Panel("timeseries", "Cost per 1k output tokens", "Cost of the selected requests / thousand output tokens of "
              "the selected models (the tenant filter applies to the cost only).",
              [Q(f"sum by (kind) (rate(sidecar_cost_total{{{COST}}}{RATE}))\n/ scalar({output_tokens_per_1k})",
                 "{{kind}}")], money, decimals=5),
        Panel("bargauge", "Cost by model", "Local and cloud-equivalent cost per model over the range.",
              [Q(f"sum by (model, kind) (increase(sidecar_cost_total{{{COST}}}{RANGE}))", "{{model}} {{kind}}",
                 instant=True)], money, decimals=4),
        Panel("bargauge", "Cost by tenant", "Local and cloud-equivalent cost per tenant over the range ('none': "
              "unauthenticated).",
              [Q(f"sum by (tenant, kind) (increase(sidecar_cost_total{{{COST}}}{RANGE}))", "{{tenant}} {{kind}}",
                 instant=True)], money, decimals=4),
        Row("Energy"),
        Panel("timeseries", "Attributed power by model", "GPU energy per second charged to requests, by model, "
              "beside the GPUs' whole draw.",
              [Q(f"sum by (model) (rate(sidecar_gpu_energy_joules_total{{{USAGE}}}{RATE}))", "{{model}}"),
               Q(f"sum(DCGM_FI_DEV_POWER_USAGE{{{I}}})", "GPU power draw")], "watt", w=8),
        Panel("stat", "Attributed share of GPU energy", "Energy charged to requests / the GPUs' energy counter's "
              "increase over the range (the rest: time with no request in flight).",
              [Q(f"sum(increase(sidecar_gpu_energy_joules_total{{{I}}}{RANGE}))\n/\n"
                 f"(sum(increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{I}}}{RANGE})) / 1000)", "attributed",
                 instant=True)], "percentunit", w=8, decimals=1),
        Panel("timeseries", "Payback over time", "Months to pay back the hardware at the last 24 hours' savings.",
              [Q(f"min by (instance) (sidecar_cost_payback_months{{{I}}})", "{{instance}}")], "suffix: months",
              w=8),
    ]  # fmt: skip
    return dashboard("sidecar-cost", "inference-sidecar / Cost",
                     "Local serving cost (electricity and amortised hardware) against the cloud-equivalent price of "
                     "the same tokens, payback, and the energy behind it.", items)  # fmt: skip


DASHBOARDS = {
    "overview.json": overview,
    "gpu.json": gpu,
    "slo.json": slo,
    "audit.json": audit,
    "cost.json": cost,
}


def rendered() -> dict[str, str]:
    """File name -> the JSON text this script writes for it."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in rendered().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python dashboards/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
