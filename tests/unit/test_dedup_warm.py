"""Warming a new partition's dedup filter from the store's ids of the horizon."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from tests.unit.test_dedup_batched import CountingSink, _proc, _rec
from tokenpulse.streams.dedup import PartitionDedup, TimeBucketedBloom

HOUR = 3600.0


class ListingSink(CountingSink):
    """CountingSink that can list its ids per partition (as ClickHouseSink does)."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[tuple[int, ...]] = []

    async def recent_event_ids(
        self, topic: str, partitions: Collection[int], since: datetime, max_ids: int
    ) -> Mapping[int, Sequence[tuple[str, float]]]:
        self.listed.append(tuple(sorted(partitions)))
        out: dict[int, list[tuple[str, float]]] = {}
        for p in partitions:
            ids = [
                (r.event.event_id, r.ingested_at.timestamp())
                for r in self.rows
                if r.topic == topic and r.partition == p
            ]
            if len(ids) <= max_ids:
                out[p] = ids
        return out


async def test_a_restarted_worker_warms_its_filters_and_needs_no_lookup_for_new_ids() -> None:
    sink = ListingSink()
    first = [_rec(i, "acme", f"e{i}", partition=i % 2) for i in range(20)]
    await _proc(sink).process(first)
    sink.batched_calls.clear()
    restarted = _proc(sink)
    fresh = [_rec(100 + i, "acme", f"new{i}", partition=i % 2) for i in range(20)]
    await restarted.process(fresh)
    assert sink.listed[-1] == (0, 1)  # both partitions listed in one call
    # A warm filter answers "not seen" for new ids: no confirmation at all
    # (a false positive at 0.1 % would cost one lookup, never a wrong answer).
    assert sink.batched_calls == []
    assert restarted.counters.accepted == 20


async def test_duplicates_of_warmed_ids_are_still_caught_exactly() -> None:
    sink = ListingSink()
    await _proc(sink).process([_rec(i, "acme", f"e{i}") for i in range(10)])
    restarted = _proc(sink)
    # Redelivered by a producer retry at new offsets: same ids, same tenant.
    again = [_rec(50 + i, "acme", f"e{i}") for i in range(10)] + [_rec(60, "acme", "brand-new")]
    await restarted.process(again)
    assert restarted.counters.duplicates == 10
    assert restarted.counters.accepted == 1
    assert sink.batched_calls == [10]  # only the filter's positives were looked up
    keys = [r.event.event_id for r in sink.rows]
    assert len(keys) == len(set(keys)) == 11


async def test_a_partition_over_the_limit_starts_cold_and_stays_exact() -> None:
    sink = ListingSink()
    await _proc(sink).process([_rec(i, "acme", f"e{i}") for i in range(10)])
    restarted = _proc(sink)
    restarted.partitions.dedup_warm_max_ids = 5  # more ids than that: too big to warm
    await restarted.process([_rec(20, "acme", "e3"), _rec(21, "acme", "x")])
    assert sink.batched_calls == [2]  # cold: every id confirmed
    assert restarted.counters.duplicates == 1
    assert restarted.counters.accepted == 1


def test_warming_with_older_hours_keeps_buckets_in_order_and_expiring() -> None:
    bloom = TimeBucketedBloom(horizon_s=2 * HOUR, capacity_per_filter=100)
    bloom.add("now", 10 * HOUR)
    d = PartitionDedup(bloom, cold_until_s=12 * HOUR)
    d.warm([("h9", 9 * HOUR + 5), ("h8", 8 * HOUR + 5), ("h9b", 9 * HOUR + 6)])
    assert not d.needs_confirmation("never", 10 * HOUR)  # warm: no longer cold
    assert all(d.needs_confirmation(i, 10 * HOUR) for i in ("now", "h9", "h8", "h9b"))
    # Hour 8 expires first, once its newest arrival is a horizon old; hour 9 later.
    assert not bloom.might_contain("h8", 11 * HOUR)
    assert bloom.might_contain("h9", 11 * HOUR)
    assert bloom.might_contain("now", 12 * HOUR)
