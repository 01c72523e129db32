"""Bounded-memory event_id dedup: hourly Bloom filters as a pre-filter.

A Bloom filter never forgets an id it saw (no false negatives), so a
"not seen" answer is final and a "maybe seen" answer is confirmed exactly
against the sink. Filters are kept per hour bucket and dropped once the
whole bucket is older than the horizon, which bounds memory by the ids of
one horizon. See docs/streams.md for the memory math.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

_HOUR_S = 3600


class BloomFilter:
    """A fixed-size Bloom filter over strings (double hashing of Python's string hash).

    The filter lives in one process and is rebuilt from the store after a
    restart, so the process-salted `hash(str)` (SipHash, cached on the string
    object) is a sound and cheap source of the two hashes; blake2b cost ~4x
    more per id. All filters of one size share their positions
    (`positions()`), so a lookup across many filters hashes once.
    """

    __slots__ = ("_bits", "_k", "_m", "capacity", "count")

    def __init__(self, capacity: int, fp_rate: float) -> None:
        if capacity <= 0 or not 0.0 < fp_rate < 1.0:
            raise ValueError("capacity must be > 0 and 0 < fp_rate < 1")
        # Optimal size and hash count for `capacity` items at `fp_rate`.
        m = math.ceil(-capacity * math.log(fp_rate) / (math.log(2) ** 2))
        self._m = max(64, m)
        self._k = max(1, round(self._m / capacity * math.log(2)))
        self._bits = bytearray((self._m + 7) // 8)
        self.capacity = capacity
        self.count = 0

    @property
    def size_bytes(self) -> int:
        return len(self._bits)

    def positions(self, item: str) -> list[int]:
        h = hash(item) & 0xFFFF_FFFF_FFFF_FFFF
        h1 = h & 0xFFFF_FFFF
        h2 = (h >> 32) | 1
        m = self._m
        return [(h1 + i * h2) % m for i in range(self._k)]

    def add_positions(self, positions: list[int]) -> None:
        bits = self._bits
        for pos in positions:
            bits[pos >> 3] |= 1 << (pos & 7)
        self.count += 1

    def has_positions(self, positions: list[int]) -> bool:
        bits = self._bits
        for pos in positions:  # noqa: SIM110 - a plain loop: all() over a genexpr is ~2x slower
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
        return True

    def add(self, item: str) -> None:
        self.add_positions(self.positions(item))

    def __contains__(self, item: str) -> bool:
        return self.has_positions(self.positions(item))


class TimeBucketedBloom:
    """Bloom filters per hour bucket of arrival time, expired after `horizon_s`.

    Each bucket grows by chaining another filter when the current one is
    full, so the false-positive rate stays at `fp_rate` per filter however
    many ids arrive, and memory grows with the ids actually seen within the
    horizon, never beyond it.
    """

    def __init__(
        self, *, horizon_s: float, capacity_per_filter: int = 200_000, fp_rate: float = 0.001
    ) -> None:
        self.horizon_s = horizon_s
        self.capacity_per_filter = capacity_per_filter
        self.fp_rate = fp_rate
        self._buckets: OrderedDict[int, list[BloomFilter]] = OrderedDict()

    def expire(self, now_s: float) -> None:
        """Drop buckets whose newest possible arrival is older than the horizon."""
        while self._buckets:
            hour = next(iter(self._buckets))
            if (hour + 1) * _HOUR_S + self.horizon_s > now_s:
                break
            self._buckets.popitem(last=False)

    def add(self, event_id: str, now_s: float) -> None:
        hour = int(now_s // _HOUR_S)
        filters = self._buckets.get(hour)
        if filters is None:
            older = bool(self._buckets) and hour < next(reversed(self._buckets))
            filters = self._buckets[hour] = []
            if older:
                # An older hour (warming from the store): keep oldest first,
                # which expire() relies on.
                self._buckets = OrderedDict(sorted(self._buckets.items()))
            self.expire(now_s)
        if not filters or filters[-1].count >= filters[-1].capacity:
            filters.append(BloomFilter(self.capacity_per_filter, self.fp_rate))
        filters[-1].add(event_id)

    def might_contain(self, event_id: str, now_s: float) -> bool:
        self.expire(now_s)
        positions: list[int] | None = None
        for filters in self._buckets.values():
            for f in filters:
                if positions is None:
                    positions = f.positions(event_id)  # every filter has the same size
                if f.has_positions(positions):
                    return True
        return False

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for filters in self._buckets.values() for f in filters)

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)


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
        for event_id, ingested_s in known:
            self.bloom.add(event_id, ingested_s)
        self.cold_until_s = 0.0

    def needs_confirmation(self, event_id: str, now_s: float) -> bool:
        return now_s < self.cold_until_s or self.bloom.might_contain(event_id, now_s)

    def remember(self, event_id: str, now_s: float) -> None:
        self.bloom.add(event_id, now_s)
