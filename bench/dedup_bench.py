"""Dedup lookup cost against the number of live Bloom filters of a partition.

A partition keeps a filter per hour of arrival (more when an hour holds
over 200,000 ids) for the whole horizon, so after 48 h at the sizing rate
(10^8 ids a day over 12 partitions) it holds ~100 filters, while the
bench's minutes-long drains see one or two. This times
`TimeBucketedBloom.might_contain_many` for a batch slice of 170 ids (2,000
records over 12 partitions) with 1 to 192 default-size filters (median of
200 calls) and prints one row: us per id for each count.

    .venv/bin/python bench/dedup_bench.py
    bench/ab.sh 1d57c71 2 dedup_bench.py      # against an older commit
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

from tokenpulse.streams.dedup import TimeBucketedBloom

HOUR_S = 3600.0
FILTERS = (1, 48, 96, 192)
BATCH_IDS = 170
CALLS = 200


def lookup_us_per_id(filters: int) -> float:
    """One filter an hour for `filters` hours, then the lookup of fresh ids."""
    now = filters * HOUR_S
    bloom = TimeBucketedBloom(horizon_s=(filters + 1) * HOUR_S)
    for hour in range(filters):
        bloom.add_many([uuid.uuid4().hex for _ in range(100)], hour * HOUR_S)
    ids = [str(uuid.uuid4()) for _ in range(BATCH_IDS)]
    samples = []
    for _ in range(CALLS):
        started = time.perf_counter()
        bloom.might_contain_many(ids, now)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) / BATCH_IDS * 1e6


def main() -> int:
    results = [lookup_us_per_id(f) for f in FILTERS]
    print("| " + " | ".join(f"{f} filters, us/id" for f in FILTERS) + " |")
    print("| " + " | ".join("---" for _ in FILTERS) + " |")
    print("| " + " | ".join(f"{r:.2f}" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
