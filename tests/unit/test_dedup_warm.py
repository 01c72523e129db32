"""Warming a new partition's dedup filter from the store's ids of the horizon."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from tests.unit.test_dedup_batched import CountingSink, _proc, _rec
from tokenpulse.streams.dedup import PartitionDedup, TimeBucketedBloom, time_key_s

HOUR = 3600.0


class ListingSink(CountingSink):
    """CountingSink that can list its ids per partition (as ClickHouseSink does)."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[tuple[int, ...]] = []

    async def recent_event_ids(
        self, topic: str, partitions: Collection[int], since: datetime, max_ids: int
    ) -> Mapping[int, Sequence[tuple[str, float, float]]]:
        self.listed.append(tuple(sorted(partitions)))
        out: dict[int, list[tuple[str, float, float]]] = {}
        for p in partitions:
            ids = [
                (r.event.event_id, r.ingested_at.timestamp(), r.event.occurred_at.timestamp())
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
    again = [_rec(50 + i, "acme", f"e{i}", occurred_s=i) for i in range(10)]
    again.append(_rec(60, "acme", "brand-new"))
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
    d.warm([("h9", 9 * HOUR + 5, 100.0), ("h8", 8 * HOUR + 5, 200.0), ("h9b", 9 * HOUR + 6, 0.0)])
    assert not d.needs_confirmation("never", 10 * HOUR)  # warm: no longer cold
    assert all(d.needs_confirmation(i, 10 * HOUR) for i in ("now", "h9", "h8", "h9b"))
    # Warmed with their event times: a lookup by an id's own time key finds it.
    for event_id, occurred_s in (("h9", 100.0), ("h8", 200.0), ("h9b", 0.0)):
        assert d.needs_confirmation(event_id, 10 * HOUR, time_key_s(occurred_s))
    # Hour 8 expires first, once its newest arrival is a horizon old; hour 9 later.
    assert not bloom.might_contain("h8", 11 * HOUR)
    assert bloom.might_contain("h9", 11 * HOUR)
    assert bloom.might_contain("now", 12 * HOUR)


async def test_late_redeliveries_among_current_events_are_found_by_their_own_event_time() -> None:
    sink = ListingSink()
    p = _proc(sink)
    await p.process([_rec(i, "acme", f"e{i}") for i in range(10)])  # occurred T0 + 0..9 s
    sink.batched_calls.clear()
    # An hour of event time later, redeliveries of the first events (their own
    # occurred_at) arrive among current events: the slice spans more than
    # 10 minutes, so each event is asked by its own time key.
    current = [_rec(3600 + i, "acme", f"now{i}") for i in range(20)]
    again = [_rec(3620 + i, "acme", f"e{i}", occurred_s=i) for i in range(0, 10, 3)]
    await p.process(current[:10] + again + current[10:])
    assert p.counters.duplicates == 4
    assert p.counters.accepted == 30
    # Only the redeliveries were looked up (one query); the current events
    # were asked of the one filter of the slice's keys that holds ids, at
    # 0.001 % a filter: a false positive among them is a 1-in-5,000 run.
    assert len(sink.batched_calls) == 1
    assert 4 <= sink.batched_calls[0] <= 5
