"""Dedup lookup cost against the number of live Bloom filters of a partition.

A partition keeps its filters (200,000 ids each) for the whole horizon, so
after 48 h at the sizing rate (10^8 ids a day over 12 partitions) it holds
~100 filters, while the bench's minutes-long drains see one or two. This times
`TimeBucketedBloom.might_contain_many` for a batch slice of 170 ids (2,000
records over 12 partitions) with 1 to 192 default-size filters (median of
200 calls) and prints one row: us per id for each count.

A first table is a partition's filters after 50 h of arrivals (every 10
minutes, event time = arrival time) at a trickle, a medium rate and the
sizing rate: live filters, their memory and the share of 100,000 unseen
ids that would need a confirmation query, asked of every filter (the
union's false-positive rate) and, as the worker asks, of the filters that
hold ids of their 10 s of event time (the last 10 s).

    .venv/bin/python bench/dedup_bench.py
    bench/ab.sh 1d57c71 2 dedup_bench.py      # against an older commit
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import uuid

from tokenpulse.streams.dedup import TimeBucketedBloom

HOUR_S = 3600.0
FILTERS = (1, 48, 96, 192)
BATCH_IDS = 170
CALLS = 200
# A trickle, a medium partition and the sizing rate (10^8 ids a day over 12 partitions).
AGED_RATES = (6, 20_000, 347_000)


def lookup_us_per_id(filters: int) -> float:
    """One filter an hour for `filters` hours, then the lookup of fresh ids."""
    now = filters * HOUR_S
    horizon_s = (filters + 1) * HOUR_S
    try:  # a filter an hour, however few ids it holds
        bloom = TimeBucketedBloom(horizon_s=horizon_s, span_s=HOUR_S)
    except TypeError:  # commits before round 9 opened one an hour anyway (bench/ab.sh)
        bloom = TimeBucketedBloom(horizon_s=horizon_s)
    for hour in range(filters):
        bloom.add_many([uuid.uuid4().hex for _ in range(100)], hour * HOUR_S)
    ids = [str(uuid.uuid4()) for _ in range(BATCH_IDS)]
    samples = []
    for _ in range(CALLS):
        started = time.perf_counter()
        bloom.might_contain_many(ids, now)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) / BATCH_IDS * 1e6


def aged(ids_per_hour: int) -> tuple[int, float, float, float]:
    """Live filters, MB and the false-positive rates (every filter, by time key) after 50 h."""
    bloom = TimeBucketedBloom(horizon_s=48 * HOUR_S)
    per_add = max(1, ids_per_hour // 6)
    keyed = True
    for step in range(50 * 6):
        ids = [f"{step}-{i}" for i in range(per_add)]
        if keyed:
            try:  # the 10 minutes of event time the step's ids span
                bloom.add_many(ids, step * 600.0, range(step * 60, step * 60 + 60))
                continue
            except TypeError:  # commits before round 24 had no time keys (bench/ab.sh)
                keyed = False
        bloom.add_many(ids, step * 600.0)
    unseen = [str(uuid.uuid4()) for _ in range(100_000)]
    maybe = sum(bloom.might_contain_many(unseen, 50 * HOUR_S))
    by_key = math.nan
    if keyed:  # ids of the last 10 s of event time
        by_key = sum(bloom.might_contain_many(unseen, 50 * HOUR_S, (50 * 360 - 1,))) / len(unseen)
    return bloom.filter_count, bloom.size_bytes / 1e6, maybe / len(unseen), by_key


def main() -> int:
    print(
        "| ids an hour (one partition) | live filters after 50 h | MB "
        "| unseen ids confirmed, every filter asked | by time key |"
    )
    print("| --- | --- | --- | --- | --- |")
    for rate in AGED_RATES:
        filters, mb, fp, by_key = aged(rate)
        print(f"| {rate:,} | {filters} | {mb:.1f} | {fp:.3%} | {by_key:.4%} |")
    print()
    # Last: bench/ab.sh compares the last line of the output.
    results = [lookup_us_per_id(f) for f in FILTERS]
    print("| " + " | ".join(f"{f} filters, us/id" for f in FILTERS) + " |")
    print("| " + " | ".join("---" for _ in FILTERS) + " |")
    print("| " + " | ".join(f"{r:.2f}" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
