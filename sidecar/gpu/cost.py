"""What a request costs locally, what it would have cost from a cloud API, and when the hardware pays off.

Local cost is electricity (the request's energy share at `electricity_per_kwh`)
plus amortised hardware (its GPU busy seconds at `hardware_price` spread over
`amortisation`). The cloud equivalent prices the request's tokens as a hosted
API would: per 1,000 input and output tokens plus a fee per call.

Payback compares the two over a sliding window: the savings per request are
the cloud equivalent less the electricity, and the months to recover
`hardware_price` are the price over the savings per month at the window's
rate. Amortisation is left out of the savings on purpose: the hardware is what
is being paid back, so charging its write-off again would count it twice.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from sidecar.config import CostConfig
from sidecar.exchange import GpuUsage

_JOULES_PER_KWH = 3.6e6
_SECONDS_PER_MONTH = 365.25 / 12 * 86400
_BUCKET_S = 60.0


class CostModel:
    """Prices energy, GPU time and tokens from `gpu.cost`."""

    def __init__(self, config: CostConfig, *, gpus: int = 1) -> None:
        """`gpus`: GPUs the hardware price buys; a GPU-second is charged its 1/gpus share of the
        hardware's write-off per second."""
        self._config = config
        self._kwh_price = config.electricity_per_kwh
        self._hardware_per_gpu_second = config.hardware_price / (config.amortisation * max(gpus, 1))
        self._prices = config.cloud_prices
        self._default_price = config.cloud_prices.get("default")

    @property
    def currency(self) -> str:
        return self._config.currency

    @property
    def hardware_price(self) -> float:
        return self._config.hardware_price

    def electricity(self, energy_joules: float) -> float:
        return energy_joules / _JOULES_PER_KWH * self._kwh_price

    def hardware(self, gpu_seconds: float) -> float:
        """The hardware's write-off for this much GPU busy time; 0 without a hardware price."""
        return gpu_seconds * self._hardware_per_gpu_second

    def local(self, energy_joules: float, gpu_seconds: float) -> float:
        return self.electricity(energy_joules) + self.hardware(gpu_seconds)

    def cloud_equivalent(self, model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        """The tokens at the model's cloud price (or `default`'s); None when neither is configured."""
        price = self._prices.get(model, self._default_price) if model is not None else self._default_price
        if price is None:
            return None
        return input_tokens / 1000 * price.input_per_1k + output_tokens / 1000 * price.output_per_1k + price.per_request


class Payback:
    """Savings against the cloud over a sliding window, and the months to recover the hardware at that rate.

    Memory is bounded by per-minute buckets: a 24 h window keeps at most 1,441.
    """

    def __init__(self, config: CostConfig, *, window: float = 86400.0, clock: Callable[[], float] = time.time) -> None:
        self._cost = CostModel(config)
        self._window = window
        self._clock = clock
        # The rate counts from start-up: minutes without traffic saved nothing, and
        # leaving them out would make a short burst look like a steady income.
        self._since = clock()
        self._buckets: deque[list[float]] = deque()
        """[bucket start, savings in it], oldest first."""
        self._total = 0.0

    def record(self, usage: GpuUsage) -> None:
        """Adds one request's savings; requests without a cloud price are left out of the comparison."""
        if usage.cost_cloud_equivalent is None:
            return
        saving = usage.cost_cloud_equivalent - self._cost.electricity(usage.energy_joules)
        now = self._clock()
        bucket = now - now % _BUCKET_S
        if self._buckets and self._buckets[-1][0] == bucket:
            self._buckets[-1][1] += saving
            self._total += saving
        else:
            self._buckets.append([bucket, saving])
            self._evict(now)

    def savings(self) -> float:
        """Savings over the window (cloud equivalent less electricity), in the configured currency."""
        self._evict(self._clock())
        return self._total

    def months(self) -> float | None:
        """Months for the savings to pay `hardware_price` back at the window's rate; None when there is
        no hardware price or nothing is being saved."""
        price = self._cost.hardware_price
        if price <= 0:
            return None
        now = self._clock()
        self._evict(now)
        if self._total <= 0:
            return None
        # At least one bucket's length, so the first request cannot imply an absurd rate.
        elapsed = max(min(now - self._since, self._window), _BUCKET_S)
        months = price / (self._total / elapsed * _SECONDS_PER_MONTH)
        # Savings of a fraction of a cent against a large price overflow to inf: no estimate then.
        return months if math.isfinite(months) else None

    def _evict(self, now: float) -> None:
        cutoff = now - self._window
        while self._buckets and self._buckets[0][0] + _BUCKET_S <= cutoff:
            self._buckets.popleft()
        # Re-summed rather than decremented so that rounding cannot accumulate over weeks.
        self._total = sum(saving for _, saving in self._buckets)
