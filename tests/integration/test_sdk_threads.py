"""SyncUsageProducer shared by many threads at once, against a real broker."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import decode_usage_record
from tokenpulse.sdk import ProducerConfig, SyncUsageProducer

THREADS = 8
PER_THREAD = 5_000


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


async def _event_ids(bootstrap: str, topic: str, expected: int) -> Counter[str]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: Counter[str] = Counter()
    idle = 0
    try:
        while idle < 15:  # ~3 s without records once everything expected is in
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if not batches:
                idle += 1 if len(seen) >= expected else 0
                continue
            idle = 0
            for rows in batches.values():
                for rec in rows:
                    assert rec.value is not None
                    for event in decode_usage_record(rec.value):
                        assert not isinstance(event, InvalidRecord), event.message
                        seen[event.event_id] += 1
    finally:
        await consumer.stop()
    return seen


@pytest.mark.integration
def test_eight_threads_share_one_producer(kafka_bootstrap: str, unique_name: str) -> None:
    asyncio.run(_create_topic(kafka_bootstrap, unique_name))
    config = ProducerConfig(bootstrap_servers=kafka_bootstrap, topic=unique_name)
    ids: list[list[str]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def agent(n: int) -> None:
        try:
            start.wait()  # all threads record at the same moment
            for i in range(PER_THREAD):
                ids[n].append(
                    producer.record(
                        tenant_id=f"acme/agent-{n}",
                        model="gpt-4o",
                        input_tokens=i,
                        output_tokens=n,
                    )
                )
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    with SyncUsageProducer(config) as producer:
        threads = [threading.Thread(target=agent, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        report = producer.close(timeout_s=120)
    stats = producer.stats()
    flat = [eid for per_thread in ids for eid in per_thread]
    assert len(flat) == len(set(flat)) == THREADS * PER_THREAD  # ids unique across threads
    assert report.ok, report.undelivered_count
    assert (stats.sent, stats.dropped, stats.queue_depth) == (len(flat), 0, 0)
    seen = asyncio.run(_event_ids(kafka_bootstrap, unique_name, len(flat)))
    assert set(seen) == set(flat)
    duplicates = sum(n - 1 for n in seen.values())
    print(
        f"\n{THREADS} threads: {len(flat)} events, {duplicates} duplicates, {stats.failed} re-sends"
    )
    if stats.failed == 0:  # no re-send happened, so nothing can be there twice
        assert duplicates == 0
