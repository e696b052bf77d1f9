"""Rolling windows in fixed memory: Exchanges counted into epoch-aligned slots, and recent points of
gauges and event counts.

Exchanges. Each finished request adds to the open slot of the finest tier: one request, its
error classes (`signals.ERROR_CLASSES`) and the SLOs' own classifications of bad requests
(`signals.BadEvents`) it counts under, whether the rate limits refused it, and one
observation per latency histogram it feeds (`signals.latency_observations`, bucketed on
`signals.LATENCY_BUCKETS` plus +Inf), and the model call's input and output tokens where known. A
slot is one row of doubles in a ring (`array('d')`), so memory is fixed by the tiers, not by traffic:

| tier | slot | serves windows up to |
|---|---|---|
| 0 | 10 s | 1 h |
| 1 | 5 min | 1 d |
| 2 | 1 h | the longest window (an SLO period, at most 90 d) |

Slots are aligned to the epoch and each slot length divides the next, so a tier's open slot lies
inside every coarser tier's open slot. When a slot closes it is added to the next tier's open slot
(roll-up) and to the running sums of the windows its tier serves, and the slot that falls out of
each window is subtracted. A query is therefore O(row width), not O(slots): the running sum of the
last k closed slots of the serving tier, plus that tier's open slot, plus the open slots of the
finer tiers (which hold what has not been rolled up yet). Every request is counted exactly once at
every tier, and counts are whole numbers in doubles, so sums stay exact.

SLO counts are not stored twice: an availability SLO's bad requests are the `errors:any` column
when it counts bad requests as the shipped SLO does (else a `bad:<classification>` column, named by
what it counts, so a changed classification starts afresh) and its total the request count; a
latency SLO's total is its histogram's observation count and its bad ones those above the
threshold's `le` bucket (the threshold is always a bucket bound), which is exactly what the
exported PromQL counts.

The finest tier also serves the status page's recent history (`recent_slots`): its closed slots, one
row each, as they were counted. The owner may ask for more of them to be kept than any window needs
(`history_slots`).

Edge error. A window of length W served by a tier with slots of s seconds covers that tier's last
k = floor(W / s) closed slots and its open slot, so it starts at a slot boundary k x s to (k + 1) x s
ago: its edge is off by less than one slot of the serving tier. For a W that is a multiple of s
(every shipped window is) it never misses an event of the last W seconds and counts at most one
slot of older ones: up to 10 s too long for windows up to 1 h, 5 min up to 1 d, 1 h beyond (0.14 %
of a 30-day SLO period). Rates divide by the span actually covered (`ExchangeWindows.span_s`), so
they are the exact mean over that span.

Gauges and counts (GPU readings, upstream health, audit readings, XID errors) change rarely and
are few: each series keeps a bounded deque of (time, value) points over the longest window a rule
reads from it (at most 1 h for gauge aggregates), and a series that has not been refreshed for
`STALE_AFTER_S` produces no value, as Prometheus treats a series gone for 5 minutes as stale.

A wall clock stepped backwards (NTP, or a state file written while the clock was ahead). Up to one
finest slot (10 s) back, Exchanges keep counting into the open slot. Further back, the windows are
re-anchored at the new time as after a gap: in every tier, the slot holding `now` and the later
ones hold counts stamped in what is now the future, and are discarded; each coarser tier's open
slot is then rebuilt from the finer tier's closed slots that fall in it, so every count left is in
every tier once. Discarded, not folded into the present slot, because folding would squeeze up to
the whole step's traffic into one slot: rates and counts over short windows would jump (a 1 h step:
13 x the request rate over 5 m) and fire alerts on nothing. The cost: the requests of the step's
length go uncounted (0.14 % of a 30-day SLO period per hour of step), with those of the slot that
holds `now` (up to 10 s before it); what the run ahead aged out of a tier (its oldest slots, as a
gap of that length would) does not come back; and a coarser tier loses what of its open slot the
finer tier no longer held (only after a step longer than the finer tier's span: a day for the
hourly tier).

Gauge and count points stamped in the future are instead moved to the new present
(`Series.rewind`): they are few, each is a real reading or event (the latest reading is the GPU's
state now; an XID error must not vanish), and staleness then runs from the present, so a reading is
neither fresh until the clock catches up nor dropped from its windows.

Nothing here is thread-safe: the owner (the rule engine) calls it from the event loop.
"""

from __future__ import annotations

import base64
import math
import sys
import zlib
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import add, sub
from types import MappingProxyType
from typing import Any

from sidecar.exchange import Exchange
from sidecar.rules.signals import (
    ERROR_CLASSES,
    LATENCY_BUCKETS,
    SIGNALS,
    BadEvents,
    Shape,
    is_rate_limited,
    latency_observations,
)

TIER_SLOTS_S = (10, 300, 3600)
"""Slot length of each tier, finest first; each divides the next."""
TIER_REACH_S = (3600.0, 86400.0, math.inf)
"""The longest window each tier serves (a window uses the finest tier that reaches it)."""

STALE_AFTER_S = 300.0
"""A gauge not refreshed for this long (a GPU no longer sampled, a reading that stopped) has no value."""
_MAX_POINTS_PER_S = 4.0
"""Points kept per second of horizon: bounds a series' memory whatever the sampling rate."""
_COUNT_COALESCE_S = 0.25
"""Count events closer than this share a point, so bursts cannot evict older events."""
CLOCK_STEP_TOLERANCE_S = float(TIER_SLOTS_S[0])
"""How far a query may be before the latest point of a series before the clock counts as stepped
back (an evaluation at its scheduled time reads a moment before the readings it follows)."""


# --- the slot row --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """Which column of a slot row holds what; the names travel with the state file."""

    columns: tuple[str, ...]
    requests: int
    errors: Mapping[str, int]
    """error class -> column."""
    rate_limited: int
    histograms: Mapping[str, tuple[int, tuple[float, ...]]]
    """histogram -> (first column, bucket bounds without +Inf); len(bounds) + 1 columns, +Inf last."""
    input_tokens: int
    output_tokens: int
    """Tokens of model calls that reported or counted them (the status page's tokens/s)."""
    bad: Mapping[BadEvents, int]
    """classification of bad requests -> column: every error class's and every SLO's."""
    classifiers: tuple[tuple[int, BadEvents], ...]
    """(column, classification) for each column of bad requests, for the hot path."""

    @property
    def width(self) -> int:
        return len(self.columns)

    @classmethod
    def build(cls, classifications: Iterable[BadEvents] = ()) -> Layout:
        """The row for the error classes and `classifications` (the availability SLOs' bad requests)."""
        columns = ["requests"]
        errors = {}
        for error_class in ERROR_CLASSES:
            errors[error_class] = len(columns)
            columns.append(f"errors:{error_class}")
        rate_limited = len(columns)
        columns.append("rate_limited")
        histograms = {}
        for name, bounds in LATENCY_BUCKETS.items():
            histograms[name] = (len(columns), tuple(bounds))
            columns.extend(f"{name}:le={bound!r}" for bound in bounds)
            columns.append(f"{name}:le=+Inf")
        # Last, so a state file written before they existed maps every earlier column unchanged.
        input_tokens = len(columns)
        columns.append("tokens:input")
        output_tokens = len(columns)  # input_tokens + 1: `observe` relies on it
        columns.append("tokens:output")
        bad = {events: errors[name] for name, events in ERROR_CLASSES.items()}
        for events in classifications:
            if events not in bad:
                bad[events] = len(columns)
                columns.append(f"bad:{events.key}")
        classifiers = tuple((column, events) for events, column in sorted(bad.items(), key=lambda item: item[1]))
        return cls(tuple(columns), 0, MappingProxyType(errors), rate_limited, MappingProxyType(histograms),
                   input_tokens, output_tokens, MappingProxyType(bad), classifiers)  # fmt: skip

    def cumulative(self, row: Sequence[float], histogram: str) -> tuple[tuple[float, ...], list[float]]:
        """(bounds, cumulative counts with +Inf last) of one histogram in a totals row."""
        start, bounds = self.histograms[histogram]
        running = 0.0
        cumulative = []
        for index in range(start, start + len(bounds) + 1):
            running += row[index]
            cumulative.append(running)
        return bounds, cumulative

    def slo_counts(self, row: Sequence[float], sli: str, latency_signal: str | None, threshold_s: float | None,
                   bad_events: BadEvents | None = None) -> tuple[float, float]:  # fmt: skip
        """(bad, total) of an SLO in a totals row: bad requests (`bad_events`, by default as the shipped
        SLO counts them) of all requests, or observations above the threshold's `le` bucket of all
        observations of the latency histogram."""
        if sli == "availability":
            column = self.errors["any"] if bad_events is None else self.bad.get(bad_events)
            if column is None:
                raise ValueError(f"no column counts bad requests as {bad_events.key if bad_events else None}; "
                                 f"build the layout with that classification")  # fmt: skip
            return row[column], row[self.requests]
        if latency_signal is None or threshold_s is None:
            raise ValueError(f"latency SLO needs latency_signal and latency_threshold_s, got {latency_signal!r}, "
                             f"{threshold_s!r}")  # fmt: skip
        start, bounds = self.histograms[latency_signal]
        try:
            good_buckets = bounds.index(threshold_s) + 1
        except ValueError:
            raise ValueError(f"latency threshold {threshold_s!r}s is not a {latency_signal} bucket bound "
                             f"{bounds}") from None  # fmt: skip
        cells = row[start : start + len(bounds) + 1]
        good = sum(cells[:good_buckets])
        total = sum(cells)
        return total - good, total


LAYOUT = Layout.build()


# --- quantiles -----------------------------------------------------------------------------------


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """The q-quantile of a classic histogram as Prometheus's `histogram_quantile` computes it
    (promql/quantile.go, bucketQuantile), so the engine and the exported rules agree.

    `bounds` are the finite upper bounds, ascending; `cumulative` the cumulative counts of those
    buckets followed by the +Inf bucket. Linear interpolation inside the bucket the rank falls in,
    with 0 as the lower bound of the first bucket (unless that bound is <= 0, which is returned);
    the last finite bound when the rank falls in +Inf; NaN when empty (or q is NaN), -Inf for q < 0
    and +Inf for q > 1.
    """
    if len(cumulative) != len(bounds) + 1:
        raise ValueError(f"expected {len(bounds) + 1} cumulative counts (the bounds and +Inf), got {len(cumulative)}")
    if q != q:
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    return quantile_of_prepared(q, bounds, prepared_counts(cumulative))


def prepared_counts(cumulative: Sequence[float]) -> list[float]:
    """Cumulative counts made monotonic as Prometheus does before searching them (correctPrecisionErrors
    with tolerance 1e-12, then ensureMonotonic); computed once per histogram, reused per quantile."""
    counts = list(cumulative)
    previous = counts[0]
    for i in range(1, len(counts)):
        current = counts[i]
        delta = abs(current - previous)
        if delta == 0:
            continue
        if current != 0 and delta / current <= 1e-12:
            counts[i] = previous
        else:
            previous = current
    highest = counts[0]
    for i in range(1, len(counts)):
        if counts[i] > highest:
            highest = counts[i]
        elif counts[i] < highest:
            counts[i] = highest
    return counts


def quantile_of_prepared(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """bucketQuantile's search and interpolation, for 0 <= q <= 1 and `prepared_counts` output."""
    if not bounds:
        return math.nan  # fewer than 2 buckets
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    finite = len(bounds)
    b = bisect_left(counts, rank, 0, finite)  # the first finite bucket whose count reaches the rank
    if b == finite:
        return bounds[-1]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:
        return math.nan  # Go's 0/0
    return start + (end - start) * (rank / count)


# --- exchange windows ----------------------------------------------------------------------------


def _add_row(target: array, target_at: int, source: array, source_at: int, width: int) -> None:
    target[target_at : target_at + width] = array(
        "d", map(add, target[target_at : target_at + width], source[source_at : source_at + width])
    )


def _subtract_row(target: array, target_at: int, source: array, source_at: int, width: int) -> None:
    target[target_at : target_at + width] = array(
        "d", map(sub, target[target_at : target_at + width], source[source_at : source_at + width])
    )


def _dirty_positions(dirty: bytearray, start: int, count: int) -> list[int]:
    """The flagged rows among `count` consecutive ones from `start`, wrapping around the ring
    (bytearray.find scans in C: catching up over many empty slots costs no Python loop per slot)."""
    length = len(dirty)
    spans = ((start, start + count),) if start + count <= length else ((start, length), (0, start + count - length))
    found = []
    for begin, end in spans:
        position = dirty.find(1, begin, end)
        while position != -1:
            found.append(position)
            position = dirty.find(1, position + 1, end)
    return found


class _Tier:
    """One tier's ring of slots. Slot i (an absolute index: start = i x slot_s) lives at row
    i % length; the open slot is `open_index`, the `length - 1` before it are closed history."""

    __slots__ = ("slot_s", "length", "width", "ring", "dirty", "open_index", "runs")

    def __init__(self, slot_s: int, length: int, width: int, open_index: int) -> None:
        self.slot_s = slot_s
        self.length = length
        self.width = width
        self.ring = array("d", bytes(8 * length * width))
        self.dirty = bytearray(length)
        """1 where a row may hold non-zero counts (clean rows are skipped when they close or fall out)."""
        self.open_index = open_index
        self.runs: dict[float, tuple[int, array]] = {}
        """window -> (k, sum of the last k closed slots)."""

    def row(self, index: int) -> int:
        """Offset of slot `index`'s row in the ring."""
        return (index % self.length) * self.width

    def reset(self, open_index: int) -> None:
        """Empty everything: used when more slots have passed than the ring holds."""
        # In place: the hot path holds references to the finest tier's ring and flags.
        self.ring[:] = array("d", bytes(8 * self.length * self.width))
        self.dirty[:] = bytearray(self.length)
        for _, run in self.runs.values():
            run[:] = array("d", bytes(8 * self.width))
        self.open_index = open_index

    def recompute_runs(self) -> None:
        width = self.width
        for k, run in self.runs.values():
            fresh = array("d", bytes(8 * width))
            for index in range(self.open_index - k, self.open_index):
                position = index % self.length
                if self.dirty[position]:
                    _add_row(fresh, 0, self.ring, position * width, width)
            run[:] = fresh


class ExchangeWindows:
    """Per-slot counts of Exchanges in three tiers, with a running sum per window length.

    `windows_s` are every window length that will be queried (`RuleSet.windows_s`); a window not
    declared here cannot be queried, because only declared windows have running sums.
    `history_slots`: closed finest-tier slots to keep for `recent_slots` even when no window needs
    that many (the tier keeps the larger of the two).
    """

    def __init__(self, windows_s: Iterable[float], now: float, layout: Layout = LAYOUT, *,
                 history_slots: int = 0) -> None:  # fmt: skip
        self.layout = layout
        self.started_at = now
        """When counting began (kept across restarts): how much of a long window holds data."""
        width = layout.width
        finest = int(now // TIER_SLOTS_S[0])
        windows = sorted({float(w) for w in windows_s})
        placement: dict[float, tuple[int, int]] = {}
        # A coarser tier keeps at least the span its finer neighbour serves, so a window added to the
        # rule set later finds as much history in it as the finer tier had.
        lengths = [max(1, history_slots + 1)]
        lengths += [int(reach // slot) + 1 for reach, slot in zip(TIER_REACH_S, TIER_SLOTS_S[1:], strict=False)]
        for window in windows:
            if not window > 0:
                raise ValueError(f"expected window lengths > 0, got {window!r}")
            tier = next(i for i, reach in enumerate(TIER_REACH_S) if window <= reach)
            k = max(1, math.floor(window / TIER_SLOTS_S[tier] + 1e-9))
            placement[window] = (tier, k)
            lengths[tier] = max(lengths[tier], k + 1)
        self._ratios = tuple(slot // TIER_SLOTS_S[0] for slot in TIER_SLOTS_S)
        self._tiers = [
            _Tier(slot, length, width, finest // ratio)
            for slot, length, ratio in zip(TIER_SLOTS_S, lengths, self._ratios, strict=True)
        ]
        self._windows: dict[float, tuple[int, int, array]] = {}
        for window, (tier, k) in placement.items():
            run = array("d", bytes(8 * width))
            self._tiers[tier].runs[window] = (k, run)
            self._windows[window] = (tier, k, run)
        self._refresh_open()

    @property
    def windows_s(self) -> tuple[float, ...]:
        return tuple(self._windows)

    def _refresh_open(self) -> None:
        # The hot path reads these instead of recomputing the open row per request.
        finest = self._tiers[0]
        self._ring0 = finest.ring
        self._dirty0 = finest.dirty
        self._open_position = finest.open_index % finest.length
        self._open_row = self._open_position * finest.width
        self._open_end = float((finest.open_index + 1) * finest.slot_s)
        self._open_from = float((finest.open_index - 1) * finest.slot_s)
        """Earlier than this (more than a slot before the open slot), the clock went back: re-anchor."""
        self._tokens_at = self._open_row + self.layout.input_tokens

    # The hot path: once per finished request, on the event loop.
    def observe(self, exchange: Exchange, now: float) -> None:
        if not self._open_from <= now < self._open_end:
            self.advance(now)
        ring = self._ring0
        row = self._open_row
        layout = self.layout
        ring[row] += 1.0
        # Only these can be bad: a bad status is 4xx or 5xx (config), a bad outcome has an error type.
        if exchange.status >= 400 or exchange.error_type:
            status, outcome = exchange.status, exchange.outcome
            for column, events in layout.classifiers:
                if events.counts(status, outcome):
                    ring[row + column] += 1.0
            if is_rate_limited(exchange):
                ring[row + layout.rate_limited] += 1.0
        histograms = layout.histograms
        for histogram, seconds in latency_observations(exchange):
            if seconds == seconds:  # NaN is no observation
                start, bounds = histograms[histogram]
                ring[row + start + bisect_left(bounds, seconds)] += 1.0  # `le` buckets: v <= bound
        call = exchange.gen_ai
        if call is not None:
            # Two cells at most (output follows input in the row), at an offset computed per slot.
            at = self._tokens_at
            tokens = call.input_tokens
            if tokens:
                ring[at] += tokens
            tokens = call.output_tokens
            if tokens:
                ring[at + 1] += tokens
        self._dirty0[self._open_position] = 1

    def advance(self, now: float) -> None:
        """Close every slot that ended before `now`, in every tier. A clock that went back by up to a
        slot is ignored (the open slot stays open); further back, the windows are re-anchored at
        `now` (`_rewind`, see the module's docstring)."""
        target = int(now // TIER_SLOTS_S[0])
        if target <= self._tiers[0].open_index:
            if target < self._tiers[0].open_index - 1:
                self._rewind(target)
            return
        for tier, ratio in enumerate(self._ratios):
            self._advance_tier(tier, target // ratio)
        self._refresh_open()

    def _rewind(self, target: int) -> None:
        """Re-anchor every tier so that its open slot is the one holding finest slot `target`: the
        slots from there on (stamped in what is now the future) are discarded, each coarser tier's
        open slot is rebuilt from the finer tier's closed slots inside it, and the running sums are
        recomputed. Rare (a clock step), so plain loops: O(slots) once."""
        tiers = self._tiers
        for tier, ratio in zip(tiers, self._ratios, strict=True):
            tier_target = target // ratio
            passed = tier.open_index - tier_target + 1  # the slots from tier_target to the open one
            if passed >= tier.length:
                tier.reset(tier_target)
                continue
            width, length, ring, dirty = tier.width, tier.length, tier.ring, tier.dirty
            for position in _dirty_positions(dirty, tier_target % length, passed):
                ring[position * width : (position + 1) * width] = array("d", bytes(8 * width))
                dirty[position] = 0
            tier.open_index = tier_target
        for finer, coarser in zip(tiers, tiers[1:], strict=False):
            # The finer tier's closed slots from the coarser open slot's start were rolled up into a
            # row now cleared: add them back (those the finer ring no longer holds read as clean).
            ratio = coarser.slot_s // finer.slot_s
            width = finer.width
            at = (coarser.open_index % coarser.length) * width
            first = max(coarser.open_index * ratio, finer.open_index - finer.length + 1)
            for position in _dirty_positions(finer.dirty, first % finer.length, finer.open_index - first):
                _add_row(coarser.ring, at, finer.ring, position * width, width)
                coarser.dirty[coarser.open_index % coarser.length] = 1
        for tier in tiers:
            tier.recompute_runs()
        self._refresh_open()

    def _advance_tier(self, tier_index: int, target: int) -> None:
        tier = self._tiers[tier_index]
        while tier.open_index < target:
            if tier.dirty[tier.open_index % tier.length]:
                self._close(tier_index)
            else:
                self._close_empty(tier, target)

    def _close_empty(self, tier: _Tier, target: int) -> None:
        """Close the empty open slot and every (new, empty) slot up to `target` in one go: nothing to
        roll up or add, only the slots that leave each window to subtract."""
        length, width, ring, dirty = tier.length, tier.width, tier.ring, tier.dirty
        first = tier.open_index
        passed = target - first
        if passed >= length:
            tier.reset(target)  # all the history falls out
            return
        for k, run in tier.runs.values():
            # Leaving: slots first - k onwards, one per close; those from `first` on are empty (their
            # rows still hold older slots until cleared below, so they must not be read).
            for position in _dirty_positions(dirty, (first - k) % length, min(passed, k)):
                _subtract_row(run, 0, ring, position * width, width)
        for position in _dirty_positions(dirty, (first + 1) % length, passed):
            ring[position * width : (position + 1) * width] = array("d", bytes(8 * width))
            dirty[position] = 0
        tier.open_index = target

    def _close(self, tier_index: int) -> None:
        tier = self._tiers[tier_index]
        width, length, ring = tier.width, tier.length, tier.ring
        closing = tier.open_index
        position = closing % length
        row = position * width
        filled = tier.dirty[position]
        if filled and tier_index + 1 < len(self._tiers):
            coarser = self._tiers[tier_index + 1]
            self._advance_tier(tier_index + 1, closing // (coarser.slot_s // tier.slot_s))
            coarse_position = coarser.open_index % coarser.length
            _add_row(coarser.ring, coarse_position * width, ring, row, width)
            coarser.dirty[coarse_position] = 1
        for k, run in tier.runs.values():
            if filled:
                _add_row(run, 0, ring, row, width)
            leaving = (closing - k) % length
            if tier.dirty[leaving]:
                _subtract_row(run, 0, ring, leaving * width, width)
        tier.open_index = closing + 1
        reused = tier.open_index % length
        if tier.dirty[reused]:
            ring[reused * width : (reused + 1) * width] = array("d", bytes(8 * width))
            tier.dirty[reused] = 0

    def _placement(self, window_s: float) -> tuple[int, int, array]:
        try:
            return self._windows[window_s]
        except KeyError:
            declared = ", ".join(f"{w:g}s" for w in sorted(self._windows)) or "none"
            raise KeyError(f"window {window_s:g}s was not declared to the rolling windows (declared: {declared})") \
                from None

    def totals(self, window_s: float, now: float) -> array:
        """The counts of every column over the window ending at `now` (see the module's edge error)."""
        self.advance(now)
        tier_index, _, run = self._placement(window_s)
        result = array("d", run)
        width = self.layout.width
        for tier in self._tiers[: tier_index + 1]:
            position = tier.open_index % tier.length
            if tier.dirty[position]:
                _add_row(result, 0, tier.ring, position * width, width)
        return result

    @property
    def slot_s(self) -> int:
        """Length of a finest-tier slot (the resolution of `recent_slots`)."""
        return self._tiers[0].slot_s

    def recent_slots(self, count: int, now: float) -> list[tuple[float, array | None]]:
        """The last `count` closed finest-tier slots (at most as many as the tier keeps), oldest first:
        (slot start, a copy of its row, or None for a slot that counted nothing). Like every query it
        first closes the slots that ended before `now`; it changes no count."""
        self.advance(now)
        tier = self._tiers[0]
        count = max(0, min(int(count), tier.length - 1))
        width, length, ring, dirty = tier.width, tier.length, tier.ring, tier.dirty
        slots: list[tuple[float, array | None]] = []
        for index in range(tier.open_index - count, tier.open_index):
            position = index % length
            row = ring[position * width : (position + 1) * width] if dirty[position] else None
            slots.append((float(index * tier.slot_s), row))
        return slots

    def window_start(self, window_s: float, now: float) -> float:
        """Where the window ending at `now` actually starts (a slot boundary W to W + slot ago)."""
        self.advance(now)
        tier_index, k, _ = self._placement(window_s)
        tier = self._tiers[tier_index]
        return float((tier.open_index - k) * tier.slot_s)

    def span_s(self, window_s: float, now: float) -> float:
        """The length the window actually covers, for rates: from its start to `now`, and never less
        than its closed slots (k x slot), which it always covers in full, even when `now` lies up to
        a slot before the open slot (a clock stepped back a little)."""
        start = self.window_start(window_s, now)
        tier_index, k, _ = self._placement(window_s)
        return max(now - start, float(k * self._tiers[tier_index].slot_s))

    def memory_bytes(self) -> int:
        """The rings and running sums (the bulk of the engine's memory)."""
        total = 0
        for tier in self._tiers:
            total += tier.ring.itemsize * len(tier.ring) + len(tier.dirty)
            total += sum(run.itemsize * len(run) for _, run in tier.runs.values())
        return total

    # --- state ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """`dump()`'s content with each tier's ring copied as it is (a memory copy, fast enough for the
        event loop); `encode_windows` turns it into `dump()`'s output anywhere, a worker thread included."""
        tiers = [{"slot_s": tier.slot_s, "open_index": tier.open_index, "width": tier.width,
                  "ring": array("d", tier.ring)} for tier in self._tiers]  # fmt: skip
        return {"columns": list(self.layout.columns), "started_at": self.started_at, "tiers": tiers}

    def dump(self) -> dict[str, Any]:
        """JSON-able: every tier's slots, oldest first, as zlib-compressed little-endian doubles."""
        return encode_windows(self.snapshot())

    @classmethod
    def restored(cls, windows_s: Iterable[float], data: Mapping[str, Any], now: float,
                 layout: Layout = LAYOUT, *, history_slots: int = 0) -> tuple[ExchangeWindows, list[str]]:  # fmt: skip
        """Windows for `windows_s` filled from `dump()` output, and notes on what could not be kept.

        Slots stay where they were in time; the first `advance` after this ages them by the time
        that passed since the dump. Columns and tiers this layout does not have are dropped, and
        history older than a tier now holds is dropped. Raises ValueError on malformed data.
        """
        notes: list[str] = []
        try:
            stored_columns = [str(name) for name in data["columns"]]
            started_at = float(data["started_at"])
            stored_tiers = list(data["tiers"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"rules state: windows: expected columns, started_at and tiers ({exc})") from None
        windows = cls(windows_s, now, layout, history_slots=history_slots)
        windows.started_at = min(started_at, now)
        index_of = {name: i for i, name in enumerate(layout.columns)}
        mapping = [index_of.get(name) for name in stored_columns]
        unknown = [name for name, i in zip(stored_columns, mapping, strict=True) if i is None]
        if unknown:
            notes.append(f"dropped counts no longer kept: {', '.join(unknown)}")
        identity = mapping == list(range(layout.width))
        parsed: dict[int, tuple[int, int, array]] = {}
        stored_width = len(stored_columns)
        for position, stored in enumerate(stored_tiers):
            try:
                slot_s = int(stored["slot_s"])
                open_index = int(stored["open_index"])
                first_index = int(stored["first_index"])
                rows = array("d")
                rows.frombytes(zlib.decompress(base64.b64decode(stored["slots"], validate=True)))
            except (KeyError, TypeError, ValueError, zlib.error) as exc:
                raise ValueError(f"rules state: windows.tiers[{position}]: unreadable ({exc})") from None
            if sys.byteorder == "big":
                rows.byteswap()
            if len(rows) != (open_index - first_index + 1) * stored_width:
                expected = (open_index - first_index + 1) * stored_width
                raise ValueError(f"rules state: windows.tiers[{position}]: expected {expected} values, got {len(rows)}")
            parsed[slot_s] = (open_index, first_index, rows)
        if not parsed:
            return windows, notes
        # Where the dump stood in time: the finest stored tier's open slot.
        finest_slot = min(parsed)
        position_s = parsed[finest_slot][0] * finest_slot
        for slot_s in sorted(set(parsed) - set(TIER_SLOTS_S)):
            notes.append(f"dropped a tier of {slot_s}s slots no longer used")
        for tier in windows._tiers:
            tier.open_index = position_s // tier.slot_s
            if tier.slot_s not in parsed:
                continue
            open_index, first_index, rows = parsed[tier.slot_s]
            tier.open_index = open_index
            oldest_kept = open_index - tier.length + 1
            if first_index < oldest_kept:
                lost = rows[: (oldest_kept - first_index) * stored_width]
                if any(lost):
                    notes.append(f"dropped {oldest_kept - first_index} slots of {tier.slot_s}s, older than any "
                                 f"window reads")  # fmt: skip
            width = layout.width
            for index in range(max(first_index, oldest_kept), open_index + 1):
                source = (index - first_index) * stored_width
                cells = rows[source : source + stored_width]
                if not any(cells):
                    continue
                at = tier.row(index)
                if identity:
                    tier.ring[at : at + width] = cells
                else:
                    for column, value in zip(mapping, cells, strict=True):
                        if column is not None:
                            tier.ring[at + column] = value
                tier.dirty[index % tier.length] = 1
            tier.recompute_runs()
        windows._refresh_open()
        # A dump from a clock that was ahead of this one: re-anchored now, not when the clock catches up.
        windows.advance(now)
        return windows, notes


def encode_windows(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """`ExchangeWindows.snapshot()` as `dump()` writes it: each tier's ring rotated to oldest first,
    little-endian, zlib-compressed and base64-encoded. Reads only the snapshot's own copies, so it
    may run on a worker thread while the windows keep counting."""
    tiers = []
    for tier in snapshot["tiers"]:
        ring, width, open_index = tier["ring"], tier["width"], tier["open_index"]
        length = len(ring) // width
        first = open_index - length + 1
        split = (first % length) * width  # the oldest slot's row; the ring wraps there
        rows = ring[split:] + ring[:split]
        if sys.byteorder == "big":
            rows.byteswap()
        tiers.append({
            "slot_s": tier["slot_s"],
            "open_index": open_index,
            "first_index": first,
            "slots": base64.b64encode(zlib.compress(rows.tobytes(), 6)).decode("ascii"),
        })  # fmt: skip
    return {"columns": list(snapshot["columns"]), "started_at": snapshot["started_at"], "tiers": tiers}


# --- gauges and counts ---------------------------------------------------------------------------


SeriesKey = tuple[str, ...]
"""() for a signal with one series; (gpu, UUID) or (gpu, UUID, GPU_I_ID) for per-GPU ones."""


class Series:
    """One series' recent points, oldest first: readings for a gauge, increments for a count."""

    __slots__ = ("labels", "points", "horizon_s", "seen_at", "stales")

    def __init__(self, labels: Mapping[str, str], horizon_s: float, *, stales: bool = True) -> None:
        self.labels = labels
        self.horizon_s = horizon_s
        self.points: deque[tuple[float, float]] = deque(maxlen=int(horizon_s * _MAX_POINTS_PER_S) + 2)
        self.seen_at = -math.inf
        """The last time the source reported (a reading, or a count's read with or without an increase)."""
        self.stales = stales
        """False for event counts (XID errors): no events is a count of 0, not an absent value."""

    def set(self, at: float, value: float) -> None:
        """A gauge reading (NaN: the source says it does not know)."""
        if at < self.seen_at:
            self.rewind(at)
        self.points.append((at, value))
        self.seen_at = at
        self._trim(at)

    def increase(self, at: float, amount: float) -> None:
        """A count's events."""
        if at < self.seen_at:
            self.rewind(at)
        points = self.points
        if points and at - points[-1][0] < _COUNT_COALESCE_S:
            points[-1] = (points[-1][0], points[-1][1] + amount)
        else:
            points.append((at, amount))
        self.seen_at = at
        self._trim(at)

    def touch(self, at: float) -> None:
        if at < self.seen_at:
            self.rewind(at)
        self.seen_at = at

    def rewind(self, now: float) -> None:
        """The clock is behind this series' latest point: points stamped after `now` are moved to `now`
        (in order, values unchanged) and freshness counts from `now`, so a reading is neither fresh
        until the clock catches up nor lost from its windows."""
        points = self.points
        if points and points[-1][0] > now:
            moved = [(at if at <= now else now, value) for at, value in points]
            points.clear()
            points.extend(moved)
        self.seen_at = min(self.seen_at, now)

    def _rewound(self, now: float) -> None:
        """Queries call this first: a series seen well after `now` means the clock went back."""
        if self.seen_at > now + CLOCK_STEP_TOLERANCE_S:
            self.rewind(now)

    def _trim(self, now: float) -> None:
        points = self.points
        cutoff = now - self.horizon_s
        while len(points) > 1 and points[0][0] <= cutoff:
            points.popleft()

    def expired(self, now: float) -> bool:
        """Nothing left to say: forgotten so that GPUs that went away do not hold memory."""
        self._rewound(now)
        if self.stales:
            return now - self.seen_at > self.horizon_s + STALE_AFTER_S
        return not self.points or now - self.points[-1][0] > self.horizon_s

    def gauge(self, aggregate: str, window_s: float, now: float) -> float | None:
        """last, max, min or avg of the readings in (now - window, now]; None when absent."""
        self._rewound(now)
        if not self.points or now - self.seen_at > STALE_AFTER_S:
            return None
        if aggregate == "last":
            value = self.points[-1][1]
            return None if value != value else value
        cutoff = now - window_s
        values = []
        for at, value in reversed(self.points):
            if at <= cutoff:
                break
            if value == value and at <= now:
                values.append(value)
        if not values:
            return None
        if aggregate == "max":
            return max(values)
        if aggregate == "min":
            return min(values)
        if aggregate == "avg":
            return math.fsum(values) / len(values)
        raise ValueError(f"unknown aggregate {aggregate!r}; expected last, max, min or avg")

    def count(self, window_s: float, now: float) -> float | None:
        """Increments in (now - window, now]; None when the source stopped reporting."""
        self._rewound(now)
        if self.stales and now - self.seen_at > STALE_AFTER_S:
            return None
        cutoff = now - window_s
        total = 0.0
        for at, amount in reversed(self.points):
            if at <= cutoff:
                break
            if at <= now:
                total += amount
        return total


class SeriesStore:
    """Every gauge and count series the rules read, by signal and key.

    `horizons` names the signals to keep and, for each, the longest window a rule reads from it
    (0 when only the last reading matters); readings of other signals are not stored.
    """

    def __init__(self, horizons: Mapping[str, float]) -> None:
        self._horizons = dict(horizons)
        self._series: dict[str, dict[SeriesKey, Series]] = {signal: {} for signal in horizons}

    def wants(self, signal: str) -> bool:
        return signal in self._series

    def _get(self, signal: str, key: SeriesKey, labels: Mapping[str, str], *, stales: bool = True) -> Series | None:
        by_key = self._series.get(signal)
        if by_key is None:
            return None
        series = by_key.get(key)
        if series is None:
            series = by_key[key] = Series(labels, self._horizons[signal], stales=stales)
        return series

    def set(self, signal: str, key: SeriesKey, labels: Mapping[str, str], at: float, value: float) -> None:
        series = self._get(signal, key, labels)
        if series is not None:
            series.set(at, value)

    def increase(self, signal: str, key: SeriesKey, labels: Mapping[str, str], at: float, amount: float,
                 *, stales: bool = True) -> None:  # fmt: skip
        series = self._get(signal, key, labels, stales=stales)
        if series is not None:
            if amount:
                series.increase(at, amount)
            else:
                series.touch(at)

    def values(self, signal: str, window_s: float, now: float,
               aggregate: str = "last") -> list[tuple[Mapping[str, str], float]]:  # fmt: skip
        """(labels, value) per series with a value: the aggregate for gauges, the increase for counts."""
        by_key = self._series.get(signal)
        if not by_key:
            return []
        counts = SIGNALS[signal].shape is Shape.COUNT
        result = []
        for series in by_key.values():
            value = series.count(window_s, now) if counts else series.gauge(aggregate, window_s, now)
            if value is not None:
                result.append((series.labels, value))
        return result

    def prune(self, now: float) -> None:
        for by_key in self._series.values():
            for key in [key for key, series in by_key.items() if series.expired(now)]:
                del by_key[key]

    def series_count(self) -> int:
        return sum(len(by_key) for by_key in self._series.values())

    def point_count(self) -> int:
        return sum(len(series.points) for by_key in self._series.values() for series in by_key.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """`dump()`'s content with each series' points copied as they are (a list of the same tuples:
        cheap on the event loop); `encode_series` makes it JSON-able anywhere."""
        copied = []
        for signal, by_key in self._series.items():
            for key, series in by_key.items():
                if not series.points and series.seen_at == -math.inf:
                    continue
                copied.append({
                    "signal": signal, "key": list(key), "labels": dict(series.labels), "stales": series.stales,
                    "seen_at": series.seen_at, "points": list(series.points),
                })  # fmt: skip
        return copied

    def dump(self) -> list[dict[str, Any]]:
        """JSON-able: each series' labels, freshness and points."""
        return encode_series(self.snapshot())

    def restore(self, dumped: Iterable[Mapping[str, Any]]) -> list[str]:
        """Series from `dump()` for the signals still kept; notes on what was dropped."""
        dropped: set[str] = set()
        for position, item in enumerate(dumped):
            try:
                signal = str(item["signal"])
                key = tuple(str(part) for part in item["key"])
                labels = {str(k): str(v) for k, v in dict(item["labels"]).items()}
                stales = bool(item.get("stales", True))
                seen_at = item.get("seen_at")
                points = [(float(at), math.nan if value is None else float(value)) for at, value in item["points"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"rules state: series[{position}]: unreadable ({exc})") from None
            if signal not in self._series:
                dropped.add(signal)
                continue
            series = Series(labels, self._horizons[signal], stales=stales)
            series.points.extend(points)
            series.seen_at = -math.inf if seen_at is None else float(seen_at)
            self._series[signal][key] = series
        return [f"dropped readings of {signal}, which no rule reads any more" for signal in sorted(dropped)]


def encode_series(snapshot: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`SeriesStore.snapshot()` as `dump()` writes it: NaN and infinities as null, which JSON carries."""
    return [
        {**item, "seen_at": item["seen_at"] if math.isfinite(item["seen_at"]) else None,
         "points": [[at, value if math.isfinite(value) else None] for at, value in item["points"]]}
        for item in snapshot
    ]  # fmt: skip
