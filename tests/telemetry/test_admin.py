"""The admin listener: metrics in both exposition formats, liveness, readiness."""

from __future__ import annotations

import asyncio
import shutil

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from tests.conftest import SidecarFactory
from tests.support.tools import closed_port, wait_for
from tests.support.upstream import TestUpstream


async def scrape(url: str, accept: str = "") -> tuple[str, str]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{url}/metrics", headers={"Accept": accept} if accept else {}) as response:
            assert response.status == 200
            return response.headers["Content-Type"], await response.text()


async def test_metrics_parse_in_both_formats_and_count_requests(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        for path in ("/echo", "/echo", "/status/503"):
            async with client.post(f"{sidecar.url}{path}", data=b"abc") as response:
                await response.read()

    content_type, text = await scrape(sidecar.admin_url)
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in parse_prometheus(text)}
    for name in (
        "http_server_request_duration_seconds",
        "http_server_active_requests",
        "sidecar_exchanges",
        "http_server_request_body_size_bytes",
        "http_server_response_body_size_bytes",
        "sidecar_proxy_overhead_seconds",
        "sidecar_upstream_errors",
        "sidecar_client_disconnects",
        "sidecar_build_info",
        "sidecar_upstream_health",
        "sidecar_draining",
        "sidecar_observer_failures",
    ):
        assert name in families, name
    counts = {
        sample.labels["http_response_status_code"]: sample.value
        for sample in families["http_server_request_duration_seconds"].samples
        if sample.name.endswith("_count")
    }
    assert counts == {"200": 2, "503": 1}
    completed = [s.value for s in families["sidecar_exchanges"].samples if s.labels == {"outcome": "completed"} and s.name.endswith("_total")]
    assert completed == [3]
    sizes = families["http_server_request_body_size_bytes"].samples
    assert sum(s.value for s in sizes if s.name.endswith("_sum")) == 9  # by status: 200 and 503
    assert {s.labels["http_route"] for s in sizes} == {"other"}  # /echo is no known route

    content_type, text = await scrape(sidecar.admin_url, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert {family.name for family in parse_openmetrics(text)} >= {"http_server_request_duration_seconds", "sidecar_exchanges"}


async def test_metrics_are_gzipped_when_asked(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.get(f"{sidecar.admin_url}/metrics", headers={"Accept-Encoding": "gzip"}) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert (await response.read())[:2] == b"\x1f\x8b"


async def test_active_requests_gauge_is_live(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)

    def active(text: str) -> float:
        (family,) = [f for f in parse_prometheus(text) if f.name == "http_server_active_requests"]
        return family.samples[0].value

    async with aiohttp.ClientSession() as client:
        slow = asyncio.create_task(client.get(f"{sidecar.url}/slow-start?delay=0.5"))
        await wait_for(lambda: sidecar.sidecar.proxy.active_requests == 1, what="the request in flight")
        assert active((await scrape(sidecar.admin_url))[1]) == 1
        (await slow).release()
    assert active((await scrape(sidecar.admin_url))[1]) == 0


async def test_healthy_index_and_unwritable_data_dir(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.admin_url}/-/healthy") as response:
            assert response.status == 200 and (await response.json())["status"] == "healthy"
        async with client.get(f"{sidecar.admin_url}/") as response:
            assert "/metrics" in (await response.json())["endpoints"]
        shutil.rmtree(sidecar.sidecar.config.data_dir)
        async with client.get(f"{sidecar.admin_url}/-/ready") as response:
            assert response.status == 503
            assert "not writable" in (await response.json())["checks"]["data_dir"]
        # The admin port is not the proxy: its paths are not forwarded upstream.
        async with client.get(f"{sidecar.url}/-/healthy") as response:
            assert response.status == 404
    assert upstream.requests == []


async def test_http_series_carry_the_attributes_the_conventions_require(upstream: TestUpstream, make_sidecar: SidecarFactory, tmp_path):
    sidecar = await make_sidecar(upstream.url)
    unreachable = await make_sidecar(f"http://127.0.0.1:{closed_port()}", data_dir=str(tmp_path / "unreachable"))
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{sidecar.url}/echo?x=1", data=b"abc") as response:
            await response.read()
        async with client.get(f"{sidecar.url}/status/503") as response:
            await response.read()
        async with client.get(f"{unreachable.url}/echo") as response:
            assert response.status == 502
        slow = asyncio.create_task(client.get(f"{sidecar.url}/slow-start?delay=0.5"))
        await wait_for(lambda: sidecar.sidecar.proxy.active_requests == 1, what="the request in flight")
        text = (await scrape(sidecar.admin_url))[1]
        (await slow).release()
        unreachable_text = (await scrape(unreachable.admin_url))[1]
    families = {family.name: family for family in parse_prometheus(text)}
    failed = {family.name: family for family in parse_prometheus(unreachable_text)}
    error_type = unreachable.exchanges[0].error_type
    assert error_type
    for name in ("http_server_request_duration_seconds", "http_server_request_body_size_bytes",
                 "http_server_response_body_size_bytes"):  # fmt: skip
        counts = sorted((s.labels for s in families[name].samples if s.name.endswith("_count")), key=str)
        assert counts == [
            {"http_request_method": "GET", "url_scheme": "http", "http_response_status_code": "503",
             "http_route": "other", "error_type": ""},
            {"http_request_method": "POST", "url_scheme": "http", "http_response_status_code": "200",
             "http_route": "other", "error_type": ""},
        ], name  # fmt: skip
        (count,) = [s.labels for s in failed[name].samples if s.name.endswith("_count")]
        assert count == {"http_request_method": "GET", "url_scheme": "http", "http_response_status_code": "502",
                         "http_route": "other", "error_type": error_type}, name  # fmt: skip
    active = [(s.labels, s.value) for s in families["http_server_active_requests"].samples]
    assert active == [({"http_request_method": "GET", "url_scheme": "http"}, 1.0)]
