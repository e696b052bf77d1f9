"""Per-tenant token buckets, stream caps and the failed-authentication throttle, on a hand-set clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import FailureThrottleConfig, LimitsConfig, TierConfig
from sidecar.proxy.limits import ALLOWED, Decision, FailureThrottle, RateLimiter, format_reset
from tests.support.clock import T0, Clock


def limiter(clock: Clock, default_tier: str = "paid", max_tracked: int = 100_000, **tiers: TierConfig) -> RateLimiter:
    tiers = tiers or {"paid": TierConfig(requests="10/s", request_burst=5)}
    config = LimitsConfig(enabled=True, tiers=tiers, default_tier=default_tier, max_tracked=max_tracked)
    return RateLimiter(config, clock=clock)


def admit_many(limits: RateLimiter, subject: str, count: int, tier: str | None = None) -> list[Decision]:
    return [limits.admit(subject, tier, stream=False) for _ in range(count)]


# --- request buckets ----------------------------------------------------------


def test_burst_of_5_at_10_per_second_lets_5_of_50_through():
    clock = Clock()
    limits = limiter(clock)
    decisions = admit_many(limits, "tenant:acme", 50)
    assert sum(d.allowed for d in decisions) == 5
    assert all(d.allowed for d in decisions[:5])
    refused = decisions[5:]
    assert all(d.limit == "requests" for d in refused)
    assert all(d.retry_after == pytest.approx(0.1) for d in refused)
    assert refused[0].message == "tenant 'acme' is over its request rate (10/s, burst 5); retry in 0.1s"
    assert limits.rejections == {"requests": 45, "tokens": 0, "concurrent_streams": 0}

    assert limits.admit("tenant:other", None, stream=False).allowed

    clock.now += refused[-1].retry_after
    assert limits.admit("tenant:acme", None, stream=False).allowed
    assert not limits.admit("tenant:acme", None, stream=False).allowed


def test_refill_is_continuous_and_stops_at_the_burst():
    clock = Clock()
    limits = limiter(clock)
    admit_many(limits, "tenant:acme", 5)
    clock.now += 0.35  # 3.5 requests' worth
    assert sum(d.allowed for d in admit_many(limits, "tenant:acme", 10)) == 3
    clock.now += 3600
    assert sum(d.allowed for d in admit_many(limits, "tenant:acme", 10)) == 5


def test_waiting_exactly_the_advertised_time_is_enough_despite_float_rounding():
    clock = Clock(T0 + 0.123456789)
    limits = limiter(clock, paid=TierConfig(requests="7/min", request_burst=1))
    assert limits.admit("ip:10.0.0.1", None, stream=False).allowed
    for _ in range(20):
        refused = limits.admit("ip:10.0.0.1", None, stream=False)
        assert not refused.allowed
        clock.now += refused.retry_after
        assert limits.admit("ip:10.0.0.1", None, stream=False).allowed


@pytest.mark.parametrize(
    ("requests", "tokens", "request_burst", "token_burst"),
    [("10/s", "1000/min", 10, 1000), ("0.5/s", "1/s", 1, 60), ("60/min", "10000/min", 1, 10000),
     ("2.5/s", "2.5/s", 3, 150)],
)  # fmt: skip
def test_default_bursts_are_a_second_of_requests_and_a_minute_of_tokens(requests, tokens, request_burst, token_burst):
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests=requests, tokens=tokens))
    headers = dict(limits.admit("tenant:acme", None, stream=False).headers)
    assert headers["x-ratelimit-limit-requests"] == str(request_burst)
    assert headers["x-ratelimit-limit-tokens"] == str(token_burst)
    assert sum(d.allowed for d in admit_many(limits, "tenant:acme", 100)) == request_burst - 1


# --- token buckets --------------------------------------------------------------


def test_token_debt_refuses_until_repaid():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(tokens="100/s", token_burst=1000))
    assert limits.admit("tenant:acme", "paid", stream=False).allowed
    limits.charge_tokens("tenant:acme", "paid", 1500)  # 500 tokens in debt

    refused = limits.admit("tenant:acme", "paid", stream=False)
    assert (refused.allowed, refused.limit) == (False, "tokens")
    assert refused.retry_after == pytest.approx(5.01)  # back to one whole token
    assert refused.message == "tenant 'acme' is over its token rate (100/s, burst 1000); retry in 5.01s"
    assert dict(refused.headers)["x-ratelimit-remaining-tokens"] == "0"

    clock.now += 5.0
    assert not limits.admit("tenant:acme", "paid", stream=False).allowed
    clock.now += 0.01
    allowed = limits.admit("tenant:acme", "paid", stream=False)
    assert allowed.allowed
    assert dict(allowed.headers)["x-ratelimit-remaining-tokens"] == "1"


def test_admission_needs_one_whole_token():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(tokens="10/s", token_burst=100))
    limits.charge_tokens("tenant:acme", None, 99)
    clock.now += 0.001  # 1.01 tokens
    limits.charge_tokens("tenant:acme", None, 0)  # no usage reported: nothing taken
    assert limits.admit("tenant:acme", None, stream=False).allowed
    limits.charge_tokens("tenant:acme", None, 1)  # 0.01 left
    refused = limits.admit("tenant:acme", None, stream=False)
    assert refused.limit == "tokens"
    assert refused.retry_after == pytest.approx(0.099)


def test_charge_without_a_token_rate_or_tier_is_ignored():
    clock = Clock()
    limits = limiter(clock, default_tier="")
    limits.charge_tokens("tenant:acme", None, 10**9)
    limits.charge_tokens("tenant:acme", "paid", 10**9)
    assert limits.tracked == 0


def test_a_refusal_by_tokens_consumes_no_request():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests="1/s", request_burst=2, tokens="10/s", token_burst=10))
    limits.charge_tokens("tenant:acme", None, 10)
    for _ in range(5):
        assert limits.admit("tenant:acme", None, stream=False).limit == "tokens"
    clock.now += 0.1  # one token back; no requests were taken, so both are still there
    first = limits.admit("tenant:acme", None, stream=False)
    assert first.allowed
    assert dict(first.headers)["x-ratelimit-remaining-requests"] == "1"


def test_a_refusal_by_streams_consumes_no_request_and_no_token():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests="1/s", request_burst=3, tokens="1/s", token_burst=1,
                                            concurrent_streams=1))  # fmt: skip
    assert limits.admit("tenant:acme", None, stream=True).holds_stream
    refused = limits.admit("tenant:acme", None, stream=True)
    assert refused.limit == "concurrent_streams"
    assert dict(refused.headers)["x-ratelimit-remaining-requests"] == "2"
    assert dict(refused.headers)["x-ratelimit-remaining-tokens"] == "1"


def test_retry_after_covers_every_failed_check():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests="1/s", request_burst=1, tokens="10/s", token_burst=10))
    assert limits.admit("tenant:acme", None, stream=False).allowed
    limits.charge_tokens("tenant:acme", None, 10)
    refused = limits.admit("tenant:acme", None, stream=False)
    assert refused.limit == "tokens"  # checked first
    assert refused.retry_after == pytest.approx(1.0)  # but the request bucket needs longer
    clock.now += refused.retry_after
    assert limits.admit("tenant:acme", None, stream=False).allowed


# --- streams --------------------------------------------------------------------


def test_streams_are_capped_and_released():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(concurrent_streams=2))
    first = limits.admit("tenant:acme", None, stream=True)
    second = limits.admit("tenant:acme", None, stream=True)
    assert first.allowed and first.holds_stream and second.holds_stream
    assert first.headers == ()  # no OpenAI header exists for concurrency

    refused = limits.admit("tenant:acme", None, stream=True)
    assert (refused.allowed, refused.limit, refused.retry_after, refused.holds_stream) == (
        False, "concurrent_streams", 1.0, False)  # fmt: skip
    assert "2 streamed answers open" in refused.message and "retry in 1s" in refused.message
    assert dict(refused.headers) == {"retry-after": "1", "retry-after-ms": "1000"}

    assert limits.admit("tenant:acme", None, stream=False) is ALLOWED  # not a stream: not counted
    assert limits.admit("tenant:other", None, stream=True).allowed

    limits.release_stream("tenant:acme")
    assert limits.admit("tenant:acme", None, stream=True).allowed
    assert limits.rejections["concurrent_streams"] == 1


def test_releasing_more_than_held_never_goes_negative():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(concurrent_streams=1))
    limits.release_stream("tenant:acme")
    limits.release_stream("tenant:acme")
    assert limits.admit("tenant:acme", None, stream=True).allowed
    assert not limits.admit("tenant:acme", None, stream=True).allowed


def test_a_tier_without_a_stream_cap_holds_no_slot():
    clock = Clock()
    limits = limiter(clock)
    decision = limits.admit("tenant:acme", None, stream=True)
    assert decision.allowed and not decision.holds_stream


def test_stream_counts_survive_eviction_of_the_buckets():
    clock = Clock()
    limits = limiter(clock, max_tracked=100, paid=TierConfig(requests="10/s", concurrent_streams=1))
    assert limits.admit("tenant:acme", None, stream=True).holds_stream
    for n in range(200):
        limits.admit(f"ip:10.0.{n // 256}.{n % 256}", None, stream=False)
    assert limits.tracked == 100
    assert limits.admit("tenant:acme", None, stream=True).limit == "concurrent_streams"
    limits.release_stream("tenant:acme")
    assert limits.admit("tenant:acme", None, stream=True).allowed


# --- tiers ------------------------------------------------------------------------


def test_unknown_or_missing_tier_falls_back_to_the_default():
    clock = Clock()
    limits = limiter(clock, default_tier="free", free=TierConfig(requests="1/s"), paid=TierConfig(requests="100/s"))
    assert sum(d.allowed for d in admit_many(limits, "tenant:a", 10, tier="nonesuch")) == 1
    assert sum(d.allowed for d in admit_many(limits, "tenant:b", 10, tier=None)) == 1
    assert sum(d.allowed for d in admit_many(limits, "tenant:c", 200, tier="paid")) == 100


def test_no_tier_at_all_is_allowed_with_no_headers_and_not_tracked():
    clock = Clock()
    limits = limiter(clock, default_tier="")
    for tier in (None, "nonesuch"):
        assert limits.admit("ip:10.0.0.1", tier, stream=True) is ALLOWED
    assert ALLOWED.headers == () and ALLOWED.retry_after == 0.0 and not ALLOWED.holds_stream
    assert limits.tracked == 0


def test_disabled_limits_allow_everything():
    clock = Clock()
    config = LimitsConfig(enabled=False, tiers={"paid": TierConfig(requests="1/s")}, default_tier="paid")
    limits = RateLimiter(config, clock=clock)
    assert all(d is ALLOWED for d in admit_many(limits, "tenant:acme", 10))


def test_a_tier_with_no_limits_allows_without_tracking():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig())
    assert limits.admit("tenant:acme", None, stream=True) is ALLOWED
    assert limits.tracked == 0


def test_changing_tier_carries_levels_over_instead_of_refilling():
    clock = Clock()
    free = TierConfig(requests="1/s", request_burst=3)
    limits = limiter(clock, free=free, paid=TierConfig(requests="1/s", request_burst=10))
    assert sum(d.allowed for d in admit_many(limits, "tenant:acme", 10, tier="free")) == 3
    # Alternating between two keys of different tiers must not reset the bucket.
    assert not limits.admit("tenant:acme", "paid", stream=False).allowed
    clock.now += 1
    decision = limits.admit("tenant:acme", "paid", stream=False)
    assert dict(decision.headers)["x-ratelimit-limit-requests"] == "10"


# --- headers ------------------------------------------------------------------------


def test_headers_name_each_limit_the_tier_has():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests="10/s", request_burst=5, tokens="1000/min", token_burst=2000))
    allowed = limits.admit("tenant:acme", None, stream=False)
    assert allowed.headers == (
        ("x-ratelimit-limit-requests", "5"),
        ("x-ratelimit-remaining-requests", "4"),
        ("x-ratelimit-reset-requests", "100ms"),
        ("x-ratelimit-limit-tokens", "2000"),
        ("x-ratelimit-remaining-tokens", "2000"),
        ("x-ratelimit-reset-tokens", "0s"),
    )
    limits.charge_tokens("tenant:acme", None, 1500)
    headers = dict(limits.admit("tenant:acme", None, stream=False).headers)
    assert headers["x-ratelimit-remaining-requests"] == "3"
    assert headers["x-ratelimit-reset-requests"] == "200ms"
    assert headers["x-ratelimit-remaining-tokens"] == "500"
    assert headers["x-ratelimit-reset-tokens"] == "1m30s"


def test_only_request_headers_without_a_token_rate():
    clock = Clock()
    limits = limiter(clock)
    names = [name for name, _ in limits.admit("tenant:acme", None, stream=False).headers]
    assert names == ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"]


@pytest.mark.parametrize(
    ("rate", "retry_after", "header", "header_ms"),
    [("10/s", 0.1, "1", "100"), ("1/s", 1.0, "1", "1000"), ("0.4/s", 2.5, "3", "2500"),
     ("3/s", 1 / 3, "1", "334"), ("1/h", 3600.0, "3600", "3600000")],
)  # fmt: skip
def test_retry_after_is_rounded_up_to_whole_seconds_at_least_1(rate, retry_after, header, header_ms):
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests=rate, request_burst=1))
    limits.admit("tenant:acme", None, stream=False)
    refused = limits.admit("tenant:acme", None, stream=False)
    assert refused.retry_after == pytest.approx(retry_after)
    headers = dict(refused.headers)
    assert (headers["retry-after"], headers["retry-after-ms"]) == (header, header_ms)
    assert headers["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0s"), (-1.0, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (0.9991, "1s"), (1.0, "1s"),
     (1.5, "1.5s"), (59.25, "59.25s"), (60.0, "1m0s"), (360.0, "6m0s"), (90.5, "1m30.5s"), (3600.0, "1h0m0s"),
     (3723.004, "1h2m3.004s"), (86400.0, "24h0m0s")],
)  # fmt: skip
def test_format_reset_writes_durations_as_openai_does(seconds, text):
    assert format_reset(seconds) == text


def test_refusal_messages_name_the_subject():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests="6/min", request_burst=1))
    limits.admit("ip:2001:db8::1", None, stream=False)
    message = limits.admit("ip:2001:db8::1", None, stream=False).message
    assert message == "client 2001:db8::1 is over its request rate (6/min, burst 1); retry in 10s"


# --- the table's bound -----------------------------------------------------------------


def test_the_table_forgets_the_least_recently_seen():
    clock = Clock()
    limits = limiter(clock, max_tracked=100)
    admit_many(limits, "tenant:old", 5)
    admit_many(limits, "tenant:kept", 5)
    for n in range(98):
        limits.admit(f"ip:10.0.0.{n}", None, stream=False)
    limits.admit("tenant:kept", None, stream=False)  # seen again: now the most recent
    assert limits.tracked == 100
    limits.admit("ip:10.0.1.1", None, stream=False)  # one over: "tenant:old" goes
    assert limits.tracked == 100
    assert limits.admit("tenant:old", None, stream=False).allowed  # forgotten, so full again
    assert not limits.admit("tenant:kept", None, stream=False).allowed


# --- reconfigure ------------------------------------------------------------------------


def test_reconfigure_keeps_levels_clamped_to_the_new_burst():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests="1/s", request_burst=10), free=TierConfig(requests="1/s"))
    admit_many(limits, "tenant:half", 5)  # 5 left
    limits.admit("tenant:gone", "free", stream=False)
    limits.admit("tenant:full", None, stream=False)  # 9 left

    limits.reconfigure(LimitsConfig(enabled=True, tiers={"paid": TierConfig(requests="2/s", request_burst=7)},
                                    default_tier="paid"))  # fmt: skip
    assert limits.tracked == 2  # the "free" tier's subject is gone
    assert sum(d.allowed for d in admit_many(limits, "tenant:half", 20)) == 5
    assert sum(d.allowed for d in admit_many(limits, "tenant:full", 20)) == 7
    clock.now += 0.5  # the new rate applies
    assert limits.admit("tenant:half", None, stream=False).allowed


def test_reconfigure_adding_a_limit_starts_it_full_and_disabling_forgets_everything():
    clock = Clock()
    limits = limiter(clock, paid=TierConfig(requests="1/s", request_burst=2, concurrent_streams=1))
    admit_many(limits, "tenant:acme", 2)
    limits.reconfigure(LimitsConfig(enabled=True, tiers={"paid": TierConfig(requests="1/s", request_burst=2,
                                    tokens="1/s", token_burst=3)}, default_tier="paid"))  # fmt: skip
    clock.now += 1
    headers = dict(limits.admit("tenant:acme", None, stream=False).headers)
    assert headers["x-ratelimit-remaining-tokens"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"

    limits.reconfigure(LimitsConfig(enabled=False))
    assert limits.tracked == 0
    assert limits.admit("tenant:acme", None, stream=True) is ALLOWED
    limits.release_stream("tenant:acme")  # harmless after the counts were cleared


# --- the bound, as a property ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from(["0.5/s", "1/s", "3/s", "10/s", "100/min", "7/min"]),
    burst=st.integers(1, 20),
    steps=st.lists(st.one_of(st.integers(1, 30), st.floats(0.0, 5.0).map(lambda dt: -dt)), max_size=60),
)
def test_allowed_never_exceeds_burst_plus_rate_times_elapsed(rate, burst, steps):
    clock = Clock(T0 + 0.123)
    limits = limiter(clock, paid=TierConfig(requests=rate, request_burst=burst))
    per_second = TierConfig(requests=rate).requests
    assert per_second is not None
    allowed = elapsed = 0.0
    for step in steps:
        if isinstance(step, int):  # a batch of requests at this instant
            allowed += sum(d.allowed for d in admit_many(limits, "tenant:acme", step))
        else:  # time passes (encoded negative to tell it apart)
            clock.now += -step
            elapsed += -step
        assert allowed <= burst + per_second * elapsed + 1e-6
    # And the limiter is not stingier than the bucket: after a full refill the burst passes again.
    clock.now += burst / per_second + 1
    assert sum(d.allowed for d in admit_many(limits, "tenant:acme", burst + 1)) == burst


# --- FailureThrottle ------------------------------------------------------------------------------


def throttle(clock: Clock, max_failures: int = 3, window: float = 60.0, max_tracked: int = 100_000) -> FailureThrottle:
    return FailureThrottle(FailureThrottleConfig(max_failures=max_failures, window=window), max_tracked, clock=clock)


def test_blocked_after_max_failures_until_the_window_passes():
    clock = Clock()
    failures = throttle(clock)
    for _ in range(2):
        failures.note_failure("10.0.0.1")
    assert failures.blocked("10.0.0.1") is None
    failures.note_failure("10.0.0.1")
    assert failures.blocked("10.0.0.1") == pytest.approx(60.0)
    assert failures.blocked("10.0.0.2") is None
    clock.now += 59.9
    assert failures.blocked("10.0.0.1") == pytest.approx(0.1)
    clock.now += 0.1
    assert failures.blocked("10.0.0.1") is None
    assert failures.tracked == 0  # drained, so forgotten
    # A fresh allowance after the block.
    for _ in range(2):
        failures.note_failure("10.0.0.1")
    assert failures.blocked("10.0.0.1") is None


def test_failures_spread_at_the_allowed_rate_never_block():
    clock = Clock()
    failures = throttle(clock, max_failures=3, window=60.0)
    for _ in range(30):
        failures.note_failure("10.0.0.1")
        assert failures.blocked("10.0.0.1") is None
        clock.now += 20.0


def test_failures_faster_than_the_rate_eventually_block():
    clock = Clock()
    failures = throttle(clock, max_failures=3, window=60.0)
    blocked_after = None
    for n in range(1, 30):
        failures.note_failure("10.0.0.1")
        if failures.blocked("10.0.0.1") is not None:
            blocked_after = n
            break
        clock.now += 15.0
    # The count drains 0.75 between failures, so it climbs 0.25 a failure: 1, 1.25, ... The
    # failure that takes it past max_failures - 1 (a burst of max_failures blocks at once) is the
    # 6th, at 2.25.
    assert blocked_after == 6


def test_zero_max_failures_disables_the_throttle():
    clock = Clock()
    failures = throttle(clock, max_failures=0)
    for _ in range(1000):
        failures.note_failure("10.0.0.1")
    assert failures.blocked("10.0.0.1") is None
    assert failures.tracked == 0


def test_the_throttle_table_is_bounded():
    clock = Clock()
    failures = throttle(clock, max_failures=1, max_tracked=10)
    for n in range(25):
        failures.note_failure(f"10.0.0.{n}")
    assert failures.tracked == 10
    assert failures.blocked("10.0.0.0") is None  # forgotten
    assert failures.blocked("10.0.0.24") is not None


def test_throttle_reconfigure():
    clock = Clock()
    failures = throttle(clock, max_failures=2, window=60.0)
    failures.note_failure("10.0.0.1")
    failures.note_failure("10.0.0.1")
    assert failures.blocked("10.0.0.1") == pytest.approx(60.0)
    # A shorter window drains faster: the block ends sooner.
    failures.reconfigure(FailureThrottleConfig(max_failures=2, window=10.0))
    assert failures.blocked("10.0.0.1") == pytest.approx(10.0)
    failures.reconfigure(FailureThrottleConfig(max_failures=0))
    assert failures.blocked("10.0.0.1") is None
    assert failures.tracked == 0
