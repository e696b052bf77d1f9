"""The Grafana dashboards in dashboards/: well formed, current with dashboards/generate.py, and every
panel query answered with data by a real Prometheus scraping a running sidecar.

The live test runs the demo model server, a sidecar in front of it (simulated H100, cost prices, an
injected XID so the XID panels and an alert have something to show, a GPU process), and Prometheus
scraping the sidecar's admin port every second. Then, for every target of every panel, it puts the
test's values in for the dashboard variables and Grafana's built-in intervals, and requires an
instant query to succeed with a non-empty result; and every metric name a query reads must be one
the sidecar serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.demo.server import DEFAULT_MODEL_NAME as MODEL
from sidecar.demo.traffic import send_burst
from sidecar.testing.nvml import FakeNvml
from tests.conftest import SidecarFactory
from tests.support.demo import DemoProcess, start_demo
from tests.support.prometheus import (
    prometheus_log,
    query_exemplars,
    query_response,
    start_prometheus,
    stop_prometheus,
)

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
QUERY_VARIABLES = ("instance", "model", "tenant", "gpu")
EXEMPLAR_HISTOGRAMS = (
    "http_server_request_duration_seconds",
    "gen_ai_server_request_duration_seconds",
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
)
# Grafana's unit ids the dashboards may use (packages/grafana-data/src/valueFormats/categories.ts),
# besides custom "suffix:<text>" units.
GRAFANA_UNITS = frozenset({
    "none", "short", "percent", "percentunit", "s", "ms", "reqps", "ops", "cps", "bytes", "decbytes", "decmbytes",
    "KBs", "Bps", "watt", "kwatth", "joule", "celsius", "hertz", "currencyUSD", "dtdurations",
})  # fmt: skip
# Grafana's built-in intervals and the test's stand-ins: short windows, so that a rate over a
# minute of 1 s scrapes has samples.
BUILTINS = {"__rate_interval": "30s", "__interval": "5s", "__range": "2m"}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in dashboard["templating"]["list"] if v["name"] == name), None)


def variable_query(var: dict[str, Any]) -> str:
    query = var["query"]
    return query["query"] if isinstance(query, dict) else query


_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def substitute(text: str, values: dict[str, str]) -> str:
    """Grafana's interpolation for the names in `values`; others (e.g. label_replace's "$1") stay as written."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(replace, text)


def referenced_variables(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _VARIABLE.finditer(text)}


_PROMQL_WORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "atan2",
})  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, aggregations,
    keywords, label names (in matchers or grouping clauses), strings, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        if re.match(r"\s*\(", text[match.end():]) or name.lower() in _PROMQL_WORDS:
            continue
        names.add(name)
    return names


def served_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition can give: family names, sample names, and the
    names a family's type implies (a counter with no children yet still answers `_total` queries)."""
    implied = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "summary": ("_count", "_sum"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in implied.get(family.type, ()))
    return names


# --- structure (fast) -----------------------------------------------------------------------------


def test_the_dashboards_are_what_generate_py_writes():
    rendered = load_generator().rendered()
    on_disk = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert set(on_disk) == set(rendered), "dashboards/*.json and dashboards/generate.py name different files"
    stale = [name for name, text in rendered.items() if on_disk[name] != text]
    assert not stale, f"out of date: {stale}; run python dashboards/generate.py"


def test_the_five_dashboards_exist_with_unique_uids():
    dashboards = load_dashboards()
    assert set(dashboards) == {"overview.json", "gpu.json", "slo.json", "audit.json", "cost.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids), uids
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles), titles


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_dashboard_structure(name: str):
    dashboard = load_dashboards()[name]
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40 and dashboard["title"]
    assert "inference-sidecar" in dashboard["tags"]
    assert dashboard.get("id") is None, "exported dashboards carry no database id"

    datasource = variable(dashboard, "datasource")
    assert datasource is not None and datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for name_ in QUERY_VARIABLES:
        var = variable(dashboard, name_)
        assert var is not None, f"{name}: no {name_} variable"
        assert var["type"] == "query" and var["datasource"]["uid"] == "${datasource}"
        assert variable_query(var).startswith("label_values("), var
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*", f"{name}: {name_}"
        assert referenced_variables(variable_query(var)) <= defined

    panel_ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(set(panel_ids)) == len(panel_ids), f"{name}: duplicate panel ids"

    occupied: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, (name, panel["title"], grid)
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{name}: {panel['title']!r} overlaps {occupied[(x, y)]!r}"
                occupied[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
        assert panel.get("description"), f"{name}: {panel['title']!r} has no description"
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in GRAFANA_UNITS or (unit or "").startswith("suffix:"), (name, panel["title"], unit)
        assert panel.get("targets"), f"{name}: {panel['title']!r} has no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), (name, panel["title"])

    latency_targets = 0
    for panel, target in targets(dashboard):
        where = f"{name}: {panel['title']!r} {target['refId']}"
        assert target["datasource"]["uid"] == "${datasource}", where
        expr = target["expr"]
        assert referenced_variables(expr) <= defined | set(BUILTINS) | {"1"}, where
        assert 'instance=~"$instance"' in expr, f"{where}: not narrowed to the selected sidecars"
        assert metric_names(expr), f"{where}: reads no metric"
        if panel["type"] == "timeseries" and any(f"{h}_bucket" in expr for h in EXEMPLAR_HISTOGRAMS):
            assert target["exemplar"] is True, f"{where}: a latency panel without exemplars"
            latency_targets += 1
    if name == "overview.json":
        assert latency_targets >= 9, "request latency, TTFT, TPOT and model-call duration ask for exemplars"


def test_metric_names_are_found_in_queries():
    assert metric_names('sum by (le) (rate(x_bucket{a=~"$b", c="d"}[5m]))') == {"x_bucket"}
    assert metric_names("time() - max by (i) (last_ts > 0)") == {"last_ts"}
    assert metric_names('label_replace(rate(y_count[1m]), "m", "$1", "l", "(.*)") / on (m) group_left z') == {
        "y_count", "z"}  # fmt: skip
    assert metric_names("floor(DCGM_FI_X{gpu=~\"0\"} / 8) % 2 + 1e6 * up or vector(0)") == {"DCGM_FI_X", "up"}


# --- live: every panel against Prometheus scraping a sidecar -------------------------------------


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoProcess]:
    yield from start_demo()


CLOUD_PRICES = {"default": {"input_per_1k": 0.015, "output_per_1k": 0.025, "per_request": 0.001}}


async def _traffic(url: str, stop: asyncio.Event, trace_ids: set[str]) -> None:
    """Mixed traffic in every protocol, and a streamed chat in a sampled trace (whose id becomes the
    latency histograms' exemplar), until told to stop."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about GPUs."}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": 16}  # fmt: skip
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            trace_id = os.urandom(16).hex()
            trace_ids.add(trace_id)
            headers = {"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}
            async with client.post(f"{url}/v1/chat/completions", json=chat, headers=headers) as response:
                await response.read()
            # The burst's calls start traces of their own: their ids may be exemplars too.
            trace_ids.update(sent.trace_id for sent in await send_burst(url, MODEL))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def _unserved_metrics(client: aiohttp.ClientSession, admin_url: str, dashboards: dict[str, dict]) -> list[str]:
    """Metric names the dashboards' queries (variables included) read that the sidecar's /metrics lacks."""
    async with client.get(f"{admin_url}/metrics") as response:
        served = served_names(await response.text())
    read = [
        (f"{name} / {panel['title']} {t['refId']}", t["expr"])
        for name, dashboard in dashboards.items()
        for panel, t in targets(dashboard)
    ] + [
        (f"{name} / variable {var['name']}", _label_values_as_promql(variable_query(var)))
        for name, dashboard in dashboards.items()
        for var in dashboard["templating"]["list"]
        if var["type"] == "query"
    ]
    return sorted(f"{where}: {metric}" for where, expr in read for metric in metric_names(expr) - served)


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_every_panel_query_returns_data(demo: DemoProcess, make_sidecar: SidecarFactory, tmp_path: Path):
    dashboards = load_dashboards()
    nvml = FakeNvml(1, pcie_delay=0.0)  # what gpu.nvml.simulate: 1 reads, with XIDs on demand
    nvml.add_process(0, pid=os.getpid(), used_memory_bytes=4 << 30, sm_util=35)
    sidecar = await make_sidecar(
        demo.url,
        nvml=nvml,
        upstream__health__enabled=True,
        upstream__health__interval="1s",
        upstream__health__timeout="500ms",
        gpu__cost__hardware_price=30000,
        gpu__cost__cloud_prices=CLOUD_PRICES,
    )
    target = sidecar.admin_url.removeprefix("http://")
    prometheus, prometheus_url = start_prometheus(tmp_path, target)
    stop = asyncio.Event()
    trace_ids: set[str] = set()
    traffic = asyncio.create_task(_traffic(sidecar.url, stop, trace_ids))
    started = time.time()
    values = {
        **BUILTINS,
        "instance": target,
        "model": MODEL,
        "tenant": "none",  # no authentication: every cost series is tenant "none"
        "gpu": "0",
        "Hostname": socket.gethostname() or ".*",
        "datasource": "prometheus",
    }
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:
            deadline = time.monotonic() + 20
            while True:  # Prometheus up and scraping the sidecar
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    body = await query_response(client, prometheus_url, 'up{job="sidecar"} == 1')
                    if body.get("status") == "success" and body["data"]["result"]:
                        break
                assert time.monotonic() < deadline, f"Prometheus did not scrape the sidecar:\n{prometheus_log(tmp_path)}"
                await asyncio.sleep(0.25)
            # An XID (Graphics Engine Exception): the XID panels get a series, and GpuXidError fires.
            nvml.inject_xid(0, 13)

            # Every metric a query names is one the sidecar serves (some appear only after the first
            # requests, the first cost, the XID: polled briefly).
            deadline = time.monotonic() + 15
            while unserved := await _unserved_metrics(client, sidecar.admin_url, dashboards):
                assert time.monotonic() < deadline, "metrics the sidecar does not serve:\n" + "\n".join(unserved)
                await asyncio.sleep(0.5)

            # Every target and variable, retried until it has data or the deadline passes: rate()
            # windows need two scrapes with traffic between them, the XID and the alert a moment.
            pending = {
                (name, panel["title"], t["refId"]): substitute(t["expr"], values)
                for name, dashboard in dashboards.items()
                for panel, t in targets(dashboard)
            }
            for name, dashboard in dashboards.items():
                for var in dashboard["templating"]["list"]:
                    if var["type"] == "query":
                        pending[(name, f"variable {var['name']}", "")] = _variable_check(var, values)
            answers: dict[tuple[str, str, str], str] = {}
            deadline = time.monotonic() + 40
            while pending and time.monotonic() < deadline:
                for key, expr in list(pending.items()):
                    body = await query_response(client, prometheus_url, expr)
                    if body.get("status") != "success":
                        answers[key] = f"{body.get('errorType')}: {body.get('error')}"
                    elif body["data"]["result"]:
                        del pending[key]
                    else:
                        answers[key] = "empty result"
                if pending:
                    await asyncio.sleep(1)
            failures = [f"{name} / {title} {ref}: {answers.get((name, title, ref))}\n    {expr}"
                        for (name, title, ref), expr in pending.items()]  # fmt: skip
            assert not failures, (
                f"{len(failures)} panel queries returned no data:\n" + "\n".join(failures)
                + f"\nPrometheus log:\n{prometheus_log(tmp_path)}"
            )

            # Exemplars: what Grafana asks for on latency panels leads to the traced requests. The
            # traffic stops first, so every trace id it started is known before they are compared.
            stop.set()
            await asyncio.wait_for(traffic, 30)
            no_exemplars = []
            for name, dashboard in dashboards.items():
                for panel, t in targets(dashboard):
                    if not t.get("exemplar"):
                        continue
                    found = await query_exemplars(
                        client, prometheus_url, substitute(t["expr"], values), started - 5, time.time() + 1
                    )
                    ids = {e["labels"].get("trace_id") for series in found for e in series["exemplars"]}
                    if not ids & trace_ids or not ids <= trace_ids:
                        no_exemplars.append(f"{name} / {panel['title']} {t['refId']}: {sorted(ids)[:3]}")
            assert not no_exemplars, "latency targets without the requests' trace ids as exemplars:\n" + "\n".join(
                no_exemplars
            )
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(traffic, 10)
        stop_prometheus(prometheus)


def _label_values_as_promql(query: str) -> str:
    """`label_values(selector, label)` as the PromQL that lists the same values: `count by (label) (selector)`."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip(), re.S)
    assert match is not None, f"expected label_values(selector, label), got {query!r}"
    return f"count by ({match.group(2)}) ({match.group(1)})"


def _variable_check(var: dict[str, Any], values: dict[str, str]) -> str:
    """A query that is non-empty only when the variable would offer the value the test selects."""
    promql = substitute(_label_values_as_promql(variable_query(var)), values)
    label = re.fullmatch(r"count by \((\w+)\) .*", promql, re.S).group(1)  # type: ignore[union-attr]
    return f'{promql} and on ({label}) label_replace(vector(1), "{label}", "{values[var["name"]]}", "", "")'
