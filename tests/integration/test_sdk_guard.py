"""QuotaGuard on a real broker: a state topic that does not exist yet, then appears."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tokenpulse.schemas import QuotaState, encode_quota_state, quota_state_key
from tokenpulse.sdk import ProducerConfig, QuotaGuard


def _state(status: Literal["ok", "exceeded"]) -> bytes:
    now = datetime.now(UTC)
    return encode_quota_state(
        QuotaState(
            tenant_id="acme",
            quota_id="q-acme-monthly",
            status=status,
            used=1_200 if status == "exceeded" else 10,
            limit=1_000,
            period_start=now - timedelta(days=1),
            period_end=now + timedelta(days=29),
            updated_at=now,
            hard=True,
        )
    )


async def _wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} within {timeout_s}s")
        await asyncio.sleep(0.1)


@pytest.mark.integration
async def test_guard_follows_a_state_topic_created_after_it_started(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}-quota-state"
    guard = QuotaGuard(ProducerConfig(bootstrap_servers=kafka_bootstrap, quota_state_topic=topic))
    guard.topic_poll_s = 0.2
    try:
        # No topic: no state was ever published, so nothing is blocked and
        # start() reports the guard caught up instead of timing out.
        assert await guard.start(wait_s=30) is True
        assert not guard.is_blocked("acme/research/agent-7")

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(
                        topic,
                        num_partitions=3,
                        replication_factor=1,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                ]
            )
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            key = quota_state_key("acme", "q-acme-monthly")
            await producer.send_and_wait(topic, _state("exceeded"), key=key)
            await _wait_for(
                lambda: guard.is_blocked("acme/research/agent-7"), "the exceeded state blocks"
            )
            assert guard.is_blocked("acme")
            assert not guard.is_blocked("globex")
            await producer.send_and_wait(topic, _state("ok"), key=key)
            await _wait_for(
                lambda: not guard.is_blocked("acme/research/agent-7"), "the ok state unblocks"
            )
        finally:
            await producer.stop()
    finally:
        await guard.stop()
