"""Bounded-memory event_id dedup: Bloom filters over spans of arrival time as a pre-filter.

A Bloom filter never forgets an id it saw (no false negatives), so a
"not seen" answer is final and a "maybe seen" answer is confirmed exactly
against the sink. A filter is dropped once its newest id is older than the
horizon, which bounds memory by the ids of about one horizon. See
docs/streams.md for the memory math.

The worker asks about a whole batch of ids at once (`*_many`): positions are
computed and tested with numpy, ~20x cheaper per id than a Python loop over
k positions (the loop was ~15 % of the worker's CPU).

A lookup asks only the filters that hold ids of the same 10 s of event time
(`time_key`): a duplicate repeats its original's occurred_at, and the
chance that an unseen id needs a confirmation query grows with the number
of filters asked, which after a horizon at the sizing rate is ~85 a
partition (12 partitions). See docs/streams.md.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

_HOUR_S = 3600
_SPANS_PER_HORIZON = 6  # a filter takes at most this fraction of the horizon's arrivals
_CHUNK = 50_000
_U32 = np.uint64(0xFFFF_FFFF)
# Event time is keyed in spans of this many seconds (`time_key`).
TIME_KEY_S = 10
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()
_KEYS_PER_DAY = 86_400 // TIME_KEY_S
_KEYS_PER_HOUR = 3600 // TIME_KEY_S
_KEYS_PER_MINUTE = 60 // TIME_KEY_S
# A run of ids whose event times span at most this many keys (10 min) is
# keyed by its span, from its earliest and latest time alone; a wider one
# (late events among current ones) by each id's own key.
_SPAN_KEYS = 60
_SPAN = timedelta(seconds=_SPAN_KEYS * TIME_KEY_S)

Positions = npt.NDArray[np.uint64]  # (ids, k) bit positions


def time_key(occurred_at: datetime) -> int:
    """The 10 s span of event time an event falls in: floor(epoch seconds / 10).

    From the UTC fields rather than `timestamp()`, which cost 2.5x as much
    (0.18 against 0.07 us an event), and exact (no float); `occurred_at` is
    UTC (the contract normalizes it on decode). The store keeps it to the
    millisecond, truncated, which keeps its second: `time_key_s` of that
    reading is the same key.
    """
    return (
        (occurred_at.toordinal() - _EPOCH_ORDINAL) * _KEYS_PER_DAY
        + occurred_at.hour * _KEYS_PER_HOUR
        + occurred_at.minute * _KEYS_PER_MINUTE
        + occurred_at.second // TIME_KEY_S
    )


def time_key_s(epoch_s: float) -> int:
    """`time_key` of an event time given in epoch seconds (ids read back from the store)."""
    return math.floor(epoch_s) // TIME_KEY_S


def time_keys(times: Sequence[datetime]) -> Collection[int]:
    """The `time_key`s of a run of event times, or a few more (a superset is what counts).

    In-order traffic: the span from the earliest to the latest key, which
    costs two comparisons an event (min, max) instead of a key each. Late
    events among current ones: the last 10 minutes' span and the late
    events' own keys (a comparison an event, a key each late one).
    """
    if not times:
        return ()
    latest = max(times)
    lo, hi = time_key(min(times)), time_key(latest)
    if hi - lo <= _SPAN_KEYS:
        return range(lo, hi + 1)
    cut = latest - _SPAN
    keys = set(range(time_key(cut), hi + 1))
    keys.update([time_key(t) for t in times if t < cut])
    return keys


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
        # h1 < 2^32 and k * h2 < 2^37: no uint64 overflow before the reduction.
        g = h1[:, None] + steps[None, :] * h2[:, None]
        m = np.uint64(self._m)
        if self._m < 1 << 32:
            # The low 32 bits mapped onto [0, m) by a multiply and a shift
            # (Lemire's fastrange) instead of a modulo: 96 against 126 ns an
            # id at k = 17 and 333 ids (the filters live in one process, so
            # how positions are derived may change between versions).
            out: Positions = ((g & _U32) * m) >> np.uint64(32)
            return out
        out = g % m
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

    __slots__ = ("count", "first_s", "keys", "newest_s", "slot")

    def __init__(self, slot: int, now_s: float) -> None:
        self.slot = slot
        self.first_s = now_s  # the arrival that opened it
        self.newest_s = now_s  # its newest arrival: it expires a horizon after
        self.count = 0
        self.keys: set[int] = set()  # the time keys of its ids (see TimeBucketedBloom._cover)


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

    Each filter also records the time keys (`time_key`, 10 s of event time)
    of its ids, and `_cover` maps a key to the slots that hold one: a lookup
    given the keys of its ids asks only those filters. A duplicate repeats
    its original's occurred_at, so it is still always found; an unseen id of
    in-order traffic is asked of the one or two filters that were open
    during its 10 s instead of every live filter, which is what the chance
    of a confirmation query grows with (~85 filters a partition after a
    horizon at the sizing rate: 0.8 % of unseen ids at 0.01 % a filter).
    `keys` is one collection for all ids of a call, a superset of their
    keys (`time_keys`): a filter may record more keys than it holds, and a
    lookup may ask more filters than needed, never fewer. Ids added without
    keys make their filter answer every lookup.
    """

    # fp_rate is per filter, and a lookup asks every filter that covers its
    # id's time key: the chance that an unseen id needs a confirmation query
    # is about those filters x fp_rate, and a prepared batch of 2,000 ids
    # queries if any one does. At 0.001 a partition's one filter, filled to
    # capacity by a 20 s warm-up at 43k events/s, sent a confirmation query
    # with most prepared batches (endpoint queries 12.8 -> 23.9 a second,
    # freshness p99 0.95 -> 2.97 s in bench/latency_bench.py). At 0.0001
    # (19.2 bits an id), 37 % of the batches at 80k events/s still queried,
    # ~8 ms of the endpoint's CPU each (1.5 us an event); 0.00001 costs
    # 24 bits an id. See docs/streams.md.
    def __init__(
        self,
        *,
        horizon_s: float,
        capacity_per_filter: int = 200_000,
        fp_rate: float = 0.00001,
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
        # Time key -> the slots whose filters hold an id of it (a bit per slot),
        # and the slots of filters with ids of unknown time (asked always).
        self._cover: dict[int, int] = {}
        self._unkeyed = 0

    def expire(self, now_s: float) -> None:
        """Drop the filters whose newest id is older than the horizon."""
        cutoff = now_s - self.horizon_s
        if any(f.newest_s < cutoff for f in self._filters):
            for f in self._filters:
                if f.newest_s < cutoff:
                    self._release(f)
            self._filters = [f for f in self._filters if f.newest_s >= cutoff]

    def _release(self, f: _Filter) -> None:
        slot = f.slot
        # Cleared, so a lookup can keep reading every slot of the array.
        self._slices[:, slot >> 3] &= np.uint8(~(1 << (slot & 7)) & 0xFF)
        keep = ~(1 << slot)
        for key in f.keys:
            left = self._cover[key] & keep
            if left:
                self._cover[key] = left
            else:
                del self._cover[key]
        self._unkeyed &= keep
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

    def add_many(
        self, event_ids: Sequence[str], now_s: float, keys: Collection[int] | None = None
    ) -> None:
        """Remember ids that arrived at `now_s`; `keys` covers their `time_key`s (None: unknown)."""
        for chunk in range(0, len(event_ids), _CHUNK):
            # Chunked: warming loads up to 500,000 ids; a chunk's positions
            # matrix stays a few MB.
            self.add_positions(self.positions_many(event_ids[chunk : chunk + _CHUNK]), now_s, keys)

    def add_positions(
        self, positions: Positions, now_s: float, keys: Collection[int] | None = None
    ) -> None:
        """`add_many` of ids whose `positions_many` is already known."""
        if not len(positions):
            return
        self.expire(now_s)
        start = 0
        while start < len(positions):
            f = self._open_filter(now_s)
            end = start + min(self.capacity_per_filter - f.count, len(positions) - start)
            part = positions[start:end]
            # Repeated positions all set the same bit: plain fancy |= is exact.
            self._slices[part.ravel(), f.slot >> 3] |= np.uint8(1 << (f.slot & 7))
            self._cover_keys(f, keys)
            f.count += len(part)
            f.newest_s = max(f.newest_s, now_s)
            start = end

    def _cover_keys(self, f: _Filter, keys: Collection[int] | None) -> None:
        bit = 1 << f.slot
        if keys is None:  # ids of unknown time: every lookup asks this filter
            self._unkeyed |= bit
            return
        cover = self._cover
        # In-order traffic: one or two keys, mostly already the filter's.
        held = f.keys
        for key in keys:
            if key not in held:
                cover[key] = cover.get(key, 0) | bit
                held.add(key)

    def might_contain_many(
        self, event_ids: Sequence[str], now_s: float, keys: Collection[int] | None = None
    ) -> list[bool]:
        return self.might_contain_positions(self.positions_many(event_ids), now_s, keys)

    def might_contain_positions(
        self, positions: Positions, now_s: float, keys: Collection[int] | None = None
    ) -> list[bool]:
        """`might_contain_many` of ids whose `positions_many` is already known.

        With `keys` (covering the ids' `time_key`s), only the filters holding
        ids of those keys (or of unknown time) are asked; without, every one.
        """
        self.expire(now_s)
        if not len(positions) or not self._filters:
            return [False] * len(positions)
        slices = self._slices
        if keys is not None:
            cover = self._cover
            slots = self._unkeyed
            for key in keys:
                slots |= cover.get(key, 0)
            if not slots:
                return [False] * len(positions)  # no filter holds an id of these times
            if slots.bit_length() <= 8 * (slices.shape[1] - 1):
                # Only the leading slot bytes hold asked filters: read those alone.
                slices = slices[:, : (slots.bit_length() + 7) // 8]
            mask = np.frombuffer(slots.to_bytes(slices.shape[1], "little"), dtype=np.uint8)
        # (ids, k, slot bytes): a slot whose k bits are all set has maybe seen the id.
        maybe = np.bitwise_and.reduce(slices[positions], axis=1)
        if keys is not None:
            maybe &= mask
        out: list[bool] = maybe.any(axis=1).tolist()
        return out

    def add(self, event_id: str, now_s: float, key: int | None = None) -> None:
        self.add_many([event_id], now_s, None if key is None else (key,))

    def might_contain(self, event_id: str, now_s: float, key: int | None = None) -> bool:
        return self.might_contain_many([event_id], now_s, None if key is None else (key,))[0]

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

    def warm(self, known: Iterable[tuple[str, float, float]]) -> None:
        """Load every id the store holds for this partition within the horizon.

        `known` is (event_id, ingested epoch seconds, occurred_at epoch
        seconds); afterwards only the filter's positives are confirmed, as if
        it had seen them arrive.
        """
        by_hour: dict[int, tuple[list[str], set[int]]] = {}
        newest: dict[int, float] = {}
        for event_id, ingested_s, occurred_s in known:
            hour = int(ingested_s // _HOUR_S)
            ids, keys = by_hour.setdefault(hour, ([], set()))
            ids.append(event_id)
            keys.add(time_key_s(occurred_s))
            newest[hour] = max(newest.get(hour, ingested_s), ingested_s)
        for hour in sorted(by_hour):
            # Added as of the hour's newest arrival: a filter expires a horizon
            # after its newest id, so none of them is forgotten early.
            ids, keys = by_hour[hour]
            self.bloom.add_many(ids, newest[hour], keys)
        self.cold_until_s = 0.0

    def _maybe(
        self, positions: Positions, now_s: float, keys: Collection[int] | None
    ) -> list[bool]:
        if now_s < self.cold_until_s:
            return [True] * len(positions)
        return self.bloom.might_contain_positions(positions, now_s, keys)

    def needs_confirmation(self, event_id: str, now_s: float, key: int | None = None) -> bool:
        keys = None if key is None else (key,)
        return self._maybe(self.bloom.positions_many([event_id]), now_s, keys)[0]

    def check_and_remember(
        self, event_ids: Sequence[str], now_s: float, keys: Collection[int] | None = None
    ) -> list[bool]:
        """Which ids need a confirmation; every one of them is remembered from now on.

        `keys`: the ids' `time_keys` (None: unknown; every filter is asked,
        and the filter that takes them answers every lookup).
        Remembered at the lookup, before it is durable: a "maybe seen" is
        always confirmed against the store, so an id remembered but never
        written (its batch dropped by a revocation) costs a confirmation if
        it comes again, never an event. The add right after the lookup finds
        the filter's rows still in the CPU cache: made after the write, it
        was ~10 % of the worker's processing (bench/prepare_bench.py).
        """
        positions = self.bloom.positions_many(event_ids)
        maybe = self._maybe(positions, now_s, keys)
        self.bloom.add_positions(positions, now_s, keys)
        return maybe

    def remember(self, event_id: str, now_s: float, key: int | None = None) -> None:
        self.bloom.add(event_id, now_s, key)
