"""Explicit topic creation at worker start (brokers run with auto-create off).

Usage, DLQ and alerts are plain delete-retention topics; quota state and
quota definitions are compacted (latest value per key is the truth).
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from tokenpulse.errors import ServiceUnavailable
from tokenpulse.streams.settings import WorkerSettings

log = logging.getLogger("tokenpulse.streams.topics")

_COMPACTED = {"cleanup.policy": "compact"}


def topic_specs(settings: WorkerSettings) -> list[NewTopic]:
    t = settings.topics
    n, rf = settings.partitions, settings.replication_factor
    return [
        NewTopic(t.usage, n, rf),
        NewTopic(t.dlq, n, rf),
        NewTopic(t.alerts, n, rf),
        NewTopic(t.state, n, rf, topic_configs=dict(_COMPACTED)),
        # Every worker reads all quota definitions; one partition keeps them ordered.
        NewTopic(t.quotas, 1, rf, topic_configs=dict(_COMPACTED)),
    ]


async def ensure_topics(settings: WorkerSettings) -> None:
    """Create the worker's topics if missing; existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        await admin.close()
        raise ServiceUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} "
            f"(KAFKA_BOOTSTRAP_SERVERS): {exc}; is the broker running?",
            details={"bootstrap_servers": settings.kafka_bootstrap_servers},
        ) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if not missing:
            return
        # Another worker may win the race; the topic is then what we need.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(missing)
        for spec in missing:
            log.info("created topic %s (%d partitions)", spec.name, spec.num_partitions)
    finally:
        await admin.close()
