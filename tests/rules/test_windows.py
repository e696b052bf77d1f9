"""Rolling windows: Prometheus's histogram_quantile on its own test cases, slot edges, exact roll-up
over long spans, restore after downtime, gauge and count series, and the cost of the hot path."""

from __future__ import annotations

import json
import math
import random
import time

import pytest

from sidecar.exchange import Outcome
from sidecar.rules.signals import DEFAULT_BAD_EVENTS, LATENCY_BUCKETS, BadEvents
from sidecar.rules.windows import (
    LAYOUT,
    STALE_AFTER_S,
    ExchangeWindows,
    Layout,
    Series,
    SeriesStore,
    histogram_quantile,
)
from tests.support.clock import T0
from tests.support.records import make_exchange

INF = math.inf

# --- histogram_quantile: cases from Prometheus's promql/promqltest/testdata/histograms.test ---------
# Classic `_bucket` series evaluated at 50m (or 7m), where each bucket's counter is its increment
# x 10 (x 1): the cumulative counts below, +Inf last.

TESTHISTOGRAM_POSITIVE = ((0.1, 0.2, 1.0), (50, 70, 110, 120))
TESTHISTOGRAM_NEGATIVE = ((-0.2, -0.1, 0.3), (10, 20, 20, 30))
TESTHISTOGRAM2 = ((0.0, 2.0, 4.0, 6.0), (0, 1, 2, 3, 3))
TESTHISTOGRAM3_POSITIVE = ((0.0, 0.1, 0.2, 1.0), (0, 50, 70, 110, 110))
TESTHISTOGRAM3_NEGATIVE = ((-0.25, -0.2, -0.1, 0.3), (0, 10, 20, 20, 20))
# request_duration_seconds summed by le over job and instance, as rates over 10m (per 5m: 1+2+3+4, 3+5+4+7, 4+6+6+9).
AGGREGATED = ((0.1, 0.2), (10 / 300, 19 / 300, 25 / 300))


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        (TESTHISTOGRAM_POSITIVE, 0.0, 0.0),
        (TESTHISTOGRAM_POSITIVE, 0.2, 0.048),  # rank 24 in (0, 0.1]: 0.1 x 24/50
        (TESTHISTOGRAM_POSITIVE, 0.5, 0.15),  # rank 60 in (0.1, 0.2]: 0.1 + 0.1 x 10/20
        (TESTHISTOGRAM_POSITIVE, 0.8, 0.72),  # rank 96 in (0.2, 1]: 0.2 + 0.8 x 26/40
        (TESTHISTOGRAM_POSITIVE, 1.0, 1.0),  # rank 120 in +Inf: the last finite bound
        (TESTHISTOGRAM_NEGATIVE, 0.0, -0.2),  # first bound <= 0 is returned, not interpolated
        (TESTHISTOGRAM_NEGATIVE, 0.2, -0.2),
        (TESTHISTOGRAM_NEGATIVE, 0.5, -0.15),
        (TESTHISTOGRAM_NEGATIVE, 0.8, 0.3),
        (TESTHISTOGRAM_NEGATIVE, 1.0, 0.3),
        (TESTHISTOGRAM2, 1 / 6, 1.0),
        (TESTHISTOGRAM2, 0.5, 3.0),
        (TESTHISTOGRAM2, 5 / 6, 5.0),
        (TESTHISTOGRAM3_POSITIVE, 0.0, 0.0),
        (TESTHISTOGRAM3_POSITIVE, 0.25, 0.055),
        (TESTHISTOGRAM3_POSITIVE, 0.5, 0.125),
        (TESTHISTOGRAM3_POSITIVE, 0.75, 0.45),
        (TESTHISTOGRAM3_POSITIVE, 1.0, 1.0),
        (TESTHISTOGRAM3_NEGATIVE, 0.0, -0.25),
        (TESTHISTOGRAM3_NEGATIVE, 0.25, -0.225),
        (TESTHISTOGRAM3_NEGATIVE, 0.5, -0.2),
        (TESTHISTOGRAM3_NEGATIVE, 0.75, -0.15),
        (TESTHISTOGRAM3_NEGATIVE, 1.0, -0.1),
        (AGGREGATED, 0.3, 0.075),
        (AGGREGATED, 0.5, 0.1277777777777778),
    ],
)
def test_histogram_quantile_matches_prometheus(histogram, q, expected) -> None:
    bounds, cumulative = histogram
    assert histogram_quantile(q, bounds, cumulative) == pytest.approx(expected, abs=1e-12)


def test_histogram_quantile_special_cases() -> None:
    bounds, cumulative = TESTHISTOGRAM_POSITIVE
    assert histogram_quantile(-0.1, bounds, cumulative) == -INF
    assert histogram_quantile(1.01, bounds, cumulative) == INF
    assert math.isnan(histogram_quantile(math.nan, bounds, cumulative))
    assert math.isnan(histogram_quantile(0.5, bounds, (0, 0, 0, 0)))  # no observations: absent
    # Non-monotonic counts are flattened to their envelope, as ensureMonotonic does.
    assert histogram_quantile(0.5, (1.0, 2.0), (10, 5, 20)) == histogram_quantile(0.5, (1.0, 2.0), (10, 10, 20))
    with pytest.raises(ValueError, match="expected 4 cumulative counts"):
        histogram_quantile(0.5, bounds, (1, 2, 3))


def test_quantile_from_windows_equals_histogram_quantile_of_the_same_observations() -> None:
    windows = ExchangeWindows([300.0], T0)
    durations = [0.004, 0.005, 0.02, 0.05, 0.3, 0.5, 0.7, 1.2, 12.0, 700.0]  # 0.005 and 0.05 sit on bounds
    for seconds in durations:
        windows.observe(make_exchange(duration_s=seconds), T0 + 1)
    bounds, cumulative = LAYOUT.cumulative(windows.totals(300.0, T0 + 2), "request_duration")
    assert bounds == LATENCY_BUCKETS["request_duration"]
    # By hand: le=0.005 holds 0.004 and 0.005 (le is inclusive); 700 s is beyond 600 s, in +Inf.
    assert cumulative[0] == 2 and cumulative[bounds.index(0.05)] == 4 and cumulative[-1] == 10
    assert cumulative[-2] == 9
    # p50: rank 5 falls in (0.25, 0.5] holding 0.3 and 0.5 (cumulative 4 -> 6): 0.25 + 0.25 x 1/2.
    assert histogram_quantile(0.5, bounds, cumulative) == pytest.approx(0.375)
    # p99: rank 9.9 is past the last finite bucket: its bound, 600 s.
    assert histogram_quantile(0.99, bounds, cumulative) == 600.0


# --- slots and windows ----------------------------------------------------------------------------


def test_edge_error_is_at_most_one_slot_of_the_serving_tier() -> None:
    """A 5m window (10 s slots) ending at `now` counts everything of the last 5 minutes and nothing
    older than 5m10s; a 1d window (5 min slots) nothing older than 1d5m."""
    for window, slot in ((300.0, 10), (86400.0, 300)):
        for offset in (0.0, 0.5, 3.0, 9.99):
            windows = ExchangeWindows([window], T0)
            now = T0 + 2 * window + offset
            inside = now - window + 0.001
            too_old = now - window - slot - 0.001
            windows.observe(make_exchange(), too_old)
            windows.observe(make_exchange(), inside)
            windows.observe(make_exchange(), now)
            assert windows.totals(window, now)[LAYOUT.requests] == 2, (window, offset)
            start = windows.window_start(window, now)
            assert now - window - slot < start <= now - window
            assert windows.span_s(window, now) == pytest.approx(now - start)


def test_roll_up_keeps_totals_exact_over_long_spans() -> None:
    """Forty days of irregular traffic; at random moments every window equals a brute-force count
    over exactly the span it covers (whole slots of its tier plus the open ones)."""
    lengths = [45.0, 300.0, 3600.0, 7200.0, 86400.0, 259200.0, 2592000.0]
    windows = ExchangeWindows(lengths, T0 + 3)
    rng = random.Random(7)
    events: list[tuple[float, bool]] = []
    ok, failed = make_exchange(), make_exchange(status=503)
    now = T0 + 3
    checks = 0
    while now < T0 + 40 * 86400:
        now += rng.choice((1.0, 7.0, 33.0, 290.0, 1000.0, 5000.0))
        for _ in range(rng.randint(0, 3)):
            bad = rng.random() < 0.2
            windows.observe(failed if bad else ok, now)
            events.append((now, bad))
        if rng.random() < 0.05:
            checks += 1
            for length in lengths:
                totals = windows.totals(length, now)
                start = windows.window_start(length, now)
                assert totals[LAYOUT.requests] == sum(1 for at, _ in events if at >= start), length
                assert totals[LAYOUT.errors["any"]] == sum(1 for at, bad in events if bad and at >= start)
                assert totals[LAYOUT.errors["5xx"]] == totals[LAYOUT.errors["any"]]
    assert checks > 50
    # Everything of the last 30 days, and nothing more than one 1 h slot older.
    thirty_days = windows.totals(2592000.0, now)[LAYOUT.requests]
    assert sum(1 for at, _ in events if at > now - 2592000.0) <= thirty_days
    assert thirty_days <= sum(1 for at, _ in events if at > now - 2592000.0 - 3600)


def test_columns_count_classes_rate_limits_and_histograms() -> None:
    windows = ExchangeWindows([300.0], T0)
    now = T0 + 1
    windows.observe(make_exchange(status=504, outcome=Outcome.UPSTREAM_TIMEOUT, error_type="upstream_timeout"), now)
    windows.observe(make_exchange(status=502, outcome=Outcome.UPSTREAM_UNAVAILABLE,
                                  error_type="upstream_unavailable", gen_ai=None), now)  # fmt: skip
    windows.observe(make_exchange(status=200, outcome=Outcome.UPSTREAM_ERROR, error_type="upstream_error"), now)
    windows.observe(make_exchange(status=429, outcome=Outcome.REJECTED, error_type="rate_limited", gen_ai=None), now)
    windows.observe(make_exchange(), now)
    totals = windows.totals(300.0, now)
    assert totals[LAYOUT.requests] == 5
    assert [totals[LAYOUT.errors[c]] for c in ("any", "5xx", "timeout", "upstream_down")] == [3, 2, 1, 1]
    assert totals[LAYOUT.rate_limited] == 1
    # Token timings only for calls that succeeded: the good one (the broken stream kept a 200 but failed).
    _, ttft = LAYOUT.cumulative(totals, "ttft")
    _, duration = LAYOUT.cumulative(totals, "request_duration")
    assert ttft[-1] == 1 and duration[-1] == 5
    # SLO counts come from the same row: availability from errors, latency from the `le` bucket.
    assert LAYOUT.slo_counts(totals, "availability", None, None) == (3, 5)
    assert LAYOUT.slo_counts(totals, "latency", "request_duration", 2.5) == (0, 5)
    assert LAYOUT.slo_counts(totals, "latency", "request_duration", 1.0) == (5, 5)  # 1.5 s each
    with pytest.raises(ValueError, match="not a request_duration bucket bound"):
        LAYOUT.slo_counts(totals, "latency", "request_duration", 1.1)


def test_the_sidecars_refusals_and_clients_gone_count_as_requests_not_errors() -> None:
    windows = ExchangeWindows([300.0], T0)
    now = T0 + 1
    for status, error_type in ((501, "unsupported_transfer_coding"), (505, "http_version_not_supported"),
                               (400, "bad_request"), (429, "rate_limited")):  # fmt: skip
        windows.observe(make_exchange(status=status, outcome=Outcome.REJECTED, error_type=error_type), now)
    windows.observe(make_exchange(status=500, outcome=Outcome.CLIENT_CLOSED, error_type="client_closed"), now)
    windows.observe(make_exchange(status=503, outcome=Outcome.REJECTED, error_type="service_unavailable"), now)
    totals = windows.totals(300.0, now)
    assert totals[LAYOUT.requests] == 6
    # Only the 503 the sidecar answered because it could not serve (its audit spool full) is a failure.
    assert [totals[LAYOUT.errors[c]] for c in ("any", "5xx", "timeout", "upstream_down")] == [1, 1, 0, 0]
    assert LAYOUT.slo_counts(totals, "availability", None, None) == (1, 6)


def test_an_slo_that_counts_otherwise_has_a_column_named_by_what_it_counts() -> None:
    strict = BadEvents.build(statuses=["5xx", "429"])
    layout = Layout.build([DEFAULT_BAD_EVENTS, strict])
    assert layout.width == LAYOUT.width + 1, "the shipped classification is errors:any, not a column of its own"
    assert layout.columns[-1] == f"bad:{strict.key}"
    windows = ExchangeWindows([300.0], T0, layout)
    now = T0 + 1
    windows.observe(make_exchange(status=429, outcome=Outcome.REJECTED, error_type="rate_limited"), now)
    windows.observe(make_exchange(status=501, outcome=Outcome.REJECTED, error_type="unsupported_transfer_coding"), now)
    windows.observe(make_exchange(status=500), now)
    totals = windows.totals(300.0, now)
    assert layout.slo_counts(totals, "availability", None, None, strict) == (3, 3)
    assert layout.slo_counts(totals, "availability", None, None, DEFAULT_BAD_EVENTS) == (1, 3)
    with pytest.raises(ValueError, match="no column counts bad requests as"):
        LAYOUT.slo_counts(totals, "availability", None, None, strict)
    # Counted otherwise after a restart: the old counts are dropped, not read as the new ones.
    lenient = BadEvents.build(statuses=["500"])
    restored, notes = ExchangeWindows.restored([300.0], windows.dump(), now, Layout.build([lenient]))
    assert notes == [f"dropped counts no longer kept: bad:{strict.key}"]
    again = restored.totals(300.0, now)
    assert restored.layout.slo_counts(again, "availability", None, None, lenient) == (0, 3)
    assert restored.layout.slo_counts(again, "availability", None, None) == (1, 3)


def test_undeclared_window_is_refused_by_name() -> None:
    windows = ExchangeWindows([300.0], T0)
    with pytest.raises(KeyError, match="window 600s was not declared"):
        windows.totals(600.0, T0)


def test_memory_is_fixed_by_the_windows_not_by_traffic() -> None:
    windows = ExchangeWindows([300.0, 3600.0, 86400.0, 2592000.0], T0)
    before = windows.memory_bytes()
    for step in range(5000):
        windows.observe(make_exchange(), T0 + step * 37.0)
    assert windows.memory_bytes() == before
    # 361 + 289 + 721 slots of one row each (plus four running sums and the dirty flags).
    assert before == (361 + 289 + 721 + 4) * LAYOUT.width * 8 + 361 + 289 + 721


def test_restore_continues_and_ages_slots_by_the_downtime() -> None:
    lengths = [300.0, 3600.0, 86400.0, 2592000.0]
    windows = ExchangeWindows(lengths, T0)
    for step in range(3000):
        windows.observe(make_exchange(status=500 if step % 10 == 0 else 200), T0 + step * 20.0)
    saved_at = T0 + 3000 * 20.0
    data = json.loads(json.dumps(windows.dump()))
    restored, notes = ExchangeWindows.restored(lengths, data, saved_at + 1)
    assert notes == []
    assert restored.started_at == T0
    for length in lengths:
        assert restored.totals(length, saved_at) == windows.totals(length, saved_at)
    # Down for two hours: the 5m and 1h windows are empty, the long ones still hold everything.
    later = saved_at + 7200
    assert restored.totals(300.0, later)[LAYOUT.requests] == 0
    assert restored.totals(3600.0, later)[LAYOUT.requests] == 0
    assert restored.totals(86400.0, later)[LAYOUT.requests] == 3000
    assert restored.totals(2592000.0, later)[LAYOUT.errors["any"]] == 300
    for length in lengths:
        assert restored.totals(length, later) == windows.totals(length, later)


def test_restore_into_a_changed_window_set_keeps_what_applies() -> None:
    windows = ExchangeWindows([300.0, 86400.0], T0)
    for step in range(100):
        windows.observe(make_exchange(), T0 + step * 60.0)
    data = windows.dump()
    data["columns"] = [*data["columns"][:-1], "retired_column"]  # a column this version no longer keeps
    restored, notes = ExchangeWindows.restored([600.0, 86400.0, 604800.0], data, T0 + 6000)
    assert any("retired_column" in note for note in notes)
    assert restored.totals(86400.0, T0 + 6000)[LAYOUT.requests] == 100
    assert restored.totals(604800.0, T0 + 6000)[LAYOUT.requests] == 100  # a new window reads the history
    # A longer window on the finest tier gets what that tier kept: 31 slots of 10 s, from 5640 s to
    # the dump at 5940 s (the requests at 5640, 5700, ..., 5940), not the 10 of the last 10 minutes.
    assert restored.totals(600.0, T0 + 6000)[LAYOUT.requests] == 6


def test_restore_refuses_malformed_data_by_key() -> None:
    with pytest.raises(ValueError, match="expected columns, started_at and tiers"):
        ExchangeWindows.restored([300.0], {"tiers": []}, T0)
    data = ExchangeWindows([300.0], T0).dump()
    data["tiers"][0]["slots"] = "not base64!"
    with pytest.raises(ValueError, match=r"windows.tiers\[0\]: unreadable"):
        ExchangeWindows.restored([300.0], data, T0)


def test_observe_costs_a_few_microseconds() -> None:
    windows = ExchangeWindows([300.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 259200.0, 2592000.0], T0)
    exchanges = [make_exchange(), make_exchange(status=500), make_exchange(duration_s=0.02, gen_ai=None)]
    count = 30_000
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for i in range(count):
            # One request per 2 ms of clock: slots close (and roll up) as they would under load.
            windows.observe(exchanges[i % 3], T0 + i * 0.002)
        best = min(best, (time.perf_counter() - started) / count)
    print(f"\nExchangeWindows.observe: {best * 1e6:.2f} us per exchange (best of 3 x {count})")
    assert best < 50e-6  # loose: noisy machines; the figure above is the real one


# --- gauges and counts ----------------------------------------------------------------------------


def test_gauge_aggregates_over_the_window() -> None:
    series = Series({"gpu": "0"}, horizon_s=60.0)
    for second, value in enumerate([50.0, 90.0, 70.0, 60.0]):
        series.set(T0 + second * 20, value)  # at 0, 20, 40, 60 s
    now = T0 + 60
    assert series.gauge("last", 60, now) == 60.0
    assert series.gauge("max", 60, now) == 90.0  # (0, 60]: 90, 70, 60 (the point at 0 s has left)
    assert series.gauge("min", 60, now) == 60.0
    assert series.gauge("avg", 60, now) == pytest.approx((90 + 70 + 60) / 3)
    assert series.gauge("avg", 30, now) == pytest.approx((70 + 60) / 2)
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        series.gauge("median", 60, now)


def test_gauge_goes_absent_when_stale_or_unknown() -> None:
    series = Series({}, horizon_s=0.0)
    series.set(T0, 1.0)
    assert series.gauge("last", 300, T0 + STALE_AFTER_S) == 1.0
    assert series.gauge("last", 300, T0 + STALE_AFTER_S + 1) is None
    series.set(T0 + 400, math.nan)  # the source does not know
    assert series.gauge("last", 300, T0 + 400) is None
    assert len(series.points) == 1  # only the last reading is kept when no rule aggregates


def test_counts_sum_increments_in_the_window_and_bursts_share_points() -> None:
    series = Series({}, horizon_s=300.0, stales=False)
    for i in range(1000):
        series.increase(T0 + i * 0.001, 1.0)  # a burst within one second
    series.increase(T0 + 200, 2.0)
    assert len(series.points) <= 5
    assert series.count(300, T0 + 250) == 1002
    assert series.count(300, T0 + 301) == 2  # the burst left the window
    assert series.count(300, T0 + 10_000) == 0  # event counts are never stale, just zero


def test_series_store_keeps_only_read_signals_and_forgets_vanished_gpus() -> None:
    store = SeriesStore({"gpu_temperature": 60.0})
    store.set("gpu_power_watts", ("0", "GPU-a"), {"gpu": "0"}, T0, 300.0)  # no rule reads it
    store.set("gpu_temperature", ("0", "GPU-a"), {"gpu": "0", "UUID": "GPU-a"}, T0, 70.0)
    assert store.series_count() == 1
    assert store.values("gpu_temperature", 60, T0 + 1) == [({"gpu": "0", "UUID": "GPU-a"}, 70.0)]
    assert store.values("gpu_temperature", 60, T0 + STALE_AFTER_S + 1) == []
    store.prune(T0 + 60 + STALE_AFTER_S + 1)
    assert store.series_count() == 0


# --- a wall clock stepped backwards ---------------------------------------------------------------

CLOCK_STEP_WINDOWS = [300.0, 3600.0, 86400.0, 2592000.0]


@pytest.mark.parametrize("step_s", [1200.0, 7200.0, 2 * 86400.0])
def test_a_clock_stepped_back_re_anchors_the_windows_and_discards_only_the_future(step_s: float) -> None:
    """Counts stamped while the clock was ahead are discarded, nothing else is counted twice or
    lost beyond what the run ahead aged out, and each window is exact again once it spans only
    time after the step. Compared with windows that never saw the clock run ahead."""
    stepped = ExchangeWindows(CLOCK_STEP_WINDOWS, T0, history_slots=90)
    reference = ExchangeWindows(CLOCK_STEP_WINDOWS, T0, history_slots=90)
    before = [T0 + i * 37.0 for i in range(5000)]  # about two days
    for at in before:
        exchange = make_exchange(status=500 if int(at) % 7 == 0 else 200)
        stepped.observe(exchange, at)
        reference.observe(exchange, at)
    # The clock jumps ahead, counts a burst there, and NTP steps it back to just after `before`
    # (into the next 5-minute slot, so that no slot holds counts from both sides of the step).
    back = (before[-1] // 300 + 1) * 300 + 7
    for i in range(500):
        stepped.observe(make_exchange(status=500), back + step_s + i * 0.1)
    requests = LAYOUT.requests
    after = [back + i * 13.0 for i in range(600)]  # two hours and more from the step back
    for index, at in enumerate(after):
        exchange = make_exchange(status=500 if index % 5 == 0 else 200)
        stepped.observe(exchange, at)
        reference.observe(exchange, at)
        if index % 41:
            continue
        for window in CLOCK_STEP_WINDOWS:
            got, expected = stepped.totals(window, at), reference.totals(window, at)
            # Never a count from the future (the burst was all 500s), never one twice.
            assert all(g <= e for g, e in zip(got, expected, strict=True)), (window, at - back)
            assert stepped.span_s(window, at) == reference.span_s(window, at)
            if at - back >= window + 10:
                assert got == expected, (window, at - back)  # the window lies after the step
        # The SLO period loses nothing from before the step while the 5-minute tier still holds its
        # open hour (a step under a day); a longer one loses at most that hour's counts before it.
        got, expected = stepped.totals(2592000.0, at)[requests], reference.totals(2592000.0, at)[requests]
        assert got == expected if step_s < 86400 else expected - 3600 / 37 - 1 <= got <= expected


def test_a_clock_stepped_back_keeps_rates_sane() -> None:
    """The reviewer's case: an hour ahead for a moment, then back; 1 request/s afterwards."""
    windows = ExchangeWindows([300.0], T0)
    windows.observe(make_exchange(), T0 + 3600)
    for second in range(1800):
        windows.observe(make_exchange(), T0 + second)
    now = T0 + 1799.5
    span = windows.span_s(300.0, now)
    assert 300 <= span <= 310
    assert windows.totals(300.0, now)[LAYOUT.requests] / span == pytest.approx(1.0, abs=0.05)


def test_a_clock_a_few_seconds_back_keeps_counting_into_the_open_slot() -> None:
    windows = ExchangeWindows([10.0, 300.0], T0)
    windows.observe(make_exchange(), T0 + 1)
    windows.observe(make_exchange(), T0 - 9.5)  # within a slot before the open one: no re-anchoring
    assert windows.totals(300.0, T0 - 9.5)[LAYOUT.requests] == 2
    # The 10 s window covers its closed slot in full whatever `now`: a rate never divides by ~0.
    assert windows.span_s(10.0, T0 - 9.5) == 10.0


def test_restore_of_a_dump_written_while_the_clock_was_ahead_re_anchors_at_now() -> None:
    ahead = ExchangeWindows([300.0, 86400.0], T0)
    for second in range(0, 600, 2):
        ahead.observe(make_exchange(), T0 + second)
    data = json.loads(json.dumps(ahead.dump()))
    now = T0 - 3600.0  # this host's clock is an hour behind the one that wrote the dump
    restored, _ = ExchangeWindows.restored([300.0, 86400.0], data, now)
    restored.observe(make_exchange(), now + 1)
    assert 300 <= restored.span_s(300.0, now + 1) <= 310  # not 1e-9 s: the open slot is not in the future
    assert restored.totals(300.0, now + 1)[LAYOUT.requests] == 1
    assert restored.window_start(300.0, now + 1) <= now + 1


def test_gauge_readings_from_a_clock_that_was_ahead_age_from_the_new_present() -> None:
    series = Series({"gpu": "0"}, horizon_s=300.0)
    series.set(T0 + 3600, 90.0)  # read while the clock was an hour ahead
    assert series.gauge("last", 300, T0) == 90.0  # the latest reading stands, at the new present
    assert series.gauge("max", 300, T0 + 10) == 90.0  # and is in its windows
    assert series.gauge("last", 300, T0 + STALE_AFTER_S + 1) is None  # not fresh for another hour
    series.set(T0 + 400, 70.0)
    series.set(T0 + 380, 60.0)  # the clock went back 20 s: the later reading moves to 380 s
    assert [at for at, _ in series.points] == sorted(at for at, _ in series.points)
    assert series.gauge("max", 60, T0 + 380) == 70.0


def test_count_events_after_a_clock_step_are_not_hidden_in_the_future() -> None:
    series = Series({}, horizon_s=300.0, stales=False)
    series.increase(T0 + 3600, 1.0)  # an XID error while the clock was ahead
    series.increase(T0, 1.0)  # the clock stepped back: two more, which must not coalesce into the
    series.increase(T0 + 1, 1.0)  # point an hour ahead and vanish from every window
    assert series.count(300, T0 + 2) == 3
    assert series.count(300, T0 + 302) == 0
    assert series.expired(T0 + 302)
