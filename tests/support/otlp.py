"""An OTLP/HTTP trace receiver that decodes the real protobuf wire format."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.tools import serve_on_loopback


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


class ReceivedSpan:
    def __init__(self, span: Any, resource: dict[str, Any]) -> None:
        self.name = span.name
        self.kind = span.kind
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_span_id = span.parent_span_id.hex()
        self.attributes = {kv.key: any_value(kv.value) for kv in span.attributes}
        self.events = [(event.name, event.time_unix_nano) for event in span.events]
        self.status_code = span.status.code
        self.start_ns = span.start_time_unix_nano
        self.end_ns = span.end_time_unix_nano
        self.resource = resource


class OtlpReceiver:
    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.spans: list[ReceivedSpan] = []
        # ("resource" or "scope", schema URL) as the exports named them; empty names included.
        self.schema_urls: set[tuple[str, str]] = set()
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        self._runner, self.port = await serve_on_loopback(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def traces(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.hang:
            await asyncio.sleep(3600)
        assert request.content_type == "application/x-protobuf", request.content_type
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
        for resource_spans in message.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in resource_spans.resource.attributes}
            self.schema_urls.add(("resource", resource_spans.schema_url))
            for scope_spans in resource_spans.scope_spans:
                self.schema_urls.add(("scope", scope_spans.schema_url))
                self.spans.extend(ReceivedSpan(span, resource) for span in scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    """An OTLP receiver on a loopback port, for the test's sidecars to export to."""
    server = OtlpReceiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(name="make_sidecar")
def make_sidecar_after_receiver(receiver: OtlpReceiver, make_sidecar: Any) -> Any:
    """`make_sidecar` for a module that imports this: the shared factory, set up after the receiver
    so that its sidecars stop (and flush) before the receiver does; one stopped after it would
    spend its last export retrying into a closed port."""
    return make_sidecar
