"""The admin port stays closed: a bearer token or mutual TLS off loopback, secrets masked in the
effective config, and a refusal to start when neither protects a non-loopback listener."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.config import MASK, ConfigError, load_config
from tests.conftest import SidecarFactory
from tests.support.upstream import TestUpstream

TOKEN = "admin-token-for-tests-0123456789abcdef"


async def _status(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers=headers) as response:
            await response.read()
            return response.status


async def test_every_admin_route_but_the_probes_needs_the_token(make_sidecar: SidecarFactory, upstream: TestUpstream) -> None:
    running = await make_sidecar(upstream.url, admin__token=TOKEN)
    admin = running.admin_url
    good, wrong = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer nope"}
    for path in ("/metrics", "/-/config", "/-/alerts", "/-/status.json", "/", "/-/no-such-route"):
        assert await _status(admin + path) == 401, path
        assert await _status(admin + path, wrong) == 401, path
    for path in ("/metrics", "/-/config", "/-/alerts", "/-/status.json"):
        assert await _status(admin + path, good) == 200, path
    for path in ("/-/healthy", "/-/ready"):
        assert await _status(admin + path) == 200, path
    # An open route's pass is not borrowed by spelling another route's path through it.
    for sneaky in ("/-/healthy/../metrics", "/-/ready/%2e%2e/metrics", "/-/healthy/..%2fmetrics"):
        async with aiohttp.ClientSession() as client:
            async with client.get(admin + sneaky) as response:
                body = await response.text()
                assert response.status in (401, 404), sneaky
                assert "sidecar_build_info" not in body


async def test_a_browser_gets_a_basic_challenge_and_may_send_the_token_as_password(
    make_sidecar: SidecarFactory, upstream: TestUpstream
) -> None:
    running = await make_sidecar(upstream.url, admin__token=TOKEN)
    async with aiohttp.ClientSession() as client:
        async with client.get(running.admin_url + "/", headers={"Accept": "text/html"}) as response:
            assert response.status == 401
            challenges = response.headers.getall("WWW-Authenticate")
            assert any(challenge.startswith("Basic ") for challenge in challenges)
        for user, password, expected in (("operator", TOKEN, 200), ("", TOKEN, 200), ("operator", "wrong", 401)):
            basic = {"Authorization": aiohttp.encode_basic_auth(user, password)}
            async with client.get(running.admin_url + "/-/status.json", headers=basic) as response:
                assert response.status == expected, (user, password)


async def test_metrics_can_be_left_open_explicitly(make_sidecar: SidecarFactory, upstream: TestUpstream) -> None:
    running = await make_sidecar(upstream.url, admin__token=TOKEN, admin__open_paths=["/-/healthy", "/-/ready", "/metrics"])
    assert await _status(running.admin_url + "/metrics") == 200
    assert await _status(running.admin_url + "/-/config") == 401


async def test_the_effective_config_masks_every_secret(make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path) -> None:
    secrets = {
        "audit__elasticsearch__password": "es-password-value",
        "audit__elasticsearch__api_key": "es-api-key-value",
        "tracing__headers": {"Authorization": "Bearer otlp-secret-value"},
        "auth__jwt__secret": "jwt-shared-secret-value-of-32-bytes!!",
        "auth__upstream_token": "upstream-token-value",
        "admin__token": TOKEN,
    }
    running = await make_sidecar(
        upstream.url,
        **secrets,
        auth__enabled=True,
        auth__jwt__algorithms=["HS256"],
        auth__upstream_authorization="replace",
        rules__webhooks=[{"name": "pager", "url": "https://hook:webhook-password-value@pager.example/x"}],
    )
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        async with client.get(running.admin_url + "/-/config") as response:
            assert response.status == 200
            text = await response.text()
    shown = json.loads(text)
    for value in ("es-password-value", "es-api-key-value", "otlp-secret-value", "jwt-shared-secret-value",
                  "upstream-token-value", TOKEN, "webhook-password-value"):  # fmt: skip
        assert value not in text, value
    assert shown["audit"]["elasticsearch"]["password"] == MASK
    assert shown["tracing"]["headers"] == {"Authorization": MASK}
    assert shown["rules"]["webhooks"][0]["url"] == f"https://hook:{MASK}@pager.example/x"
    assert shown["audit"]["elasticsearch"]["username"] == ""  # unset values stay visibly unset
    assert shown["upstream"]["url"] == upstream.url  # and everything else is shown as it is


@pytest.mark.parametrize("listen", ["0.0.0.0:9180", "[::]:9180", "192.0.2.10:9180"])
def test_a_non_loopback_admin_without_protection_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={}, flags={("admin", "listen"): listen})
    (problem,) = caught.value.problems
    assert problem.startswith(f"flag --admin-listen: admin: admin.listen {listen} is not a loopback address, ")
    assert "; expected a loopback address such as 127.0.0.1, or admin.token (or SIDECAR_ADMIN__TOKEN)" in problem
    load_config(None, env={"SIDECAR_ADMIN__TOKEN": TOKEN}, flags={("admin", "listen"): listen})


def test_the_process_refuses_to_start_with_an_open_admin_port(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--admin-listen", "0.0.0.0:0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "admin: admin.listen 0.0.0.0:0 is not a loopback address" in result.stderr
    assert "expected a loopback address such as 127.0.0.1, or admin.token" in result.stderr


def test_the_process_refuses_to_start_with_a_short_admin_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--admin-listen", "0.0.0.0:0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SIDECAR_ADMIN__TOKEN": "hunter2"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected admin.token of at least 16 characters" in result.stderr and "it has 7 characters" in result.stderr
    assert "hunter2" not in result.stderr


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
                 *, ca: bool = False, server: bool = False) -> x509.Certificate:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    data = certificate.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(data)
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(
    make_sidecar: SidecarFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    ca_key, server_key, client_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _certificate("test CA", ca_key, None, ca=True)
    _write(tmp_path / "ca.pem", ca)
    _write(tmp_path / "server.pem", _certificate("sidecar", server_key, (ca, ca_key), server=True), server_key)
    _write(tmp_path / "client.pem", _certificate("prometheus", client_key, (ca, ca_key)), client_key)
    _write(tmp_path / "stranger.pem", _certificate("stranger", stranger_key, None), stranger_key)
    running = await make_sidecar(
        upstream.url,
        admin__tls__cert_file=str(tmp_path / "server.pem"),
        admin__tls__key_file=str(tmp_path / "server.key"),
        admin__tls__client_ca_file=str(tmp_path / "ca.pem"),
    )
    url = f"https://127.0.0.1:{running.sidecar.admin_address.port}/metrics"

    def context(client_cert: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        if client_cert is not None:
            ctx.load_cert_chain(tmp_path / f"{client_cert}.pem", tmp_path / f"{client_cert}.key")
        return ctx

    async with aiohttp.ClientSession() as client:
        async with client.get(url, ssl=context("client")) as response:
            assert response.status == 200
            assert "sidecar_build_info" in await response.text()
        for stranger in (None, "stranger"):
            with pytest.raises(aiohttp.ClientError):
                async with client.get(url, ssl=context(stranger)) as response:
                    await response.read()


def test_tls_files_that_cannot_be_loaded_stop_the_start_with_their_names(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    config = tmp_path / "config.yaml"
    config.write_text(f"admin:\n  tls:\n    cert_file: {tmp_path / 'cert.pem'}\n    key_file: {tmp_path / 'key.pem'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(config), "--data-dir", str(tmp_path / "data"),
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert f"admin.tls.cert_file/key_file: cannot load {tmp_path / 'cert.pem'}" in result.stderr
