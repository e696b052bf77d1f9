"""Per-tenant rate limits and the failed-authentication throttle, held in this process.

Token buckets
-------------
Each tier sets up to three limits per subject (a tenant, or a client IP for
anonymous callers): a request rate, a model-token rate and a cap on open
streamed answers. The two rates are token buckets. A bucket holds at most
`burst` units, refills continuously at `rate` units per second, and starts
full, so an idle tenant may send a burst at once and then no more than the rate
on average: over any period `t`, at most `burst + rate * t` units pass.

A bucket is two floats per subject (level and the time it was last brought up
to date), refilled lazily when the subject is next seen: no timers, no
per-request lists of timestamps, O(1) per decision.

- The request bucket takes 1 per admitted request.
- The token bucket cannot know a request's cost in advance (the answer's usage
  is known only at its end), so admission only requires at least one whole
  token, and `charge_tokens` takes the reported usage afterwards. That may push
  the level below zero: the debt is repaid by refill before the subject is
  admitted again. Requiring a whole token (rather than any positive level)
  makes the answer agree with the headers: `x-ratelimit-remaining-tokens: 0`
  always means the next request is refused.
- Concurrent streams are a count per subject, taken by `admit` and given back
  by `release_stream`.

All checks are made before anything is taken, so a request refused by one
limit consumes nothing from the others.

Across a fleet
--------------
These limits are per process: N replicas behind a load balancer let a tenant
through at up to N times its rate. A fleet that needs one shared limit would
keep the same bucket state in a shared store instead, for instance Redis, with
a Lua script that reads level and timestamp, does the same refill arithmetic,
takes and writes back atomically (one round trip per decision, plus TTLs to
forget idle tenants); or it would delegate the decision to Envoy's global rate
limit service (envoyproxy/ratelimit) in front of the replicas. Neither is
built here: the sidecar stays free of network calls on its hot path.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.config import FailureThrottleConfig, LimitsConfig, TierConfig, format_rate

# Levels are floats refilled by `elapsed * rate`; a client that waits exactly
# the advertised retry time may find 0.9999999 tokens. Comparing against
# 1 - _SLACK lets it in; the slack is a fixed offset of the threshold, not a
# rate, so it never adds up to more than a millionth of a request.
_SLACK = 1e-6

# A stream refusal has no refill time to wait for: the slot frees when another
# answer ends, which the limiter cannot predict. Clients get a short, fixed hint.
_STREAM_RETRY = 1.0

REQUESTS = "requests"
TOKENS = "tokens"
CONCURRENT_STREAMS = "concurrent_streams"


@dataclass(frozen=True, slots=True)
class Decision:
    """What `RateLimiter.admit` decided for one request."""

    allowed: bool
    limit: str | None
    """The limit that refused ("requests", "tokens" or "concurrent_streams"); None when allowed."""
    retry_after: float
    """Seconds until a retry can pass every check that failed; 0.0 when allowed."""
    headers: tuple[tuple[str, str], ...]
    """Rate-limit headers for the response; empty when the subject has no rate limit."""
    holds_stream: bool = False
    """True when `admit` took a stream slot: the caller must call `release_stream` exactly once."""
    message: str = ""
    """For refusals, a readable reason naming the subject, the limit and the wait."""


ALLOWED = Decision(allowed=True, limit=None, retry_after=0.0, headers=())
"""The decision for a request no limit applies to, shared so that such requests allocate nothing."""


def format_reset(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` headers write it: "20ms", "1s", "1.5s", "6m0s", "1h0m0s".

    This is Go's `time.Duration` format at millisecond precision, rounded up so
    that a client waiting the stated time is never early.
    """
    total_ms = max(0, math.ceil(seconds * 1000 - _SLACK))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    text = f"{whole}.{millis:03d}".rstrip("0") + "s" if millis else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _whole_up(value: float) -> int:
    # Rates arrive as floats ("10000/min" is 166.66.../s); multiplying back may
    # land a hair above the integer, which a bare ceil would round up by one.
    return max(1, math.ceil(value - 1e-9 * max(1.0, value)))


def _whole_left(level: float) -> int:
    return max(0, math.floor(level + _SLACK))


def _seconds_text(seconds: float) -> str:
    rounded = math.ceil(seconds * 1000 - _SLACK) / 1000
    return f"{rounded:.3f}".rstrip("0").rstrip(".") + "s"


def _who(subject: str) -> str:
    kind, _, name = subject.partition(":")
    if kind == "tenant":
        return f"tenant {name!r}"
    if kind == "ip":
        return f"client {name}"
    return repr(subject)


@dataclass(frozen=True, slots=True)
class _Tier:
    """A tier's settings, resolved once per configuration so `admit` does no defaulting."""

    name: str
    request_rate: float | None
    request_burst: int
    token_rate: float | None
    token_burst: int
    concurrent_streams: int | None
    # Header values that never change for the tier, formatted once.
    request_limit_text: str
    token_limit_text: str

    @classmethod
    def from_config(cls, name: str, config: TierConfig) -> _Tier:
        request_burst = config.request_burst or (_whole_up(config.requests) if config.requests else 1)
        token_burst = config.token_burst or (_whole_up(config.tokens * 60) if config.tokens else 1)
        return cls(
            name=name,
            request_rate=config.requests,
            request_burst=request_burst,
            token_rate=config.tokens,
            token_burst=token_burst,
            concurrent_streams=config.concurrent_streams,
            request_limit_text=str(request_burst),
            token_limit_text=str(token_burst),
        )

    @property
    def rated(self) -> bool:
        """Whether the tier has a bucket to keep per subject."""
        return self.request_rate is not None or self.token_rate is not None


@dataclass(slots=True)
class _Buckets:
    """One subject's bucket levels, brought up to date at `stamp`."""

    tier: _Tier
    requests: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed <= 0:
            return  # a clock that stepped back refills nothing rather than draining
        self.stamp = now
        tier = self.tier
        if tier.request_rate is not None:
            self.requests = min(float(tier.request_burst), self.requests + elapsed * tier.request_rate)
        if tier.token_rate is not None:
            self.tokens = min(float(tier.token_burst), self.tokens + elapsed * tier.token_rate)

    def move_to(self, tier: _Tier) -> None:
        """Adopt another tier's settings (a reload, or the subject's credentials now name another tier).

        Levels carry over, clamped to the new bursts, rather than starting full:
        otherwise a tenant holding keys of two tiers could alternate between
        them to reset its buckets. A limit the old tier lacked starts full.
        """
        old = self.tier
        if tier.request_rate is not None:
            self.requests = float(min(self.requests if old.request_rate is not None else math.inf, tier.request_burst))
        if tier.token_rate is not None:
            self.tokens = float(min(self.tokens if old.token_rate is not None else math.inf, tier.token_burst))
        self.tier = tier


class RateLimiter:
    """Token buckets per subject and tier, plus open-stream counts; see the module docstring.

    Every call comes from the event loop thread, so there are no locks.
    """

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Least recently seen first, so eviction pops from the front.
        self._subjects: OrderedDict[str, _Buckets] = OrderedDict()
        # Stream counts live apart from the buckets and outside the LRU bound:
        # a subject with an hour-long stream must not lose its count to a burst
        # of new client IPs. Each entry stands for at least one open stream, so
        # the table is bounded by the connections the proxy holds.
        self._streams: dict[str, int] = {}
        self.rejections: dict[str, int] = {REQUESTS: 0, TOKENS: 0, CONCURRENT_STREAMS: 0}
        self._tiers: dict[str, _Tier] = {}
        self._default: _Tier | None = None
        self._max_tracked = config.max_tracked
        self._apply(config)

    @property
    def tracked(self) -> int:
        """Subjects whose buckets are currently held."""
        return len(self._subjects)

    def admit(self, subject: str, tier: str | None, *, stream: bool) -> Decision:
        """Decide whether `subject` may send a request now, and take from its buckets if so.

        `tier` is the tier its credentials name; None or an unknown name means
        the default tier, and with no default tier the subject is not limited.
        """
        spec = self._resolve(tier)
        if spec is None:
            return ALLOWED
        streams_cap = spec.concurrent_streams if stream else None
        held = self._streams.get(subject, 0) if streams_cap is not None else 0
        if not spec.rated:
            if streams_cap is None:
                return ALLOWED
            if held >= streams_cap:
                return self._refuse(subject, spec, None, CONCURRENT_STREAMS, _STREAM_RETRY, held)
            self._streams[subject] = held + 1
            return Decision(allowed=True, limit=None, retry_after=0.0, headers=(), holds_stream=True)

        buckets = self._buckets(subject, spec, self._clock())
        # Check everything before taking anything: a refusal by a later check
        # must leave the earlier buckets as they were.
        limit: str | None = None
        retry_after = 0.0
        if spec.token_rate is not None and buckets.tokens < 1 - _SLACK:
            limit = TOKENS
            retry_after = (1 - buckets.tokens) / spec.token_rate
        if spec.request_rate is not None and buckets.requests < 1 - _SLACK:
            limit = limit or REQUESTS
            retry_after = max(retry_after, (1 - buckets.requests) / spec.request_rate)
        if streams_cap is not None and held >= streams_cap:
            limit = limit or CONCURRENT_STREAMS
            retry_after = max(retry_after, _STREAM_RETRY)
        if limit is not None:
            return self._refuse(subject, spec, buckets, limit, retry_after, held)

        if spec.request_rate is not None:
            buckets.requests -= 1
        if streams_cap is not None:
            self._streams[subject] = held + 1
        return Decision(
            allowed=True,
            limit=None,
            retry_after=0.0,
            headers=self._headers(buckets),
            holds_stream=streams_cap is not None,
        )

    def release_stream(self, subject: str) -> None:
        """Give back the stream slot a `Decision` with `holds_stream` took."""
        held = self._streams.get(subject, 0)
        if held > 1:
            self._streams[subject] = held - 1
        else:
            # Also the path for a count a reload or `enabled: false` cleared:
            # a missing count stays missing, never negative.
            self._streams.pop(subject, None)

    def charge_tokens(self, subject: str, tier: str | None, tokens: int) -> None:
        """Take an answer's reported usage (input + output tokens) from the subject's token bucket.

        The level may go below zero; the subject is then refused until refill
        has repaid the debt.
        """
        if tokens <= 0:
            return
        spec = self._resolve(tier)
        if spec is None or spec.token_rate is None:
            return
        # A long answer may outlive its subject's place in the table; charging
        # a fresh, full bucket still counts the usage.
        buckets = self._buckets(subject, spec, self._clock())
        buckets.tokens -= tokens

    def reconfigure(self, config: LimitsConfig) -> None:
        """Apply reloaded settings. Subjects of tiers still present keep their levels, clamped to
        the new bursts; subjects of removed or now unlimited tiers are forgotten."""
        self._apply(config)

    def _apply(self, config: LimitsConfig) -> None:
        # Disabled limits keep no tiers, so every caller is ALLOWED.
        configured = config.tiers.items() if config.enabled else ()
        tiers = {name: _Tier.from_config(name, tier) for name, tier in configured}
        self._tiers = tiers
        self._default = tiers.get(config.default_tier) if config.default_tier else None
        self._max_tracked = config.max_tracked
        if not tiers:
            self._subjects.clear()
            self._streams.clear()
            return
        now = self._clock()
        for subject, buckets in list(self._subjects.items()):
            new = tiers.get(buckets.tier.name)
            if new is None or not new.rated:
                del self._subjects[subject]
                continue
            # Bring the level up to date under the old rate, which applied until now.
            buckets.refill(now)
            buckets.move_to(new)
        self._evict()

    def _resolve(self, tier: str | None) -> _Tier | None:
        spec = self._tiers.get(tier) if tier is not None else None
        return spec if spec is not None else self._default

    def _buckets(self, subject: str, spec: _Tier, now: float) -> _Buckets:
        """The subject's buckets, up to date at `now`, created full on first sight."""
        buckets = self._subjects.get(subject)
        if buckets is None:
            buckets = _Buckets(spec, float(spec.request_burst), float(spec.token_burst), now)
            self._subjects[subject] = buckets
            self._evict()
            return buckets
        self._subjects.move_to_end(subject)
        buckets.refill(now)
        if buckets.tier is not spec:
            buckets.move_to(spec)
        return buckets

    def _evict(self) -> None:
        # A forgotten subject starts full when next seen: the cost of the bound
        # is leniency towards the least recently seen, never a wrong refusal.
        while len(self._subjects) > self._max_tracked:
            self._subjects.popitem(last=False)

    def _headers(self, buckets: _Buckets) -> tuple[tuple[str, str], ...]:
        tier = buckets.tier
        headers: list[tuple[str, str]] = []
        if tier.request_rate is not None:
            headers += (
                ("x-ratelimit-limit-requests", tier.request_limit_text),
                ("x-ratelimit-remaining-requests", str(_whole_left(buckets.requests))),
                ("x-ratelimit-reset-requests",
                 format_reset((tier.request_burst - buckets.requests) / tier.request_rate)),
            )  # fmt: skip
        if tier.token_rate is not None:
            headers += (
                ("x-ratelimit-limit-tokens", tier.token_limit_text),
                ("x-ratelimit-remaining-tokens", str(_whole_left(buckets.tokens))),
                ("x-ratelimit-reset-tokens", format_reset((tier.token_burst - buckets.tokens) / tier.token_rate)),
            )
        return tuple(headers)

    def _refuse(
        self, subject: str, spec: _Tier, buckets: _Buckets | None, limit: str, retry_after: float, held: int
    ) -> Decision:
        self.rejections[limit] += 1
        headers = self._headers(buckets) if buckets is not None else ()
        headers += retry_headers(retry_after)
        who = _who(subject)
        wait = _seconds_text(retry_after)
        if limit == TOKENS:
            assert spec.token_rate is not None
            message = (f"{who} is over its token rate ({format_rate(spec.token_rate)}, burst {spec.token_burst}); "
                       f"retry in {wait}")  # fmt: skip
        elif limit == REQUESTS:
            assert spec.request_rate is not None
            message = (f"{who} is over its request rate ({format_rate(spec.request_rate)}, "
                       f"burst {spec.request_burst}); retry in {wait}")  # fmt: skip
        else:
            message = (f"{who} has {held} streamed answers open, its limit of {spec.concurrent_streams}; "
                       f"retry in {wait} (a fixed hint: a slot frees when one of them ends)")  # fmt: skip
        return Decision(allowed=False, limit=limit, retry_after=retry_after, headers=headers, message=message)


def retry_headers(seconds: float) -> tuple[tuple[str, str], ...]:
    """`retry-after` (whole seconds) and `retry-after-ms`, rounded up and at least 1, for a 429.

    Both, because the OpenAI SDKs read `retry-after-ms` first and HTTP clients know `retry-after`.
    """
    return (
        ("retry-after", str(max(1, math.ceil(seconds - _SLACK)))),
        ("retry-after-ms", str(max(1, math.ceil(seconds * 1000 - _SLACK)))),
    )


@dataclass(slots=True)
class _Failures:
    level: float
    stamp: float
    until: float
    """When the block ends; 0.0 when the client is not blocked."""


class FailureThrottle:
    """Slows credential guessing: per client IP, failed authentications are counted, and past
    `max_failures` the client is refused until its count has drained.

    The count is a leaky counter rather than a window: each failure adds 1 and
    the count drains continuously at `max_failures / window` per second. One
    float and a timestamp per client, no list of failure times, and no window
    edge at which an attacker gets a fresh allowance. Reaching `max_failures`
    blocks the client until the count has drained to zero, which is `window`
    after a burst of failures. The sustained guessing rate is therefore at most
    `max_failures` per `window`; as with any counter of this kind, one window
    may see up to about twice that from a client that spreads its failures out
    (a sliding log would be exact, at the cost of `max_failures` timestamps per
    client).

    The table is bounded by `max_tracked`, least recently failing forgotten
    first; clients whose count has drained are dropped when next checked.
    """

    def __init__(
        self,
        config: FailureThrottleConfig,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._max_tracked = max_tracked
        self._clients: OrderedDict[str, _Failures] = OrderedDict()
        self._max_failures = 0
        self._drain = 1.0
        self.reconfigure(config)

    @property
    def tracked(self) -> int:
        """Clients with failures on record."""
        return len(self._clients)

    def blocked(self, client: str) -> float | None:
        """Seconds until `client` may try to authenticate again, or None when it may now."""
        if not self._max_failures:
            return None
        failures = self._clients.get(client)
        if failures is None:
            return None
        now = self._clock()
        if failures.until > now:
            return failures.until - now
        if failures.level - (now - failures.stamp) * self._drain <= _SLACK:
            del self._clients[client]  # fully drained: nothing left to remember
        return None

    def note_failure(self, client: str) -> None:
        """Count one failed authentication by `client`."""
        if not self._max_failures:
            return
        now = self._clock()
        failures = self._clients.get(client)
        if failures is None:
            failures = self._clients[client] = _Failures(0.0, now, 0.0)
            while len(self._clients) > self._max_tracked:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
            self._drain_to(failures, now)
        failures.level += 1
        # The failure that fills the count blocks, even if a little drained since the first:
        # `max_failures` failures in quick succession must block, not max_failures + 1.
        if failures.level > self._max_failures - 1 + _SLACK:
            failures.until = now + failures.level / self._drain

    def reconfigure(self, config: FailureThrottleConfig) -> None:
        """Apply reloaded settings; a client still blocked stays blocked until its count drains at
        the new rate. `max_failures: 0` forgets everything."""
        now = self._clock()
        for failures in self._clients.values():
            self._drain_to(failures, now)
        self._max_failures = config.max_failures
        if not config.max_failures:
            self._clients.clear()
            return
        self._drain = config.max_failures / config.window
        for failures in self._clients.values():
            if failures.until > now:
                failures.until = now + failures.level / self._drain

    def _drain_to(self, failures: _Failures, now: float) -> None:
        elapsed = now - failures.stamp
        if elapsed > 0:
            failures.level = max(0.0, failures.level - elapsed * self._drain)
            failures.stamp = now
