"""Dedup filters asked by event time: a lookup asks only the filters of its id's 10 s.

Also how a filter's bit positions are derived (fastrange).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tokenpulse.streams.dedup import (
    TIME_KEY_S,
    BloomFilter,
    PartitionDedup,
    TimeBucketedBloom,
    time_key,
    time_key_s,
    time_keys,
)

HOUR = 3600.0
_TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(_TIMES)
def test_time_key_is_the_epoch_seconds_floored_to_ten(occurred_at: datetime) -> None:
    # Exact integer arithmetic (timedelta floor division), before 1970 included.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert time_key(occurred_at) == (occurred_at - epoch) // timedelta(seconds=TIME_KEY_S)


@given(st.integers(min_value=-2_208_988_800_000, max_value=10_413_792_000_000))
def test_a_stored_millisecond_time_gets_the_key_of_the_event_it_came_from(ms: int) -> None:
    # The store keeps occurred_at to the millisecond, truncated; warming reads
    # it back as epoch seconds (ms / 1000, DateTime64(3)'s years 1900-2299).
    occurred_at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms, microseconds=999)
    assert time_key_s(ms / 1000) == time_key(occurred_at) == ms // 10_000


def test_time_key_spans_ten_seconds() -> None:
    t = datetime(2026, 12, 2, 18, 0, 0, tzinfo=UTC)
    assert TIME_KEY_S == 10
    assert time_key(t) == time_key(t + timedelta(seconds=9, microseconds=999_999))
    assert time_key(t + timedelta(seconds=10)) == time_key(t) + 1
    assert time_key(t - timedelta(microseconds=1)) == time_key(t) - 1


@given(st.lists(_TIMES, max_size=50))
def test_time_keys_cover_every_time_of_a_run(times: list[datetime]) -> None:
    keys = time_keys(times)
    assert all(time_key(t) in keys for t in times)


def test_time_keys_of_in_order_traffic_are_its_span_and_of_mixed_traffic_its_own_keys() -> None:
    t = datetime(2026, 12, 2, 18, 0, 5, tzinfo=UTC)
    run = [t + timedelta(milliseconds=13 * i) for i in range(2_000)]  # 26 s: keys k..k+3
    assert time_keys(run) == range(time_key(t), time_key(t) + 4)
    # One late event: the last 10 minutes' keys, and the late event's own.
    late = [*run, t - timedelta(hours=3)]
    latest = time_key(run[-1])
    assert time_keys(late) == set(range(latest - 60, latest + 1)) | {time_key(t) - 1080}
    assert not time_keys([])


def _filled(filters: int, capacity: int = 500) -> TimeBucketedBloom:
    """`filters` full filters, each of its own 10 s of event time (key = its index)."""
    bloom = TimeBucketedBloom(horizon_s=48 * HOUR, capacity_per_filter=capacity, fp_rate=0.01)
    for f in range(filters):
        bloom.add_many([f"f{f}-{i}" for i in range(capacity)], 100.0 + f, (f,))
    assert bloom.filter_count == filters
    return bloom


def test_every_id_is_found_by_its_own_key_among_many_filters() -> None:
    bloom = _filled(40)
    for f in (0, 17, 39):
        ids = [f"f{f}-{i}" for i in range(500)]
        assert all(bloom.might_contain_many(ids, 200.0, (f,)))
        assert all(bloom.might_contain_many(ids, 200.0, range(f - 1, f + 2)))
    # Several keys in one lookup (a batch spanning 10 s boundaries, late events).
    mixed = [f"f{f}-{f * 3}" for f in range(40)]
    assert all(bloom.might_contain_many(mixed, 200.0, set(range(40))))


def test_an_unseen_id_is_asked_of_its_keys_filters_only() -> None:
    # 40 full filters at 1 % each: asked all, ~33 % of unseen ids are "maybe";
    # asked by key, ~1 % (the one filter of that key).
    bloom = _filled(40)
    unseen = [f"new-{i}" for i in range(5_000)]
    every = sum(bloom.might_contain_many(unseen, 200.0))
    by_key = sum(bloom.might_contain_many(unseen, 200.0, (39,)))
    assert every > 1_000
    assert by_key < 150
    # A key no filter holds: nothing to ask, never a confirmation.
    assert not any(bloom.might_contain_many(unseen, 200.0, (1_000,)))


def test_ids_added_without_keys_are_asked_by_every_lookup() -> None:
    # 1e-9: no false positive decides an assertion here.
    bloom = TimeBucketedBloom(horizon_s=HOUR, capacity_per_filter=100, fp_rate=1e-9)
    keyed = [f"k-{i}" for i in range(100)]
    bloom.add_many(keyed, 10.0, (5,))  # fills the first filter
    bloom.add_many(["old-style"], 20.0)  # time unknown (a caller without keys): a filter of its own
    assert bloom.filter_count == 2
    assert bloom.might_contain("old-style", 30.0, key=12345)  # asked whatever the key
    assert all(bloom.might_contain_many(keyed, 30.0, (5,)))
    assert not any(bloom.might_contain_many(keyed, 30.0, (6,)))  # only the unkeyed one asked
    assert all(bloom.might_contain_many(keyed, 30.0))  # no keys: every filter asked


def test_an_expired_filter_leaves_its_keys_and_its_slot_is_reused_cleanly() -> None:
    bloom = TimeBucketedBloom(horizon_s=HOUR, capacity_per_filter=10, fp_rate=0.01)
    bloom.add_many([f"a-{i}" for i in range(10)], 0.0, (1,))
    later = 2 * HOUR
    # The first filter expires; the new one takes its slot with other ids and keys.
    bloom.add_many([f"b-{i}" for i in range(10)], later, (2,))
    assert bloom.filter_count == 1
    assert 1 not in bloom._cover  # key 1 has no filter left
    assert not any(bloom.might_contain_many([f"b-{i}" for i in range(10)], later, (1,)))
    assert all(bloom.might_contain_many([f"b-{i}" for i in range(10)], later, (2,)))


def test_an_add_across_filters_covers_its_keys_in_each() -> None:
    bloom = TimeBucketedBloom(horizon_s=HOUR, capacity_per_filter=4, fp_rate=1e-9)
    ids = [f"id-{i}" for i in range(10)]
    bloom.add_many(ids, 5.0, range(7, 9))  # three filters of 4, 4 and 2
    assert bloom.filter_count == 3
    assert {k: bin(v).count("1") for k, v in bloom._cover.items()} == {7: 3, 8: 3}
    assert all(bloom.might_contain_many(ids, 6.0, (8,)))
    bloom.add_many(["more"], 6.0, (8, 9))  # the open filter gains key 9 only
    assert {k: bin(v).count("1") for k, v in bloom._cover.items()} == {7: 3, 8: 3, 9: 1}


def test_a_partition_confirms_its_duplicates_and_few_of_its_new_ids_by_key() -> None:
    bloom = TimeBucketedBloom(horizon_s=48 * HOUR, capacity_per_filter=200, fp_rate=0.01)
    d = PartitionDedup(bloom, cold_until_s=0.0)
    t0 = datetime(2026, 12, 2, tzinfo=UTC)
    for minute in range(30):  # 30 full filters of in-order traffic, a minute each
        ids = [f"m{minute}-{i}" for i in range(200)]
        times = [t0 + timedelta(minutes=minute, seconds=0.3 * i) for i in range(200)]
        d.check_and_remember(ids, 60.0 * minute, time_keys(times))
    # Redelivered, late, mixed with current events: every one needs its
    # confirmation (then the store says "seen").
    again = [f"m{m}-{i}" for m in (0, 12, 29) for i in range(0, 200, 20)]
    again_times = [
        t0 + timedelta(minutes=m, seconds=0.3 * i) for m in (0, 12, 29) for i in range(0, 200, 20)
    ]
    assert all(d.check_and_remember(again, 1800.0, time_keys(again_times)))
    # New ids of the current 10 s ask one or two filters: ~1-2 %, not ~26 % of them.
    new = [f"new-{i}" for i in range(2_000)]
    now = [t0 + timedelta(minutes=29, seconds=55)] * len(new)
    maybe = sum(d.check_and_remember(new, 1800.0, time_keys(now)))
    assert maybe < 80


def test_a_full_filter_keeps_its_false_positive_rate() -> None:
    # Positions come from a multiply and a shift (fastrange), not a modulo:
    # a full filter still answers "maybe" for about fp_rate of unseen ids.
    bloom = BloomFilter(20_000, 0.001)
    bloom.add_many(bloom.positions_many([f"in-{i}" for i in range(20_000)]))
    unseen = bloom.positions_many([f"out-{i}" for i in range(100_000)])
    rate = int(bloom.has_many(unseen).sum()) / 100_000
    assert 0.0005 < rate < 0.002
    assert bool(bloom.has_many(bloom.positions_many(["in-7"]))[0])


def test_positions_fall_within_a_filter_of_any_size() -> None:
    small = BloomFilter(1_000, 0.01)
    assert int(small.positions_many([f"x{i}" for i in range(1_000)]).max()) < small._m
    # Past 2^32 bits (a 512 MB filter) the positions are taken modulo m.
    small._m = (1 << 32) + 12_345
    big = small.positions_many([f"x{i}" for i in range(1_000)])
    assert int(big.max()) < small._m
    assert int(big.max()) >= 1 << 31  # spread over the whole range
