"""The SDK against a topic whose max.message.bytes is below the SDK's max_batch_bytes.

The broker rejects a record batch above the topic's limit (MESSAGE_TOO_LARGE).
Every accepted event must end up either on Kafka or in the DeliveryReport with
a reason; none may be re-sent forever.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.test_sdk_kafka import _consume
from tokenpulse.errors import InvalidRecord
from tokenpulse.sdk import ProducerConfig, UsageProducer, _pipeline

LIMIT = 64 * 1024


async def _create_topic(bootstrap: str, topic: str, max_message_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=3,
                    replication_factor=1,
                    topic_configs={"max.message.bytes": str(max_message_bytes)},
                )
            ]
        )
    finally:
        await admin.close()


def _config(bootstrap: str, topic: str, **overrides: Any) -> ProducerConfig:
    # 1 MiB uncompressed batches of ~370-byte events: 3000 of them make batches
    # of 300+ KiB per partition, five times the topic's limit.
    config = ProducerConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        max_batch_bytes=1024 * 1024,
        compression="none",
        request_timeout_ms=10_000,
        delivery_timeout_ms=20_000,
    )
    return replace(config, **overrides)


async def _record(producer: UsageProducer, n: int) -> list[str]:
    return [
        await producer.record(
            tenant_id=f"tenant-{i % 7}",
            model="gpt-4o",
            input_tokens=i,
            output_tokens=1,
            attributes={"note": "v" * 200},
        )
        for i in range(n)
    ]


@pytest.mark.integration
@pytest.mark.parametrize("envelope", [False, True], ids=["per-event", "envelope"])
async def test_batches_the_broker_rejects_as_too_large_are_split_until_they_fit(
    kafka_bootstrap: str, unique_name: str, envelope: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for a principal without DescribeConfigs: the SDK cannot learn the
    # limit up front and meets it as rejections of its batches.
    async def unknown(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(_pipeline, "topic_max_message_bytes", unknown)
    await _create_topic(kafka_bootstrap, unique_name, LIMIT)
    async with UsageProducer(_config(kafka_bootstrap, unique_name, envelope=envelope)) as producer:
        ids = await _record(producer, 3000)
        report = await producer.flush(timeout_s=60)
        stats = producer.stats()
    assert report.ok, (report.undelivered_count, stats, report.errors)
    assert (stats.sent, stats.rejected, stats.queue_depth) == (3000, 0, 0)
    assert stats.failed > 0, "the batches were too large: some were re-sent split"
    events, _ = await _consume(kafka_bootstrap, unique_name, 3000)
    assert set(Counter(e.event_id for e in events)) == set(ids)


@pytest.mark.integration
async def test_a_topic_limit_below_max_batch_bytes_caps_the_batches_at_start(
    kafka_bootstrap: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _create_topic(kafka_bootstrap, unique_name, LIMIT)
    with caplog.at_level(logging.WARNING, logger="tokenpulse.sdk"):
        async with UsageProducer(_config(kafka_bootstrap, unique_name)) as producer:
            ids = await _record(producer, 3000)
            report = await producer.flush(timeout_s=60)
            stats = producer.stats()
    assert report.ok, (report.undelivered_count, stats, report.errors)
    # Learned before the first send: not one batch was rejected.
    assert (stats.sent, stats.failed, stats.rejected) == (3000, 0, 0)
    capped = [r for r in caplog.records if "max.message.bytes" in r.getMessage()]
    assert len(capped) == 1, [r.getMessage() for r in caplog.records]
    assert str(LIMIT) in capped[0].getMessage()
    events, _ = await _consume(kafka_bootstrap, unique_name, 3000)
    assert {e.event_id for e in events} == set(ids)


@pytest.mark.integration
async def test_a_topic_limit_lowered_while_producing_is_met_by_splitting(
    kafka_bootstrap: str, unique_name: str
) -> None:
    await _create_topic(kafka_bootstrap, unique_name, 4 * 1024 * 1024)
    async with UsageProducer(_config(kafka_bootstrap, unique_name)) as producer:
        ids = await _record(producer, 1000)
        assert (await producer.flush(timeout_s=60)).ok
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(
                ConfigResourceType.TOPIC, unique_name, {"max.message.bytes": str(LIMIT)}
            )
            await admin.alter_configs([resource])
            for _ in range(100):  # until the broker applies it
                described = await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, unique_name)]
                )
                entries = {e[0]: e[1] for e in described[0].resources[0][4]}
                if entries["max.message.bytes"] == str(LIMIT):
                    break
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
        ids += await _record(producer, 3000)
        report = await producer.flush(timeout_s=60)
        stats = producer.stats()
    assert report.ok, (report.undelivered_count, stats, report.errors)
    assert (stats.sent, stats.rejected) == (4000, 0)
    assert stats.failed > 0
    events, _ = await _consume(kafka_bootstrap, unique_name, 4000)
    assert {e.event_id for e in events} == set(ids)


@pytest.mark.integration
async def test_a_single_event_over_the_limit_is_reported_with_the_sizes_not_retried(
    kafka_bootstrap: str, unique_name: str
) -> None:
    limit = 2048
    await _create_topic(kafka_bootstrap, unique_name, limit)
    # Default compression: 8,000 random hex characters stay above 2 KiB
    # whatever the codec (4 bits of entropy a character).
    config = _config(kafka_bootstrap, unique_name, compression="auto", max_batch_bytes=256 * 1024)
    big = {f"k{i}": secrets.token_hex(500) for i in range(8)}
    async with UsageProducer(config) as producer:
        before = await _record(producer, 200)
        big_id = await producer.record(
            tenant_id="tenant-1", model="gpt-4o", input_tokens=1, output_tokens=1, attributes=big
        )
        after = await _record(producer, 200)
        started = time.monotonic()
        report = await producer.flush(timeout_s=60)
        elapsed = time.monotonic() - started
        stats = producer.stats()
    assert elapsed < 30, "settled, not retried until the timeout"
    assert (report.undelivered_count, report.undelivered_event_ids) == (1, (big_id,))
    assert not report.ok
    assert (stats.sent, stats.rejected, stats.queue_depth) == (400, 1, 0)
    (error,) = report.errors
    assert isinstance(error, InvalidRecord)
    assert error.code == "invalid_record.record_too_large"
    assert error.retriable is False
    assert error.details["event_id"] == big_id
    assert error.details["limit_bytes"] == limit
    assert error.details["record_bytes"] > limit
    assert error.details["topic"] == unique_name
    assert str(limit) in error.message
    events, _ = await _consume(kafka_bootstrap, unique_name, 400)
    assert {e.event_id for e in events} == set(before + after)
