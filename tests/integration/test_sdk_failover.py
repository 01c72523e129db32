"""The SDK's own failure path on a real broker: kill -9 mid-stream, re-queue, new client.

aiokafka with idempotence never expires a batch it is already sending (it
retries for as long as the broker is away), so without the SDK's own
delivery_timeout_ms its re-queue path never ran. Here the broker stays dead
longer than that timeout: the SDK re-queues the unacknowledged events,
replaces the Kafka client, and re-sends once a broker answers again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tokenpulse.errors import InvalidRecord
from tokenpulse.local import _process
from tokenpulse.local.kafka import KafkaNode, KafkaNodeConfig
from tokenpulse.schemas import decode_usage_record
from tokenpulse.sdk import ProducerConfig, SyncUsageProducer

TENANTS = ["acme/research", "acme/ops/agent-7", "globex"]


def _node(tmp_path: Path) -> KafkaNode:
    return KafkaNode(
        KafkaNodeConfig(
            data_dir=tmp_path / "kafka",
            port=_process.pick_free_port(),
            controller_port=_process.pick_free_port(),
        )
    )


def _kill9(node: KafkaNode) -> None:
    """SIGKILL the broker (no controlled shutdown), then reap it for a restart."""
    pid = node.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    node.stop()  # reaps the dead process and removes the pid file


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


async def _event_ids(bootstrap: str, topic: str, expected: int) -> Counter[str]:
    """How often each event_id is on the topic (records, not de-duplicated)."""
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


def _config(node: KafkaNode, topic: str) -> ProducerConfig:
    return ProducerConfig(
        bootstrap_servers=node.bootstrap,
        topic=topic,
        buffer_max_events=100_000,
        # One small batch per partition fills at once while the broker is
        # dead, so send() waits request_timeout_ms and fails into the SDK.
        max_batch_bytes=16 * 1024,
        batch_size=500,
        request_timeout_ms=1_500,
        delivery_timeout_ms=3_000,  # the outages below last longer
        retry_backoff_ms=100,
        retry_backoff_max_ms=1_000,
    )


def _record(producer: SyncUsageProducer, i: int) -> str:
    return producer.record(
        tenant_id=TENANTS[i % 3], model="gpt-4o", input_tokens=i, output_tokens=1
    )


@pytest.mark.integration
@pytest.mark.slow
def test_kill9_mid_stream_runs_the_sdk_resend_path(tmp_path: Path, unique_name: str) -> None:
    node = _node(tmp_path)
    node.start()
    producer = SyncUsageProducer(_config(node, unique_name))
    try:
        asyncio.run(_create_topic(node.bootstrap, unique_name))
        producer.start()
        ids = [_record(producer, i) for i in range(5_000)]
        assert producer.flush(timeout_s=60).ok  # connected and streaming
        ids.extend(_record(producer, i) for i in range(5_000, 10_000))
        _kill9(node)  # mid-stream: part of those are still queued or in flight
        outage_start = time.monotonic()
        # Keep recording while the broker is dead, for longer than the timeout.
        i = len(ids)
        while time.monotonic() - outage_start < 8.0:
            ids.extend(_record(producer, i + k) for k in range(500))
            i += 500
            time.sleep(0.2)
        during = producer.stats()
        node.start()
        ids.extend(_record(producer, i + k) for k in range(10_000))
        report = producer.close(timeout_s=180)
        stats = producer.stats()
        assert report.ok, f"{report.undelivered_count} undelivered"
        assert stats.failed > 0, "the SDK's re-queue path did not run"
        assert stats.sent == len(ids)
        seen = asyncio.run(_event_ids(node.bootstrap, unique_name, len(ids)))
        assert set(seen) == set(ids)  # every event_id delivered, nothing foreign
        duplicates = sum(n - 1 for n in seen.values())
        print(  # for the operator: duplicates are removed downstream by event_id
            f"\nkill -9 test: {len(ids)} events, {sum(seen.values())} Kafka records, "
            f"{duplicates} duplicates, {stats.failed} re-queued send attempts "
            f"({during.failed} during the outage, queue depth then {during.queue_depth})"
        )
    finally:
        producer.close(timeout_s=1)
        node.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_close_with_broker_down_reports_exactly_what_was_not_acked(
    tmp_path: Path, unique_name: str
) -> None:
    node = _node(tmp_path)
    node.start()
    producer = SyncUsageProducer(_config(node, unique_name))
    try:
        asyncio.run(_create_topic(node.bootstrap, unique_name))
        producer.start()
        acked = [_record(producer, i) for i in range(3_000)]
        assert producer.flush(timeout_s=60).ok
        _kill9(node)
        # A full per-partition batch in flight on the dead broker, and more queued.
        stranded = [_record(producer, i) for i in range(3_000, 5_000)]
        time.sleep(3)  # past request_timeout_ms: the SDK's failure path has run
        report = producer.close(timeout_s=3)
        assert report.sent == len(acked)
        assert report.undelivered_count == len(stranded)
        assert sorted(report.undelivered_event_ids) == sorted(stranded)
        assert producer.stats().failed > 0
        # The broker back: exactly the acknowledged events are there.
        node.start()
        seen = asyncio.run(_event_ids(node.bootstrap, unique_name, len(acked)))
        assert set(seen) == set(acked)
    finally:
        producer.close(timeout_s=1)
        node.stop()
