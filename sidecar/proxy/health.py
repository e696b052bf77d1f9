"""Active health checks of the upstream.

The state starts `unknown` (not ready: a model server loading its weights is
not ready either). The first successful probe makes it `up`; from then on it
takes `unhealthy_threshold` consecutive failures to go `down` and
`healthy_threshold` consecutive successes to come back, so one slow probe
does not flap readiness. A response from 200 to 399 is healthy, as in
Kubernetes' HTTP probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from sidecar import __version__
from sidecar.config import UpstreamConfig
from sidecar.exchange import HealthResult, HealthState

logger = logging.getLogger(__name__)


class HealthProber:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: UpstreamConfig,
        publish: Callable[[HealthResult], None],
    ) -> None:
        self._session = session
        self._config = config
        self._publish = publish
        self._state = HealthState.UNKNOWN
        self._successes = 0
        self._failures = 0
        self._last: HealthResult | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def state(self) -> HealthState:
        return self._state

    @property
    def last_result(self) -> HealthResult | None:
        return self._last

    def not_ready_reason(self) -> str | None:
        """None when the upstream is healthy (or checks are off); otherwise why not."""
        if not self._config.health.enabled or self._state is HealthState.UP:
            return None
        last = self._last
        if last is None:
            return "upstream health not yet checked"
        detail = last.error or f"status {last.status}"
        return f"upstream {self._state}: {detail} ({last.consecutive_failures} consecutive failures)"

    def reconfigure(self, config: UpstreamConfig) -> None:
        """Apply new probe settings; takes effect at the next probe, which comes at once."""
        self._config = config
        self._wake.set()

    def start(self) -> None:
        if self._task is None and self._config.health.enabled:
            self._task = asyncio.create_task(self._run(), name="upstream-health-prober")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if self._config.health.enabled:
                await self.probe()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.health.interval):
                    await self._wake.wait()

    async def probe(self) -> HealthResult:
        """Probe once, update the state, publish and return the result."""
        config = self._config
        url = f"{config.url.origin}{config.url.base_path}{config.health.path}"
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.get(
                url,
                headers={"User-Agent": f"inference-sidecar-health/{__version__}", "Host": config.url.authority},
                timeout=aiohttp.ClientTimeout(total=config.health.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                await response.read()
            ok = 200 <= status < 400
            if not ok:
                error = f"status {status}"
        except TimeoutError:
            ok, error = False, f"timed out after {config.health.timeout:g}s"
        except aiohttp.ClientConnectorError as exc:
            ok, error = False, f"connect failed: {exc.os_error.strerror or exc.os_error}"
        except (aiohttp.ClientError, OSError) as exc:
            ok, error = False, f"{exc.__class__.__name__}: {exc}"
        latency = time.perf_counter() - started
        result = self._record(ok, status, latency, error)
        self._publish(result)
        return result

    def _record(self, ok: bool, status: int | None, latency: float, error: str | None) -> HealthResult:
        health = self._config.health
        previous = self._state
        if ok:
            self._successes += 1
            self._failures = 0
            if previous is HealthState.UNKNOWN or (
                previous is HealthState.DOWN and self._successes >= health.healthy_threshold
            ):
                self._state = HealthState.UP
        else:
            self._failures += 1
            self._successes = 0
            if previous is not HealthState.DOWN and self._failures >= health.unhealthy_threshold:
                self._state = HealthState.DOWN
        changed = self._state is not previous
        if changed:
            log = logger.warning if self._state is HealthState.DOWN else logger.info
            log(
                "upstream health changed",
                extra={"from": str(previous), "to": str(self._state), "error": error, "status": status},
            )
        self._last = HealthResult(
            at=time.time(),
            ok=ok,
            status=status,
            latency_s=latency,
            error=error,
            state=self._state,
            consecutive_successes=self._successes,
            consecutive_failures=self._failures,
            changed=changed,
        )
        return self._last
