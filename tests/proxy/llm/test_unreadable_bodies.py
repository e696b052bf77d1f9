"""Bodies the sidecar cannot read pass through untouched and are recorded as unparsed."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.exchange import Outcome
from tests.conftest import SidecarFactory
from tests.support.upstream import FAULTS, TestUpstream


@pytest.mark.parametrize(
    "fault, reason",
    [
        ("malformed-json", "response body is not JSON"),
        ("truncated-sse", "stream ended inside an event"),
        ("invalid-utf8", "1 stream event(s) were not valid JSON"),
        ("huge-line", "1 stream line(s) over the parse limit were not read"),
    ],
)
async def test_unreadable_answer_passes_byte_identical_and_is_recorded(upstream: TestUpstream, make_sidecar: SidecarFactory, fault, reason):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.post(
            f"{sidecar.url}/v1/chat/completions", data=b'{"model": "m", "stream": true}', headers={"X-Fault": fault}
        ) as response:
            received = await response.read()
        async with client.get(f"{sidecar.admin_url}/metrics") as metrics:
            text = await metrics.text()
    assert hashlib.sha256(received).digest() == hashlib.sha256(FAULTS[fault]).digest()
    (exchange,) = sidecar.exchanges
    assert exchange.outcome is Outcome.COMPLETED and exchange.status == 200
    assert exchange.gen_ai is not None and reason in exchange.gen_ai.parse_error
    assert exchange.gen_ai.request_model == "m"
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "sidecar_gen_ai_unparsed"]
    assert [s.value for s in family.samples if s.name.endswith("_total")] == [1]


async def test_unreadable_request_body_is_recorded_and_forwarded(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{sidecar.url}/v1/chat/completions", data=b"\xff{not json", headers={"X-Fault": "malformed-json"}) as response:
            assert response.status == 200
    call = sidecar.exchanges[0].gen_ai
    assert call.parse_error.startswith("request body is not JSON")
    assert call.request_model is None


async def test_a_deeply_nested_request_body_still_yields_its_exchange(upstream: TestUpstream, make_sidecar: SidecarFactory):
    sidecar = await make_sidecar(upstream.url)
    nested = b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{sidecar.url}/v1/chat/completions", data=nested, headers={"X-Fault": "malformed-json"}) as response:
            assert response.status == 200
    (exchange,) = sidecar.exchanges
    assert exchange.gen_ai.parse_error.startswith("request body is not JSON: RecursionError")
