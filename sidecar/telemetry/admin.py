"""The admin listener: metrics, liveness and readiness, on a port of its own.

It is separate from the proxy port so that the proxy never exposes it to
model clients, and it binds to loopback by default. With a status page,
`/` answers a browser with the page (`sidecar.telemetry.status`) and any
other client with the JSON index of endpoints, which `/-/index` always gives.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sidecar import __version__
from sidecar.telemetry.status import PAGE_HEADERS, StatusAssets, StatusPage, wants_html

ReadinessCheck = Callable[[], str | None]
"""Returns None when its part is ready, otherwise the reason it is not."""

StateView = Callable[[], object]
"""Returns a JSON-able view of a part's state (alerts, SLOs) for an admin endpoint."""


def _json(data: object, status: int = 200, *, indent: int | None = 1) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=indent) + "\n", content_type="application/json"
    )


def create_admin_app(
    registry: CollectorRegistry,
    readiness: Mapping[str, ReadinessCheck],
    views: Mapping[str, tuple[StateView, str]] | None = None,
    status: StatusPage | None = None,
) -> web.Application:
    """An aiohttp application serving `/metrics`, `/-/healthy`, `/-/ready`, for each entry of
    `views` (path -> (view, description)) that view as JSON and, with `status`, the status page
    (`/` for browsers, `/-/status.json`, `/-/static/*`)."""
    views = dict(views or {})
    assets = StatusAssets() if status is not None else None

    async def metrics(request: web.Request) -> web.Response:
        # OpenMetrics (which carries exemplars) when the scraper asks for it,
        # Prometheus text format otherwise, as prometheus-client decides.
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

    app = web.Application()
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
