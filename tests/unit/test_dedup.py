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
    # at most the buckets of one horizon (+ the current hour), each two filters
    assert bloom.bucket_count <= 3
    one_filter = BloomFilter(100, 0.01).size_bytes
    assert bloom.size_bytes <= 3 * 2 * one_filter


def test_cold_partition_confirms_everything_until_one_horizon_passed() -> None:
    d = PartitionDedup(TimeBucketedBloom(horizon_s=HOUR), cold_until_s=HOUR)
    assert d.needs_confirmation("never-seen", 10.0)
    assert not d.needs_confirmation("never-seen", HOUR + 1)
    d.remember("x", HOUR + 2)
    assert d.needs_confirmation("x", HOUR + 3)
