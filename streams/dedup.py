"""Bounded-memory event_id dedup: Bloom filters over spans of arrival time as a pre-filter.

A Bloom filter never forgets an id it saw (no false negatives), so a
"not seen" answer is final and a "maybe seen" answer is confirmed exactly
against the sink. A filter is dropped once its newest id is older than the
horizon, which bounds memory by the ids of about one horizon. See
docs/streams.md for the memory math.

The worker asks about a whole batch of ids at once (`*_many`): positions are
computed and tested with numpy, ~20x cheaper per id than a Python loop over
k positions (the loop was ~15 % of the worker's CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

_HOUR_S = 3600
_SPANS_PER_HORIZON = 6  # a filter takes at most this fraction of the horizon's arrivals
_CHUNK = 50_000
_U32 = np.uint64(0xFFFF_FFFF)

Positions = npt.NDArray[np.uint64]  # (ids, k) bit positions


def _hashes(ids: Sequence[str]) -> tuple[Positions, Positions]:
    """Two 32-bit hashes per id from Python's string hash.

    The filters live in one process and are rebuilt from the store after a
    restart, so the process-salted `hash(str)` (SipHash, cached on the string
    object) is a sound and cheap source; blake2b cost ~4x more per id.
    """
    h = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)).view(np.uint64)
    return h & _U32, (h >> np.uint64(32)) | np.uint64(1)


class BloomFilter:
    """A fixed-size Bloom filter over strings (double hashing, Kirsch-Mitzenmacher).

    All filters of one size share their positions (`positions_many()`), so
    a lookup across many filters hashes once.
    """

    __slots__ = ("_bits", "_k", "_m", "capacity", "count")

    def __init__(self, capacity: int, fp_rate: float) -> None:
        if capacity <= 0 or not 0.0 < fp_rate < 1.0:
            raise ValueError("capacity must be > 0 and 0 < fp_rate < 1")
        # Optimal size and hash count for `capacity` items at `fp_rate`.
        m = math.ceil(-capacity * math.log(fp_rate) / (math.log(2) ** 2))
        self._m = max(64, m)
        self._k = max(1, round(self._m / capacity * math.log(2)))
        self._bits = np.zeros((self._m + 7) // 8, dtype=np.uint8)
        self.capacity = capacity
        self.count = 0

    @property
    def size_bytes(self) -> int:
        return int(self._bits.nbytes)

    def positions_many(self, ids: Sequence[str]) -> Positions:
        h1, h2 = _hashes(ids)
        steps = np.arange(self._k, dtype=np.uint64)
        # h1 < 2^32 and k * h2 < 2^36: no uint64 overflow before the modulo.
        out: Positions = (h1[:, None] + steps[None, :] * h2[:, None]) % np.uint64(self._m)
        return out

    def has_many(self, positions: Positions) -> npt.NDArray[np.bool_]:
        """Per row of positions: are all its bits set (maybe seen)?"""
        masks = np.left_shift(np.uint8(1), (positions & np.uint64(7)).astype(np.uint8))
        out: npt.NDArray[np.bool_] = (self._bits[positions >> np.uint64(3)] & masks).all(axis=1)
        return out

    def add_many(self, positions: Positions) -> None:
        masks = np.left_shift(np.uint8(1), (positions & np.uint64(7)).astype(np.uint8))
        # ufunc.at: repeated byte indices must all apply (fancy |= keeps one).
        np.bitwise_or.at(self._bits, (positions >> np.uint64(3)).ravel(), masks.ravel())
        self.count += len(positions)

    def add(self, item: str) -> None:
        self.add_many(self.positions_many([item]))

    def __contains__(self, item: str) -> bool:
        return bool(self.has_many(self.positions_many([item]))[0])


class _Filter:
    """One live filter of a TimeBucketedBloom: its slot and the arrivals it holds."""

    __slots__ = ("count", "first_s", "newest_s", "slot")

    def __init__(self, slot: int, now_s: float) -> None:
        self.slot = slot
        self.first_s = now_s  # the arrival that opened it
        self.newest_s = now_s  # its newest arrival: it expires a horizon after
        self.count = 0


class TimeBucketedBloom:
    """Bloom filters over spans of arrival time, each expired a horizon after its newest id.

    A filter takes the ids that arrive within `span_s` of the one that
    opened it (default: a sixth of the horizon, 8 h of 48 h) until it holds
    `capacity_per_filter`; then the next one opens. So the false-positive
    rate stays at `fp_rate` per filter however many ids arrive, memory
    grows with the ids actually seen, and a filter is dropped once its
    newest id is a horizon old: a full filter holds minutes of ids at the
    sizing rate and goes a little after them, a slow partition's filter
    holds up to a span of arrivals and keeps its oldest ids up to a span
    longer than the horizon. Before round 9 a filter held one hour of
    arrivals, so a partition with a trickle of events kept 48-49 nearly
    empty filters (7 slot bytes, 26.8 MB at the defaults) where it now keeps
    at most 7 (one slot byte, 3.8 MB; bench/dedup_bench.py).

    The filters are stored bit-sliced: one array of m rows (a row per bit
    position, shared by all filters of one size) with a bit per filter
    slot, 8 slots a byte. A lookup reads the k rows of an id once, whatever
    the number of filters: with one array per filter it read k bytes from
    each, one numpy call per filter, and a partition at the sizing rate
    holds ~100 filters after 48 h (2 an hour): 12.4 us an id against 0.34
    with one filter. Slots are taken and freed as filters come and expire;
    the array grows a byte of slots (8 filters) at a time.
    """

    # fp_rate is per filter, and a lookup asks every live filter: the chance
    # that an unseen id needs a confirmation query is about filters x fp_rate.
    # At 0.001 a partition's one filter, filled to capacity by a 20 s warm-up
    # at 43k events/s, sent a confirmation query with most prepared batches
    # (endpoint queries 12.8 -> 23.9 a second, freshness p99 0.95 -> 2.97 s in
    # bench/latency_bench.py); 0.0001 costs 19.2 bits an id instead of 14.4.
    def __init__(
        self,
        *,
        horizon_s: float,
        capacity_per_filter: int = 200_000,
        fp_rate: float = 0.0001,
        span_s: float | None = None,
    ) -> None:
        self.horizon_s = horizon_s
        self.capacity_per_filter = capacity_per_filter
        self.fp_rate = fp_rate
        self.span_s = span_s if span_s is not None else horizon_s / _SPANS_PER_HORIZON
        if self.span_s <= 0:
            raise ValueError("span_s must be > 0")
        # Every filter has this size, so one positions matrix serves them all.
        self._shape = BloomFilter(capacity_per_filter, fp_rate)
        self._m = self._shape._m
        self._slices = np.zeros((self._m, 0), dtype=np.uint8)  # (bit position, slot byte)
        self._free: list[int] = []  # slots of expired filters, reused first
        self._filters: list[_Filter] = []  # live, in the order they opened

    def expire(self, now_s: float) -> None:
        """Drop the filters whose newest id is older than the horizon."""
        cutoff = now_s - self.horizon_s
        if any(f.newest_s < cutoff for f in self._filters):
            for f in self._filters:
                if f.newest_s < cutoff:
                    self._release(f.slot)
            self._filters = [f for f in self._filters if f.newest_s >= cutoff]

    def _release(self, slot: int) -> None:
        # Cleared, so a lookup can keep reading every slot of the array.
        self._slices[:, slot >> 3] &= np.uint8(~(1 << (slot & 7)) & 0xFF)
        self._free.append(slot)

    def _take_slot(self) -> int:
        if not self._free:
            lanes = self._slices.shape[1]
            grown = np.zeros((self._m, lanes + 1), dtype=np.uint8)
            grown[:, :lanes] = self._slices
            self._slices = grown
            self._free = list(range(lanes * 8 + 7, lanes * 8 - 1, -1))  # lowest first
        return self._free.pop()

    def _open_filter(self, now_s: float) -> _Filter:
        """The filter that takes an id arriving at `now_s`: one with room whose span holds it.

        The newest filter, but for ids added out of order (warming from the
        store loads older arrivals): those get a filter of their own span.
        """
        for f in reversed(self._filters):
            if f.count < self.capacity_per_filter and f.first_s <= now_s < f.first_s + self.span_s:
                return f
        f = _Filter(self._take_slot(), now_s)
        self._filters.append(f)
        return f

    def positions_many(self, event_ids: Sequence[str]) -> Positions:
        """The bit positions of ids in every filter (all have one size).

        The worker computes them once per id, for the lookup in `prepare`,
        and hands them to the add once the id is durable: computing them
        twice was about 7 % of its samples in a drain.
        """
        return self._shape.positions_many(event_ids)

    def add_many(self, event_ids: Sequence[str], now_s: float) -> None:
        """Remember ids that arrived at `now_s`."""
        for chunk in range(0, len(event_ids), _CHUNK):
            # Chunked: warming loads up to 500,000 ids; a chunk's positions
            # matrix stays a few MB.
            self.add_positions(self.positions_many(event_ids[chunk : chunk + _CHUNK]), now_s)

    def add_positions(self, positions: Positions, now_s: float) -> None:
        """`add_many` of ids whose `positions_many` is already known."""
        if not len(positions):
            return
        self.expire(now_s)
        start = 0
        while start < len(positions):
            f = self._open_filter(now_s)
            part = positions[start : start + self.capacity_per_filter - f.count]
            # Repeated positions all set the same bit: plain fancy |= is exact.
            self._slices[part.ravel(), f.slot >> 3] |= np.uint8(1 << (f.slot & 7))
            f.count += len(part)
            f.newest_s = max(f.newest_s, now_s)
            start += len(part)

    def might_contain_many(self, event_ids: Sequence[str], now_s: float) -> list[bool]:
        return self.might_contain_positions(self.positions_many(event_ids), now_s)

    def might_contain_positions(self, positions: Positions, now_s: float) -> list[bool]:
        """`might_contain_many` of ids whose `positions_many` is already known."""
        self.expire(now_s)
        if not len(positions) or not self._filters:
            return [False] * len(positions)
        # (ids, k, slot bytes): a slot whose k bits are all set has maybe seen the id.
        rows = self._slices[positions]
        out: list[bool] = np.bitwise_and.reduce(rows, axis=1).any(axis=1).tolist()
        return out

    def add(self, event_id: str, now_s: float) -> None:
        self.add_many([event_id], now_s)

    def might_contain(self, event_id: str, now_s: float) -> bool:
        return self.might_contain_many([event_id], now_s)[0]

    @property
    def size_bytes(self) -> int:
        return int(self._slices.nbytes)

    @property
    def filter_count(self) -> int:
        return len(self._filters)

    @property
    def id_count(self) -> int:
        """Ids added to the live filters (a repeated id counts each time)."""
        return sum(f.count for f in self._filters)


class PartitionDedup:
    """Dedup state of one assigned partition.

    `cold_until_s`: a filter rebuilt empty (new assignment, restart) does not
    know the ids made durable before it existed, so until one horizon has
    passed every id is confirmed exactly against the sink, not only the
    filter's positives, unless `warm()` loaded the partition's ids of the
    horizon from the store. A filter carried over a rebalance in which
    nobody else wrote the partition stays warm.
    """

    def __init__(self, bloom: TimeBucketedBloom, *, cold_until_s: float) -> None:
        self.bloom = bloom
        self.cold_until_s = cold_until_s

    def warm(self, known: Iterable[tuple[str, float]]) -> None:
        """Load every id the store holds for this partition within the horizon.

        `known` is (event_id, ingested epoch seconds); afterwards only the
        filter's positives are confirmed, as if it had seen them arrive.
        """
        by_hour: dict[int, list[str]] = {}
        newest: dict[int, float] = {}
        for event_id, ingested_s in known:
            hour = int(ingested_s // _HOUR_S)
            by_hour.setdefault(hour, []).append(event_id)
            newest[hour] = max(newest.get(hour, ingested_s), ingested_s)
        for hour in sorted(by_hour):
            # Added as of the hour's newest arrival: a filter expires a horizon
            # after its newest id, so none of them is forgotten early.
            self.bloom.add_many(by_hour[hour], newest[hour])
        self.cold_until_s = 0.0

    def _maybe(self, positions: Positions, now_s: float) -> list[bool]:
        if now_s < self.cold_until_s:
            return [True] * len(positions)
        return self.bloom.might_contain_positions(positions, now_s)

    def needs_confirmation(self, event_id: str, now_s: float) -> bool:
        return self._maybe(self.bloom.positions_many([event_id]), now_s)[0]

    def check_and_remember(self, event_ids: Sequence[str], now_s: float) -> list[bool]:
        """Which ids need a confirmation; every one of them is remembered from now on.

        Remembered at the lookup, before it is durable: a "maybe seen" is
        always confirmed against the store, so an id remembered but never
        written (its batch dropped by a revocation) costs a confirmation if
        it comes again, never an event. The add right after the lookup finds
        the filter's rows still in the CPU cache: made after the write, it
        was ~10 % of the worker's processing (bench/prepare_bench.py).
        """
        positions = self.bloom.positions_many(event_ids)
        maybe = self._maybe(positions, now_s)
        self.bloom.add_positions(positions, now_s)
        return maybe

    def remember(self, event_id: str, now_s: float) -> None:
        self.bloom.add(event_id, now_s)
