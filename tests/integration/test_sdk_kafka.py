"""The SDK against real Kafka: signed delivery, broker down at start, restart mid-stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from tokenpulse.errors import InvalidRecord
from tokenpulse.local import _process
from tokenpulse.local.kafka import KafkaNode, KafkaNodeConfig
from tokenpulse.schemas import Keyring, UsageEvent, decode_usage_record, verify_record
from tokenpulse.sdk import ProducerConfig, SyncUsageProducer, UsageProducer

log = logging.getLogger(__name__)
TENANTS = ["acme/research", "acme/ops/agent-7", "globex"]


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def _consume(
    bootstrap: str, topic: str, expected: int, keyring: Keyring | None = None
) -> tuple[list[UsageEvent], int]:
    """Every event on the topic (envelopes unpacked) and the number of Kafka records."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[UsageEvent] = []
    records = 0
    idle = 0
    try:
        while idle < 20:  # stop after ~4 s without new records
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if not batches:
                idle += 1 if len(events) >= expected else 0
                continue
            idle = 0
            for rows in batches.values():
                for rec in rows:
                    records += 1
                    assert rec.value is not None
                    for result in decode_usage_record(rec.value):
                        assert not isinstance(result, InvalidRecord), result.message
                        assert rec.key == result.tenant_id.encode()
                        if keyring is not None:
                            verify_record(
                                rec.value, rec.headers, tenant_id=result.tenant_id, keyring=keyring
                            )
                        events.append(result)
    finally:
        await consumer.stop()
    return events, records


@pytest.mark.integration
@pytest.mark.parametrize("envelope", [False, True], ids=["per-event", "envelope"])
async def test_signed_events_reach_kafka_exactly(
    kafka_bootstrap: str, unique_name: str, envelope: bool
) -> None:
    await _create_topic(kafka_bootstrap, unique_name)
    keyring = Keyring({"acme": {"k1": b"s3cret"}, "globex": {"g1": b"other"}})
    config = ProducerConfig(
        bootstrap_servers=kafka_bootstrap,
        topic=unique_name,
        envelope=envelope,
        signing_tenant_id="acme",
        signing_key_id="k1",
        signing_secret=b"s3cret",
    )
    sent: dict[str, str] = {}
    async with UsageProducer(config) as producer:
        for i in range(5000):
            tenant = TENANTS[i % 2]  # acme's key speaks for acme's subtree only
            eid = await producer.record(
                tenant_id=tenant, model="gpt-4o", input_tokens=i, output_tokens=1
            )
            sent[eid] = tenant
        report = await producer.flush(timeout_s=60)
        assert report.ok, report.undelivered_count
    stats = producer.stats()
    assert (stats.sent, stats.dropped, stats.queue_depth) == (5000, 0, 0)
    events, records = await _consume(kafka_bootstrap, unique_name, 5000, keyring)
    assert Counter(e.event_id for e in events) == Counter(sent.keys())
    assert {e.event_id: e.tenant_id for e in events} == sent
    assert (records < 5000) if envelope else (records == 5000)


@pytest.mark.integration
@pytest.mark.slow
def test_broker_down_at_start_then_restarted_midway(tmp_path: Path, unique_name: str) -> None:
    node = KafkaNode(
        KafkaNodeConfig(
            data_dir=tmp_path / "kafka",
            port=_process.pick_free_port(),
            controller_port=_process.pick_free_port(),
        )
    )
    config = ProducerConfig(
        bootstrap_servers=node.bootstrap,
        topic=unique_name,
        buffer_max_events=200_000,
        # Shorter than the 6 s outage below. Observed: aiokafka keeps retrying
        # batches whose leader is known, so its own retries deliver them;
        # the SDK's re-queue path is logged in stats().failed (printed).
        request_timeout_ms=2_000,
        retry_backoff_max_ms=2_000,
    )
    total = 100_000
    ids: list[str] = []
    producer = SyncUsageProducer(config)
    producer.start()
    try:
        # 1. Broker down at start: events wait in the buffer.
        for i in range(1_000):
            ids.append(
                producer.record(
                    tenant_id=TENANTS[i % 3], model="m", input_tokens=i, output_tokens=0
                )
            )
        assert producer.stats().queue_depth == 1_000
        node.start()
        asyncio.run(_create_topic(node.bootstrap, unique_name))
        # 2. Stream, restart the broker midway, stream on.
        for i in range(1_000, total):
            if i == total // 2:
                node.stop()
                log.warning("broker stopped at %d events", i)
                time.sleep(6)
            if i == total // 2 + 20_000:
                node.start()
                log.warning("broker restarted at %d events", i)
            ids.append(
                producer.record(
                    tenant_id=TENANTS[i % 3], model="m", input_tokens=i, output_tokens=0
                )
            )
        report = producer.close(timeout_s=240)
        assert report.ok, f"{report.undelivered_count} undelivered"
        stats = producer.stats()
        events, records = asyncio.run(_consume(node.bootstrap, unique_name, total))
        seen = Counter(e.event_id for e in events)
        duplicates = sum(n - 1 for n in seen.values())
        # What the downstream dedup sees: every event_id, exactly the set sent.
        assert set(seen) == set(ids)
        assert len(ids) == total
        print(  # reported in the test log for the operator
            f"\nrestart test: {total} events, {records} Kafka records, "
            f"{duplicates} duplicate deliveries (de-duplicated by event_id), "
            f"{stats.failed} send attempts re-queued"
        )
    finally:
        producer.close(timeout_s=1)
        node.stop()
