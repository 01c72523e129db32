"""Bounded-memory event_id dedup: hourly Bloom filters as a pre-filter.

A Bloom filter never forgets an id it saw (no false negatives), so a
"not seen" answer is final and a "maybe seen" answer is confirmed exactly
against the sink. Filters are kept per hour bucket and dropped once the
whole bucket is older than the horizon, which bounds memory by the ids of
one horizon. See docs/streams.md for the memory math.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

_HOUR_S = 3600


class BloomFilter:
    """A fixed-size Bloom filter over strings (double hashing of one blake2b digest)."""

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

    def _positions(self, item: str) -> list[int]:
        digest = hashlib.blake2b(item.encode("utf-8"), digest_size=16).digest()
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:], "little") | 1
        m = self._m
        return [(h1 + i * h2) % m for i in range(self._k)]

    def add(self, item: str) -> None:
        bits = self._bits
        for pos in self._positions(item):
            bits[pos >> 3] |= 1 << (pos & 7)
        self.count += 1

    def __contains__(self, item: str) -> bool:
        bits = self._bits
        return all(bits[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(item))


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
            filters = self._buckets[hour] = []
            self._buckets.move_to_end(hour)  # hours arrive in order; keep oldest first
            self.expire(now_s)
        if not filters or filters[-1].count >= filters[-1].capacity:
            filters.append(BloomFilter(self.capacity_per_filter, self.fp_rate))
        filters[-1].add(event_id)

    def might_contain(self, event_id: str, now_s: float) -> bool:
        self.expire(now_s)
        return any(event_id in f for filters in self._buckets.values() for f in filters)

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
    filter's positives. A filter carried over a rebalance in which nobody
    else wrote the partition stays warm.
    """

    def __init__(self, bloom: TimeBucketedBloom, *, cold_until_s: float) -> None:
        self.bloom = bloom
        self.cold_until_s = cold_until_s

    def needs_confirmation(self, event_id: str, now_s: float) -> bool:
        return now_s < self.cold_until_s or self.bloom.might_contain(event_id, now_s)

    def remember(self, event_id: str, now_s: float) -> None:
        self.bloom.add(event_id, now_s)
