"""The SDK's partitioner puts every key where the Java client and aiokafka's default would."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from tokenpulse.sdk._kafka import KeyHashCache


def test_same_partition_as_the_default_for_every_key_and_count() -> None:
    rng = random.Random(7)
    keys = [f"acme/team-{i}/agent-{rng.randrange(10**6)}".encode() for i in range(2_000)]
    keys += [rng.randbytes(rng.randrange(0, 40)) for _ in range(500)]
    ours, default = KeyHashCache(), DefaultPartitioner()
    for count in (1, 3, 12, 64):
        partitions = list(range(count))
        for key in keys * 2:  # the second pass is answered from the cache
            assert ours(key, partitions, partitions) == default(key, partitions, partitions)


def test_java_client_partitions_for_known_keys() -> None:
    # murmur2 values of the Java client (org.apache.kafka.common.utils.Utils),
    # as pinned in kafka-python's and aiokafka's tests.
    ours = KeyHashCache()
    partitions = list(range(1000))
    assert ours(b"", partitions, partitions) == 681
    assert ours(b"a", partitions, partitions) == 524
    assert ours(b"ab", partitions, partitions) == 434
    assert ours(b"abc", partitions, partitions) == 107
    assert ours(b"123456789", partitions, partitions) == 566
    assert ours(b"\x00 ", partitions, partitions) == 742


def test_the_cache_stays_bounded() -> None:
    ours = KeyHashCache()
    partitions = list(range(6))
    for i in range(KeyHashCache.MAX_KEYS + 10):
        ours(str(i).encode(), partitions, partitions)
    assert len(ours._hashes) <= KeyHashCache.MAX_KEYS


def test_no_key_picks_an_available_partition() -> None:
    ours = KeyHashCache()
    assert ours(None, [0, 1, 2], [2]) == 2
