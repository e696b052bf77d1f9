from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.config import load_config
from sidecar.exchange import Exchange, HealthResult
from tests.support.upstream import TestUpstream


@dataclass
class RunningSidecar:
    """A sidecar started in the test's event loop, with everything it published."""

    sidecar: Sidecar
    exchanges: list[Exchange] = field(default_factory=list)
    health: list[HealthResult] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.sidecar.proxy_address is not None
        return f"http://127.0.0.1:{self.sidecar.proxy_address.port}"

    @property
    def admin_url(self) -> str:
        assert self.sidecar.admin_address is not None
        return f"http://127.0.0.1:{self.sidecar.admin_address.port}"


def sidecar_config(upstream_url: str, data_dir: Path, settings: dict[str, Any] | None = None):
    """A config for tests: ephemeral loopback ports, no health probing unless asked for.

    NVML is off so that a test behaves the same on a GPU host as in CI; GPU tests
    turn it on with a stand-in module.
    """
    flags: dict[tuple[str | int, ...], Any] = {
        ("upstream", "url"): upstream_url,
        ("gpu", "nvml", "enabled"): False,
        ("proxy", "listen"): "127.0.0.1:0",
        ("admin", "listen"): "127.0.0.1:0",
        ("data_dir",): str(data_dir),
        ("upstream", "health", "enabled"): False,
        ("proxy", "drain_timeout"): "2s",
    }
    for dotted, value in (settings or {}).items():
        flags[tuple(dotted.split("."))] = value
    return load_config(None, env={}, flags=flags)


SidecarFactory = Callable[..., Awaitable[RunningSidecar]]


@pytest.fixture
async def upstream() -> AsyncIterator[TestUpstream]:
    server = TestUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_sidecar(tmp_path: Path) -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def factory(upstream_url: str, *, nvml: Any = None, **settings: Any) -> RunningSidecar:
        """`nvml`: a pynvml stand-in, which also turns the NVML collector on."""
        dotted = {k.replace("__", "."): v for k, v in settings.items()}
        if nvml is not None:
            dotted.setdefault("gpu.nvml.enabled", True)
        config = sidecar_config(upstream_url, tmp_path / "data", dotted)
        running = RunningSidecar(Sidecar(config, nvml=nvml))
        running.sidecar.exchanges.subscribe("test", running.exchanges.append)
        running.sidecar.health_results.subscribe("test", running.health.append)
        await running.sidecar.start()
        started.append(running.sidecar)
        return running

    yield factory
    for sidecar in started:
        await sidecar.stop()
