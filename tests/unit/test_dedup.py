"""Dedup filter: no false negatives, horizon expiry, bounded memory."""

from __future__ import annotations

from tokenpulse.streams.dedup import BloomFilter, PartitionDedup, TimeBucketedBloom

HOUR = 3600.0


def test_bloom_never_forgets_and_false_positive_rate_is_near_target() -> None:
    f = BloomFilter(10_000, 0.01)
    ids = [f"id-{i}" for i in range(10_000)]
    for i in ids:
        f.add(i)
    assert all(i in f for i in ids)
    fp = sum(f"other-{i}" in f for i in range(20_000)) / 20_000
    assert fp < 0.03


def test_buckets_expire_after_horizon() -> None:
    bloom = TimeBucketedBloom(horizon_s=48 * HOUR, capacity_per_filter=1000)
    bloom.add("old", 0.0)
    assert bloom.might_contain("old", 47 * HOUR)
    bloom.add("new", 50 * HOUR)
    assert not bloom.might_contain("old", 50 * HOUR)
    assert bloom.might_contain("new", 50 * HOUR)


def test_memory_is_bounded_by_the_horizon() -> None:
    bloom = TimeBucketedBloom(horizon_s=2 * HOUR, capacity_per_filter=100, fp_rate=0.01)
    for hour in range(100):
        for i in range(150):
            bloom.add(f"{hour}-{i}", hour * HOUR + i)
    # At most the filters of one horizon and its edge: 4 hours' ids, two filters each.
    assert bloom.filter_count <= 8
    # Expired filters' slots are reused: the slices never grew past one byte
    # of slots (8 filters' worth of bits).
    one_filter = BloomFilter(100, 0.01).size_bytes
    assert bloom.size_bytes <= 8 * one_filter


def test_many_filters_answer_like_one_and_expired_slots_are_reused() -> None:
    """Bit-sliced filters: each keeps its own ids, expiry forgets exactly its own."""
    bloom = TimeBucketedBloom(
        horizon_s=10 * HOUR, capacity_per_filter=50, fp_rate=0.001, span_s=HOUR
    )
    for hour in range(10):
        bloom.add_many([f"h{hour}-{i}" for i in range(120)], hour * HOUR)  # 3 filters an hour
    assert bloom.filter_count == 30
    now = 10 * HOUR - 1
    assert all(bloom.might_contain_many([f"h{h}-{i}" for i in range(120)], now) for h in range(10))
    strangers = bloom.might_contain_many([f"x-{i}" for i in range(5000)], now)
    assert sum(strangers) < 5000 * 30 * 0.001 * 3  # the union of 30 filters at 0.1 % each
    size = bloom.size_bytes
    # Hour 0 expires just after 10 h: its three slots are freed, cleared and taken again.
    later = 10 * HOUR + 1
    bloom.add_many([f"n-{i}" for i in range(120)], later)
    assert bloom.filter_count == 30
    assert bloom.size_bytes == size
    # Exactly what a filter that never saw hour 0 answers: no bit of it is left.
    fresh = TimeBucketedBloom(
        horizon_s=10 * HOUR, capacity_per_filter=50, fp_rate=0.001, span_s=HOUR
    )
    for hour in range(1, 10):
        fresh.add_many([f"h{hour}-{i}" for i in range(120)], hour * HOUR)
    fresh.add_many([f"n-{i}" for i in range(120)], later)
    probe = [f"h{h}-{i}" for h in range(10) for i in range(120)] + [f"y-{i}" for i in range(3000)]
    assert bloom.might_contain_many(probe, later) == fresh.might_contain_many(probe, later)


def test_a_slow_partition_keeps_few_filters_and_forgets_no_id_of_its_horizon() -> None:
    # One id every 10 minutes for 4 days: hour-long filters kept 49 nearly
    # empty ones (7 slot bytes); a filter now takes up to a sixth of the
    # horizon, so one slot byte (8 filters) holds them all.
    horizon = 48 * HOUR
    bloom = TimeBucketedBloom(horizon_s=horizon)
    arrivals: list[tuple[str, float]] = []
    for n in range(4 * 24 * 6):
        now = n * 600.0
        bloom.add(f"id-{n}", now)
        arrivals.append((f"id-{n}", now))
        assert bloom.filter_count <= 7
        if n % 50 == 0:  # every id of the horizon, the oldest included, is still known
            inside = [i for i, t in arrivals if t >= now - horizon]
            assert all(bloom.might_contain_many(inside, now))
    one_filter = BloomFilter(200_000, bloom.fp_rate).size_bytes
    # One slot byte: a byte per bit position, 8 filters (rounding of m / 8 aside).
    assert bloom.size_bytes <= 8 * one_filter < bloom.size_bytes + 8
    # The first day's ids are forgotten once their filter's newest id is a horizon old.
    assert not any(bloom.might_contain_many([f"id-{n}" for n in range(100)], now))


def test_a_fast_partition_chains_full_filters_and_an_old_arrival_gets_its_own() -> None:
    bloom = TimeBucketedBloom(horizon_s=48 * HOUR, capacity_per_filter=100)
    bloom.add_many([f"a-{i}" for i in range(250)], 10 * HOUR)
    assert bloom.filter_count == 3  # 100 + 100 + 50
    bloom.add_many([f"b-{i}" for i in range(50)], 10 * HOUR + 60)
    assert bloom.filter_count == 3  # the third filter had room, and its span holds them
    bloom.add("older", 9 * HOUR)  # out of order (warming): outside every open span
    assert bloom.filter_count == 4
    # It expires a horizon after its own arrival, before the newer ones.
    assert not bloom.might_contain("older", 57 * HOUR + 1)
    assert bloom.might_contain("a-0", 57 * HOUR + 1)


def test_cold_partition_confirms_everything_until_one_horizon_passed() -> None:
    d = PartitionDedup(TimeBucketedBloom(horizon_s=HOUR), cold_until_s=HOUR)
    assert d.needs_confirmation("never-seen", 10.0)
    assert not d.needs_confirmation("never-seen", HOUR + 1)
    d.remember("x", HOUR + 2)
    assert d.needs_confirmation("x", HOUR + 3)
