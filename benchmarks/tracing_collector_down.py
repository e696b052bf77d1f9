"""Added latency when the OTLP collector is refusing or hanging, side by side.

Starts one upstream and three `sidecar run` processes in front of it (tracing
with no exporter; exporting to a port that refuses; exporting to a collector
that accepts and never answers), then sends sequential requests carrying a
sampled traceparent to each in interleaved rounds, and reports p50/p99 per
target and added over direct. Run: .venv/bin/python benchmarks/tracing_collector_down.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.otlp import OtlpReceiver  # noqa: E402
from tests.support.process import SidecarProcess  # noqa: E402
from tests.support.tools import closed_port  # noqa: E402
from tests.support.upstream import TestUpstream  # noqa: E402

ROUNDS = 5
PER_ROUND = 300
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def main() -> None:
    upstream, hanging = TestUpstream(), OtlpReceiver(hang=True)
    await upstream.start()
    await hanging.start()
    with TemporaryDirectory() as scratch:
        common = {"SIDECAR_TRACING__MAX_QUEUE_SIZE": "256", "SIDECAR_TRACING__SCHEDULE_DELAY": "200ms"}
        targets = {
            "sidecar, no exporter": SidecarProcess(upstream.url, Path(scratch, "a"), env=dict(common)),
            "sidecar, collector refusing": SidecarProcess(upstream.url, Path(scratch, "b"), env={
                **common, "SIDECAR_TRACING__EXPORTER": "otlp",
                "SIDECAR_TRACING__ENDPOINT": f"http://127.0.0.1:{closed_port()}/v1/traces"}),
            "sidecar, collector hanging": SidecarProcess(upstream.url, Path(scratch, "c"), env={
                **common, "SIDECAR_TRACING__EXPORTER": "otlp", "SIDECAR_TRACING__ENDPOINT": hanging.endpoint}),
        }  # fmt: skip
        for name, process in targets.items():
            Path(scratch, name[:1]).mkdir(exist_ok=True)
            process.workdir.mkdir(parents=True, exist_ok=True)
            await process.start()
        urls = {"direct": upstream.url, **{name: p.url for name, p in targets.items()}}
        samples: dict[str, list[float]] = {name: [] for name in urls}
        try:
            async with aiohttp.ClientSession() as client:
                for _ in range(ROUNDS):
                    for name, url in urls.items():
                        for _ in range(PER_ROUND):
                            started = time.perf_counter()
                            async with client.get(f"{url}/echo", headers={"traceparent": TRACEPARENT}) as response:
                                await response.read()
                            samples[name].append(time.perf_counter() - started)
                dropped = {}
                for name, process in targets.items():
                    async with client.get(f"{process.admin_url}/metrics") as response:
                        line = next(l for l in (await response.text()).splitlines() if l.startswith("sidecar_spans_dropped_total"))
                        dropped[name] = int(float(line.split()[1]))
        finally:
            for process in targets.values():
                await process.stop()
            await hanging.stop()
            await upstream.stop()

    def quantile(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[int(q * (len(ordered) - 1))] * 1000

    base50, base99 = quantile(samples["direct"], 0.5), quantile(samples["direct"], 0.99)
    print(f"{ROUNDS} interleaved rounds x {PER_ROUND} sequential requests per target")
    print(f"{'target':<30} {'p50 ms':>8} {'p99 ms':>8} {'+p50':>7} {'+p99':>7} {'spans dropped':>14}")
    for name, values in samples.items():
        p50, p99 = quantile(values, 0.5), quantile(values, 0.99)
        print(f"{name:<30} {p50:8.3f} {p99:8.3f} {p50 - base50:7.3f} {p99 - base99:7.3f} {dropped.get(name, ''):>14}")
    print(f"median of all direct samples: {statistics.median(samples['direct']) * 1000:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
