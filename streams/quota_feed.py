"""Reads the two compacted quota topics whole, then follows them.

Every worker needs every definition (hierarchical tenants span partitions)
and the last state of every quota, so this is a plain group-less consumer
of all partitions from the beginning rather than a Faust table: no
changelog, no standby, nothing to recover but the topic itself. `start()`
returns once the topics are read up to the end offsets seen at start, so
the usage agent never checks quotas against a half-loaded view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenpulse.errors import InvalidRecord, ServiceUnavailable
from tokenpulse.schemas.quota import decode_quota_definition, decode_quota_state
from tokenpulse.streams.quotas import QuotaEngine

log = logging.getLogger("tokenpulse.streams.quota_feed")

METADATA_RETRY_S = 0.5


async def topic_partitions(consumer: Any, topic: str, deadline: float) -> set[int]:
    """The partitions of `topic`, waiting for the metadata of a topic created a moment ago.

    A topic `ensure_topics` has just created may be missing from the
    client's metadata for a while. Taking "no partitions" then would leave
    the feed following nothing: a worker without quota definitions, which
    never alerts and says nothing. Waited for until `deadline` (the event
    loop's clock), then a clear error.
    """
    loop = asyncio.get_running_loop()
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        if loop.time() > deadline:
            raise ServiceUnavailable(
                f"Kafka has no partitions for the quota topic {topic!r}: was it created "
                "(`tokenpulse worker` creates it at start) and is the broker healthy?",
                details={"topic": topic},
            )
        await consumer._client.force_metadata_update()
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(METADATA_RETRY_S)


class QuotaFeed:
    def __init__(
        self, engine: QuotaEngine, *, bootstrap_servers: str, quotas_topic: str, state_topic: str
    ) -> None:
        self.engine = engine
        self.bootstrap_servers = bootstrap_servers
        self.quotas_topic = quotas_topic
        self.state_topic = state_topic
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_definition_change: Callable[[], None] | None = None

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        try:
            if topic == self.quotas_topic:
                self.engine.apply_definition(
                    key, None if value is None else decode_quota_definition(value)
                )
                if self.on_definition_change is not None:
                    self.on_definition_change()
            else:
                self.engine.apply_state(key, None if value is None else decode_quota_state(value))
        except InvalidRecord as exc:
            # A malformed definition must not stop metering; it is skipped loudly.
            log.error("ignoring invalid record on %s (key %r): %s", topic, key, exc.message)

    async def start(self, timeout_s: float = 60.0) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        self._consumer = consumer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tps = []
        for topic in (self.quotas_topic, self.state_topic):
            parts = await topic_partitions(consumer, topic, deadline)
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while not await self._caught_up(consumer, ends):
            if loop.time() > deadline:
                raise TimeoutError("quota topics not read to the end in time")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                for msg in msgs:
                    self._apply(tp.topic, msg.key, msg.value)
        log.info(
            "quota feed loaded %d definitions, %d states",
            len(self.engine.definitions),
            len(self.engine.states),
        )
        self._task = asyncio.ensure_future(self._follow())

    @staticmethod
    async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return False
        return True

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for tp, msgs in batch.items():
                for msg in msgs:
                    self._apply(tp.topic, msg.key, msg.value)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task  # shutting down: how it ended no longer matters
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
