"""Fifty planted secrets and personal values, sent every way a client can: none may reach any sink or log.

A real sidecar process runs with the access log on, spans printed to its log
(console exporter), bodies kept (`audit.content: redacted`) and audit records
going to Elasticsearch (the stand-in) or to files. The upstream echoes the
request headers back in its body, so credentials also travel in responses.
Afterwards every byte the sidecar wrote (log, spool, audit files, dead
letters, the index) is searched for each planted value.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import aiohttp
import pytest

from sidecar.testing.elastic import ElasticsearchStandIn
from tests.support.process import SidecarProcess
from tests.support.tools import wait_for
from tests.support.upstream import TestUpstream

pytestmark = pytest.mark.integration


WRITE_EVERYTHING = {
    "SIDECAR_LOG__ACCESS_LOG": "true",
    "SIDECAR_LOG__LEVEL": "debug",
    "SIDECAR_TRACING__EXPORTER": "console",
    "SIDECAR_AUDIT__CONTENT": "redacted",
    "SIDECAR_AUDIT__ELASTICSEARCH__BATCH_AGE": "20ms",
}
"""Environment for a sidecar process that writes all it can: access log, debug log, spans to its
log, redacted bodies, audit batches flushed quickly; a search for secrets then sees everything."""


def _prc_id(rng: random.Random) -> str:
    body = f"{rng.choice(['110105', '310104', '440305'])}19{rng.randint(50, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(100, 999)}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


def _luhn_card(rng: random.Random, prefix: str, length: int = 16) -> str:
    digits = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - 1 - len(prefix)))
    total = 0
    for index, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return digits + str((10 - total % 10) % 10)


def _jwt(rng: random.Random) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return ".".join([part({"alg": "HS256", "typ": "JWT"}), part({"sub": rng.randint(1, 10**9), "tenant": "acme"}),
                     base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode()])  # fmt: skip


def _token(rng: random.Random, size: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(size))


def planted_values(seed: int = 5) -> dict[str, list[str]]:
    rng = random.Random(seed)
    values = {
        "jwt": [_jwt(rng) for _ in range(6)],
        "api_key": [f"sk-proj-{_token(rng, 32)}", f"sk-ant-api03-{_token(rng, 40)}", f"AKIA{_token(rng, 16).upper()}",
                    f"ghp_{_token(rng, 36)}", f"xoxb-{rng.randint(10**11, 10**12)}-{_token(rng, 24)}",
                    f"AIza{_token(rng, 35)}", f"hf_{_token(rng, 34)}", f"glpat-{_token(rng, 20)}"],
        "bearer": [_token(rng, 40) for _ in range(4)],
        "cookie": [_token(rng, 32) for _ in range(4)],
        "email": [f"{_token(rng, 8).lower()}.{_token(rng, 5).lower()}@{rng.choice(['example.com', 'corp.example.cn', 'mail.example.org'])}"
                  for _ in range(8)],
        "cn_mobile": [f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(10**7, 10**8 - 1)}" for _ in range(6)],
        "phone": ["+44 20 7946 0958", "+1 415 555 0142"],
        "prc_id": [_prc_id(rng) for _ in range(6)],
        "card": [_luhn_card(rng, "4") for _ in range(2)] + [_luhn_card(rng, "51"), _luhn_card(rng, "37", 15)],
        "ssn": ["123-45-6789", "219-09-9999"],
    }  # fmt: skip
    assert sum(len(group) for group in values.values()) == 50
    return values


async def _send_everything(url: str, values: dict[str, list[str]]) -> int:
    sent = 0
    async with aiohttp.ClientSession() as client:
        for index in range(8):
            email = values["email"][index]
            mobile = values["cn_mobile"][index % 6]
            headers = {
                "Authorization": f"Bearer {values['jwt'][index % 6] if index < 6 else values['bearer'][index - 6]}",
                "Cookie": f"session={values['cookie'][index % 4]}; theme=dark",
                "X-Api-Key": values["api_key"][index],
                "User-Agent": f"client/1.0 ({email})",
            }
            query = f"api_key={values['api_key'][index]}&email={email}&phone={mobile}"
            async with client.get(f"{url}/echo/users/{email}/{mobile}?{query}", headers=headers) as response:
                assert response.status == 200
                await response.read()
            sent += 1
        for index in range(6):
            message = (
                f"My ID is {values['prc_id'][index]}, card {values['card'][index % 4]}, "
                f"SSN {values['ssn'][index % 2]}, call {values['phone'][index % 2]} or {values['cn_mobile'][index]}, "
                f"key {values['api_key'][index]}, mail {values['email'][index]}, token {values['bearer'][index % 4]}"
            )
            body = {"model": "m", "messages": [{"role": "user", "content": message}]}
            headers = {"Authorization": f"Bearer {values['bearer'][index % 4]}"}
            async with client.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                assert response.status == 200
                await response.read()
            sent += 1
        # A bearer token in the query string of a path the model server does not know.
        async with client.get(f"{url}/status/404?access_token={values['bearer'][0]}&card={values['card'][0]}") as response:
            assert response.status == 404
        sent += 1
    return sent


def _everything_written(root: Path) -> bytes:
    return b"\n".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file())


@pytest.mark.parametrize("sink", ["elasticsearch", "file"])
async def test_no_planted_secret_reaches_any_sink_or_log(sink: str, upstream: TestUpstream, tmp_path: Path) -> None:
    values = planted_values()
    async with ElasticsearchStandIn() as elastic:
        env = dict(WRITE_EVERYTHING)
        if sink == "elasticsearch":
            env["SIDECAR_AUDIT__ELASTICSEARCH__URL"] = elastic.url
        sidecar = SidecarProcess(upstream.url, tmp_path, env=env)
        await sidecar.start()
        try:
            sent = await _send_everything(sidecar.url, values)
            sidecar.send_term()
            assert await sidecar.wait(30) == 0
        finally:
            await sidecar.stop()
        if sink == "elasticsearch":
            await wait_for(lambda: len(elastic.documents("logs-*")) >= sent, what="the records in Elasticsearch")
        index = json.dumps(elastic.documents("logs-*"), ensure_ascii=False).encode()

    written = _everything_written(tmp_path) + b"\n" + index
    leaked = [f"{kind}: {value}" for kind, group in values.items() for value in group if value.encode() in written]
    assert not leaked, "planted values found in what the sidecar wrote:\n" + "\n".join(leaked)
    # Not vacuous: the requests were recorded, with their redacted content.
    records = index if sink == "elasticsearch" else _everything_written(tmp_path / "data" / "audit" / "events")
    assert records.count(b'"http-request"') + records.count(b'"model-call"') == sent
    for tag in (b"[REDACTED:email]", b"[REDACTED:jwt]", b"[REDACTED:national_id]", b"[REDACTED:credit_card]",
                b"[REDACTED:phone]", b"[REDACTED:api_key]"):  # fmt: skip
        assert tag in records, tag
    assert b"[REDACTED:email]" in _everything_written(tmp_path).split(b"sidecar.access")[-1] or b"sidecar.access" in written
