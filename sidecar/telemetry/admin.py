"""The admin listener: metrics, liveness and readiness, on a port of its own.

It is separate from the proxy port so that the proxy never exposes it to
model clients, and it binds to loopback by default. With a status page,
`/` answers a browser with the page (`sidecar.telemetry.status`) and any
other client with the JSON index of endpoints, which `/-/index` always gives.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.config import AdminTlsConfig
from sidecar.telemetry.exposition import choose_encoder
from sidecar.telemetry.status import PAGE_HEADERS, StatusAssets, StatusPage, wants_html

ReadinessCheck = Callable[[], str | None]
"""Returns None when its part is ready, otherwise the reason it is not."""

StateView = Callable[[], object]
"""Returns a JSON-able view of a part's state (alerts, SLOs) for an admin endpoint."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminTlsError(Exception):
    """The admin listener's certificate, key or client CA cannot be loaded."""


def admin_ssl_context(tls: AdminTlsConfig) -> ssl.SSLContext:
    """TLS 1.2+ for the admin listener; with `client_ca_file`, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert_file is not None and tls.key_file is not None
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise AdminTlsError(
            f"admin.tls.cert_file/key_file: cannot load {tls.cert_file} with {tls.key_file}: {_reason(exc)}"
        ) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise AdminTlsError(f"admin.tls.client_ca_file: cannot load {tls.client_ca_file}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


class AdminGuard:
    """Requires the admin token on every admin route except the open ones.

    Scripts and Prometheus send `Authorization: Bearer TOKEN`. Browsers cannot,
    so HTTP Basic with the token as the password (any user name) is accepted
    too: the challenge makes a browser ask for it once, then send it with
    every request the status page makes.

    Which route a request reached decides, not how its path was spelled, so
    `/-/healthy/../metrics` or `/%2D/ready` cannot borrow an open route's pass.
    """

    def __init__(self, token: str, open_paths: Collection[str]) -> None:
        self._token = token.encode()
        self._open = frozenset(open_paths)
        self.refused = 0
        """Requests refused for a missing or wrong token."""

    def _presented(self, header: str) -> bytes:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return value.strip().encode("utf-8", "surrogateescape")
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return b""
            return decoded.partition(b":")[2]
        return b""

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in self._open:
            return await handler(request)
        presented = self._presented(request.headers.get("Authorization", ""))
        # compare_digest takes as long for any wrong token of a given length.
        if presented and hmac.compare_digest(presented, self._token):
            return await handler(request)
        self.refused += 1
        response = _json(
            {"error": {"message": "the admin port needs `Authorization: Bearer <admin.token>`",
                       "type": "unauthenticated", "code": 401}},
            status=401,
        )  # fmt: skip
        response.headers.add("WWW-Authenticate", 'Bearer realm="inference-sidecar admin"')
        response.headers.add("WWW-Authenticate", 'Basic realm="inference-sidecar admin", charset="UTF-8"')
        return response


def _json(data: object, status: int = 200, *, indent: int | None = 1) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=indent) + "\n", content_type="application/json"
    )


def create_admin_app(
    registry: CollectorRegistry,
    readiness: Mapping[str, ReadinessCheck],
    views: Mapping[str, tuple[StateView, str]] | None = None,
    status: StatusPage | None = None,
    *,
    guard: AdminGuard | None = None,
    config_view: StateView | None = None,
) -> web.Application:
    """An aiohttp application serving `/metrics`, `/-/healthy`, `/-/ready`, for each entry of
    `views` (path -> (view, description)) that view as JSON and, with `status`, the status page
    (`/` for browsers, `/-/status.json`, `/-/static/*`). With `config_view`, `/-/config` shows
    the effective config (masked: the view must not hand out secrets). With `guard`, every
    route but the guard's open ones needs the admin token."""
    views = dict(views or {})
    if config_view is not None:
        views["/-/config"] = (config_view, "the effective configuration, secrets masked")
    assets = StatusAssets() if status is not None else None

    async def metrics(request: web.Request) -> web.Response:
        # OpenMetrics (which carries exemplars) when the scraper asks for it,
        # Prometheus text format otherwise, as prometheus-client decides; counters
        # that keep their exact names are written as dcgm-exporter writes them.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(registry))
        response.headers["Content-Type"] = content_type
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    async def healthy(request: web.Request) -> web.Response:
        return _json({"status": "healthy", "version": __version__})

    async def ready(request: web.Request) -> web.Response:
        reasons = {name: check() for name, check in readiness.items()}
        failing = {name: reason for name, reason in reasons.items() if reason is not None}
        return _json(
            {
                "status": "not ready" if failing else "ready",
                "checks": {name: reason or "ok" for name, reason in reasons.items()},
            },
            status=503 if failing else 200,
        )

    page_endpoints = {
        "/": "the status page (for browsers; other clients get this index)",
        "/-/index": "this index of endpoints",
        "/-/status.json": "the status page's data: the last 15 minutes of traffic, GPUs, SLOs, alerts, audit, cost",
    } if status is not None else {}  # fmt: skip

    async def index(request: web.Request) -> web.Response:
        if assets is not None and request.path == "/" and wants_html(request.headers.get("Accept", "")):
            response = web.Response(body=assets.page, headers=PAGE_HEADERS)
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            response.headers["Vary"] = "Accept"
            return response
        response = _json(
            {
                "service": "inference-sidecar",
                "version": __version__,
                "endpoints": {
                    "/metrics": "Prometheus metrics (OpenMetrics when asked for)",
                    "/-/healthy": "liveness: the process is up",
                    "/-/ready": "readiness: upstream healthy and sinks writable",
                    **page_endpoints,
                    **{path: description for path, (_, description) in views.items()},
                },
            }
        )
        if assets is not None:
            response.headers["Vary"] = "Accept"
        return response

    app = web.Application(middlewares=[guard.middleware] if guard is not None else [])
    app.router.add_get("/", index)
    if status is not None and assets is not None:
        app.router.add_get("/-/index", index)
        app.router.add_get("/-/status.json", _status_handler(status))
        app.router.add_get("/-/static/{name}", _static_handler(assets))
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    for path, (view, _) in views.items():
        app.router.add_get(path, _view_handler(view))
    return app


def _status_handler(status: StatusPage) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        response = _json(status.build(), indent=None)
        response.headers["Cache-Control"] = "no-store"
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    return handler


def _static_handler(assets: StatusAssets) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        response = web.Response(body=body, headers=PAGE_HEADERS)
        response.headers["Content-Type"] = content_type
        return response

    return handler


def _view_handler(view: StateView) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return _json(view())

    return handler
