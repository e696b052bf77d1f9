"""Authentication and rate limits on a running sidecar: who passes, who gets 401/403/429,
what the upstream and the audit trail see."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.audit.sinks import audit_files, read_documents
from sidecar.proxy.auth.keys import new_key
from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.credentials import Credentials, make_credentials, unsigned_token
from tests.support.tools import serve_on_loopback, wait_for
from tests.support.upstream import TestUpstream


@pytest.fixture
def credentials(tmp_path: Path) -> Credentials:
    return make_credentials(tmp_path / "credentials")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers=headers) as response:
            body = await response.read()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body
            return response.status, dict(response.headers), parsed


def _audit_documents(running: RunningSidecar) -> list[dict[str, Any]]:
    return list(read_documents(audit_files(running.sidecar.config.data_dir / "audit" / "events")))


async def test_valid_key_and_jwts_pass_with_the_principal_and_without_the_credential_upstream(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(upstream.url, **credentials.auth_settings())
    presented = {
        "api_key": _bearer(credentials.keys["acme-1"]),
        "x_api_key": {"X-API-Key": credentials.keys["acme-1"]},
        "hs256": _bearer(credentials.hs256(tenant="initech", sub="bob", tier="paid")),
        "rs256_jwks": _bearer(credentials.rs256(tenant="initech", sub="bob", jti="tok-9")),
        "es256_jwks": _bearer(credentials.es256(tenant="initech", sub="bob")),
    }
    for name, headers in presented.items():
        status, _, body = await _get(f"{running.url}/echo/{name}", headers)
        assert status == 200, (name, body)
        forwarded = {key.lower() for key, _ in body["headers"]}
        assert "authorization" not in forwarded and "x-api-key" not in forwarded, name
    principals = {exchange.path.rsplit("/", 1)[1]: exchange.principal for exchange in running.exchanges}
    assert principals["api_key"].tenant == "acme" and principals["api_key"].credential_id == "acme-1"
    assert principals["api_key"].auth_method == "api_key" and principals["api_key"].tier == "paid"
    assert principals["rs256_jwks"].tenant == "initech" and principals["rs256_jwks"].user == "bob"
    assert principals["rs256_jwks"].auth_method == "jwt" and principals["rs256_jwks"].credential_id == "tok-9"
    assert principals["hs256"].tier == "paid"


async def test_refused_credentials_get_401_and_an_audit_event_without_the_token(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(upstream.url, **credentials.auth_settings())
    bad = {
        "expired": credentials.rs256(exp=int(time.time()) - 600),
        "bad_signature": credentials.hs256(secret="not-the-shared-secret-but-32-bytes-long"),
        "wrong_audience": credentials.rs256(aud="billing"),
        "algorithm_not_allowed": unsigned_token(),
        "unknown_kid": credentials.rs256(kid="gone"),
        "unknown_key": "sk-sidecar-" + "A" * 43,
    }
    for reason, token in bad.items():
        status, headers, body = await _get(f"{running.url}/echo/{reason}", _bearer(token))
        assert status == 401, reason
        assert headers["WWW-Authenticate"].startswith('Bearer realm="inference-sidecar", error="invalid_token"')
        assert body["error"]["type"] == "unauthenticated"
    status, headers, _ = await _get(f"{running.url}/echo/missing")
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="inference-sidecar"'
    assert upstream.requests == []

    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.admin_url}/metrics") as response:
            exposition = await response.text()
    for reason in [*bad, "missing"]:
        assert f'sidecar_auth_failures_total{{reason="{reason}"}} 1.0' in exposition
    assert 'sidecar_tenant_requests_total{result="unauthenticated",tenant="none"} 7.0' in exposition

    await running.sidecar.stop()
    documents = [doc for doc in _audit_documents(running) if doc["event"]["action"] == "http-request"]
    assert len(documents) == 7
    for doc in documents:
        assert (doc["event"]["category"], doc["event"]["type"]) == (["authentication"], ["start"])
        assert doc["event"]["outcome"] == "failure"
        assert doc["http"]["response"]["status_code"] == 401
    stored = json.dumps(documents)
    for token in bad.values():
        assert token not in stored
        signature = token.rsplit(".", 1)[-1]
        assert not signature or signature not in stored  # not even the signature part


async def test_a_model_outside_the_allowlist_gets_403(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(upstream.url, **credentials.auth_settings())
    headers = _bearer(credentials.keys["globex-1"])
    async with aiohttp.ClientSession() as client:
        for model, expected in (("small-model", 200), ("big-model", 403)):
            async with client.post(f"{running.url}/v1/chat/completions", headers=headers,
                                   json={"model": model, "messages": []}) as response:  # fmt: skip
                assert response.status == expected, model
                if expected == 403:
                    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
                    assert (await response.json())["error"]["type"] == "forbidden"
        # Large bodies are streamed: the model is read from the first peek bytes before anything is sent.
        big = json.dumps({"model": "big-model", "messages": [{"role": "user", "content": "x" * 200_000}]})
        async with client.post(f"{running.url}/v1/chat/completions", headers={**headers, "Content-Type": "application/json"},
                               data=big.encode()) as response:  # fmt: skip
            assert response.status == 403
        # A second "model" key wins in the model server's JSON parser, so it must win here too,
        # however far into a large body it sits.
        smuggled = b'{"model": "small-model", "messages": [{"content": "' + b"x" * 300_000 + b'"}], "model": "big-model"}'
        async with client.post(f"{running.url}/v1/chat/completions", headers={**headers, "Content-Type": "application/json"},
                               data=smuggled) as response:  # fmt: skip
            assert response.status == 403
            assert "big-model" in (await response.json())["error"]["message"]
    served = [exchange for exchange in running.exchanges if exchange.status == 200]
    assert [exchange.gen_ai.request_model for exchange in served if exchange.gen_ai] == ["small-model"]


async def test_the_model_allowlist_holds_when_model_calls_are_not_read(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(upstream.url, **credentials.auth_settings(), llm__enabled=False)
    headers = _bearer(credentials.keys["globex-1"])
    big = json.dumps({"model": "big-model", "messages": [{"role": "user", "content": "x" * 200_000}]}).encode()
    async with aiohttp.ClientSession() as client:
        for body in (json.dumps({"model": "big-model", "messages": []}).encode(), big):
            async with client.post(f"{running.url}/v1/chat/completions", data=body,
                                   headers={**headers, "Content-Type": "application/json"}) as response:  # fmt: skip
                assert response.status == 403, len(body)


@pytest.mark.parametrize(
    ("mode", "expected"), [("strip", None), ("pass", "client"), ("replace", "Bearer model-server-token")]
)
async def test_upstream_authorization_is_stripped_passed_or_replaced(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials, mode: str, expected: str | None
) -> None:
    running = await make_sidecar(
        upstream.url,
        **credentials.auth_settings(auth__upstream_authorization=mode, auth__upstream_token="model-server-token"),
    )
    client_header = f"Bearer {credentials.keys['acme-1']}"
    status, _, body = await _get(f"{running.url}/echo/x", {"Authorization": client_header})
    assert status == 200
    forwarded = dict((key.lower(), value) for key, value in body["headers"]).get("authorization")
    assert forwarded == (client_header if expected == "client" else expected)


async def test_a_burst_past_the_bucket_gets_429_and_other_tenants_are_unaffected(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    credentials.write_keys(
        [{"id": "a", "key": new_key(), "tenant": "tenant-a", "tier": "small"},
         {"id": "b", "key": new_key(), "tenant": "tenant-b", "tier": "small"}]  # fmt: skip
    )
    running = await make_sidecar(
        upstream.url,
        **credentials.auth_settings(),
        limits__enabled=True,
        limits__tiers={"small": {"requests": "10/s", "request_burst": 5}},
    )
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one(key: str) -> tuple[int, dict[str, str]]:
            async with client.get(f"{running.url}/echo/burst", headers=_bearer(key)) as response:
                await response.read()
                return response.status, dict(response.headers)

        started = time.monotonic()
        results = await asyncio.gather(*(one(credentials.keys["a"]) for _ in range(50)))
        elapsed = time.monotonic() - started
        statuses = Counter(status for status, _ in results)
        # 5 from the burst; the bucket refills at 10/s while the 50 are answered.
        assert 5 <= statuses[200] <= 5 + int(10 * elapsed), (statuses, elapsed)
        assert statuses[429] == 50 - statuses[200]
        refused = next(headers for status, headers in results if status == 429)
        assert int(refused["Retry-After"]) >= 1
        assert 0 < int(refused["retry-after-ms"]) <= 1000
        assert refused["x-ratelimit-limit-requests"] == "5"
        assert refused["x-ratelimit-remaining-requests"] == "0"

        status, headers = await one(credentials.keys["b"])
        assert status == 200
        assert headers["x-ratelimit-remaining-requests"] == "4"

        await asyncio.sleep(0.25)
        assert (await one(credentials.keys["a"]))[0] == 200

    rejected = [exchange for exchange in running.exchanges if exchange.status == 429]
    assert len(rejected) == statuses[429]
    assert {exchange.error_type for exchange in rejected} == {"rate_limited"}
    assert {exchange.principal.tenant for exchange in rejected} == {"tenant-a"}
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.admin_url}/metrics") as response:
            exposition = await response.text()
    assert f'sidecar_rate_limit_rejections_total{{limit="requests"}} {float(statuses[429])}' in exposition
    assert f'sidecar_tenant_requests_total{{result="rate_limited",tenant="tenant-a"}} {float(statuses[429])}' in exposition


async def test_anonymous_callers_are_limited_by_client_ip_under_the_default_tier(
    make_sidecar: SidecarFactory, upstream: TestUpstream
) -> None:
    running = await make_sidecar(
        upstream.url,
        limits__enabled=True,
        limits__tiers={"anonymous": {"requests": "1/min", "request_burst": 2}},
        limits__default_tier="anonymous",
    )
    statuses = [(await _get(f"{running.url}/echo/{n}"))[0] for n in range(3)]
    assert statuses == [200, 200, 429]
    assert running.exchanges[-1].principal.is_anonymous


async def _streaming_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"model": "m", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 20}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n')
        await release.wait()
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, port = await serve_on_loopback(app)
    try:
        yield f"http://127.0.0.1:{port}", release
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
async def streaming_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    async for pair in _streaming_upstream():
        yield pair


async def test_concurrent_streams_are_capped_per_tenant(
    make_sidecar: SidecarFactory, streaming_upstream: tuple[str, asyncio.Event], credentials: Credentials
) -> None:
    url, release = streaming_upstream
    running = await make_sidecar(
        url, **credentials.auth_settings(), limits__enabled=True, limits__tiers={"paid": {"concurrent_streams": 1}}
    )
    headers = _bearer(credentials.keys["acme-1"])
    chat = f"{running.url}/v1/chat/completions"
    async with aiohttp.ClientSession() as client:
        first = await client.post(chat, headers=headers, json={"model": "m", "stream": True})
        assert first.status == 200
        await first.content.readuntil(b"\n\n")
        async with client.post(chat, headers=headers, json={"model": "m", "stream": True}) as second:
            assert second.status == 429
            assert "stream" in (await second.json())["error"]["message"]
        async with client.post(chat, headers=headers, json={"model": "m"}) as unstreamed:
            assert unstreamed.status == 200  # only streams count against the cap
        release.set()
        await first.read()
        first.release()
        await wait_for(lambda: running.sidecar.proxy.active_requests == 0, what="the stream to finish")
        async with client.post(chat, headers=headers, json={"model": "m", "stream": True}) as third:
            assert third.status == 200
            await third.read()


async def test_token_usage_is_charged_and_refuses_once_spent(
    make_sidecar: SidecarFactory, streaming_upstream: tuple[str, asyncio.Event], credentials: Credentials
) -> None:
    url, _ = streaming_upstream
    running = await make_sidecar(
        url,
        **credentials.auth_settings(),
        limits__enabled=True,
        limits__tiers={"paid": {"tokens": "60/min", "token_burst": 60}},
    )
    headers = _bearer(credentials.keys["acme-1"])
    statuses = []
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.post(f"{running.url}/v1/chat/completions", headers=headers, json={"model": "m"}) as response:
                statuses.append(response.status)
                last = dict(response.headers)
                await response.read()
    # 60 tokens of burst, 50 per answer: the second answer puts the bucket in debt.
    assert statuses == [200, 200, 429]
    assert last["x-ratelimit-limit-tokens"] == "60"
    assert int(last["Retry-After"]) >= 30


async def test_repeated_failures_from_one_address_are_throttled(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(
        upstream.url, **credentials.auth_settings(auth__failure_throttle__max_failures=3, auth__failure_throttle__window="1m")
    )
    statuses = [(await _get(f"{running.url}/echo/x", _bearer("sk-guess-" + str(n))))[0] for n in range(3)]
    assert statuses == [401, 401, 401]
    status, headers, body = await _get(f"{running.url}/echo/x", _bearer(credentials.keys["acme-1"]))
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert "failed authentication" in body["error"]["message"]


async def test_a_key_added_to_the_file_is_accepted_without_a_restart(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(upstream.url, **credentials.auth_settings())
    added = new_key()
    assert (await _get(f"{running.url}/echo/x", _bearer(added)))[0] == 401
    credentials.write_keys([{"id": "new", "key": added, "tenant": "newco"}])
    deadline = time.monotonic() + 8
    while (await _get(f"{running.url}/echo/x", _bearer(added)))[0] != 200:
        assert time.monotonic() < deadline, "the changed key file was not picked up"
        await asyncio.sleep(0.2)
    assert running.exchanges[-1].principal.tenant == "newco"


async def test_exempt_paths_pass_without_credentials(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(upstream.url, **credentials.auth_settings(auth__exempt_paths=["/health"]))
    assert (await _get(f"{running.url}/health"))[0] == 200
    for sneaky in ("/health/../echo/x", "//health", "/health/./"):
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{running.url}{sneaky}", skip_auto_headers=()) as response:
                assert response.status == 401, sneaky


async def test_a_reload_keeps_bucket_levels_and_failure_counts(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(
        upstream.url, **credentials.auth_settings(), limits__enabled=True,
        limits__tiers={"paid": {"requests": "1/min", "request_burst": 2}},
    )  # fmt: skip
    key = _bearer(credentials.keys["acme-1"])
    assert [(await _get(f"{running.url}/echo/{n}", key))[0] for n in range(3)] == [200, 200, 429]
    assert (await _get(f"{running.url}/echo/x", _bearer("sk-wrong")))[0] == 401

    config = running.sidecar.config
    reloaded = config.model_copy(
        update={
            "auth": config.auth.model_copy(update={"realm": "renamed"}),
            "limits": config.limits.model_copy(update={"tiers": {"paid": config.limits.tiers["paid"].model_copy(update={"request_burst": 10})}}),
        }
    )
    running.sidecar.apply_live(reloaded)
    # The spent bucket stays spent (a reload is not a way to refill it); the new burst only caps it.
    assert (await _get(f"{running.url}/echo/y", key))[0] == 429
    status, headers, _ = await _get(f"{running.url}/echo/x", _bearer("sk-wrong"))
    assert status == 401 and 'realm="renamed"' in headers["WWW-Authenticate"]
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{running.admin_url}/metrics") as response:
            assert 'sidecar_auth_failures_total{reason="unknown_key"} 2.0' in await response.text()


async def test_credential_bytes_that_are_not_utf8_get_401_not_500(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials
) -> None:
    running = await make_sidecar(upstream.url, **credentials.auth_settings())
    for header in (b"Authorization: Bearer sk-\xff\xfe", b"X-API-Key: \xc3\x28key"):
        reader, writer = await asyncio.open_connection("127.0.0.1", running.sidecar.proxy_address.port)
        writer.write(b"GET /echo/x HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:80]


@pytest.mark.parametrize(("per", "second_key_status"), [("tenant", 429), ("credential", 200)])
async def test_buckets_are_per_tenant_or_per_credential(
    make_sidecar: SidecarFactory, upstream: TestUpstream, credentials: Credentials, per: str, second_key_status: int
) -> None:
    credentials.write_keys(
        [{"id": "one", "key": new_key(), "tenant": "shared", "tier": "t"},
         {"id": "two", "key": new_key(), "tenant": "shared", "tier": "t"}]  # fmt: skip
    )
    running = await make_sidecar(
        upstream.url, **credentials.auth_settings(), limits__enabled=True, limits__per=per,
        limits__tiers={"t": {"requests": "1/min", "request_burst": 1}},
    )  # fmt: skip
    assert (await _get(f"{running.url}/echo/a", _bearer(credentials.keys["one"])))[0] == 200
    assert (await _get(f"{running.url}/echo/b", _bearer(credentials.keys["one"])))[0] == 429
    assert (await _get(f"{running.url}/echo/c", _bearer(credentials.keys["two"])))[0] == second_key_status
