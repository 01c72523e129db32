"""aiokafka specifics under the pipeline: building a client, reading a send's
outcome, and abandoning a client whose broker is away; plus the report types.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_lz4, has_zstd

from tokenpulse.sdk._config import ProducerConfig


class Unacknowledged(Exception):
    """A send the broker did not acknowledge in time, or whose client was stopped."""


def outcome(future: asyncio.Future[Any]) -> BaseException | None:
    """None when acknowledged; the error (or Unacknowledged) otherwise.

    A lost acknowledgement means the record may be written anyway, so a
    re-send can duplicate it: consumers de-duplicate by event_id.
    """
    if not future.done():
        # It may still resolve (a late acknowledgement): read it then so
        # asyncio does not report an unretrieved exception.
        future.add_done_callback(_consume)
        return Unacknowledged()
    if future.cancelled():
        return Unacknowledged()
    return future.exception()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class ProducerStats:
    """Counters since start. queue_depth counts queued plus in-flight events."""

    sent: int  # acknowledged by the broker
    failed: int  # send attempts that failed and were re-queued (each retry counts)
    dropped: int  # refused by overflow_policy="drop"
    queue_depth: int


@dataclass(frozen=True)
class DeliveryReport:
    """What flush()/close() could not confirm as delivered within the timeout."""

    undelivered_count: int
    undelivered_event_ids: tuple[str, ...]
    sent: int

    @property
    def ok(self) -> bool:
        return self.undelivered_count == 0


def compression_type(config: ProducerConfig) -> str | None:
    """aiokafka's codec name for config.compression (lz4/zstd need cramjam)."""
    choice = config.compression
    if choice == "none":
        return None
    if choice == "auto":
        return "lz4" if has_lz4() else "zstd" if has_zstd() else "gzip"
    return choice


def new_producer(c: ProducerConfig) -> AIOKafkaProducer:
    """An idempotent aiokafka producer (acks=all) configured from c."""
    return AIOKafkaProducer(
        bootstrap_servers=c.bootstrap_servers,
        client_id=c.client_id,
        acks="all",
        enable_idempotence=True,
        compression_type=compression_type(c),
        linger_ms=c.linger_ms,
        max_batch_size=c.max_batch_bytes,
        request_timeout_ms=c.request_timeout_ms,
        retry_backoff_ms=c.retry_backoff_ms,
        **c.kafka_security_kwargs(),
    )


async def abandon(producer: AIOKafkaProducer) -> None:
    """Close a Kafka client without waiting for its unacknowledged batches.

    aiokafka has no abort: stop() waits until every batch is acknowledged,
    which a broker that is away never does (with idempotence it retries
    forever). Cancel its sender and close its connections instead; its
    futures stay unresolved and the settlers re-queue their events.
    """
    sender = getattr(producer, "_sender", None)
    task = sender.sender_task if sender is not None else None
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5.0)
    with contextlib.suppress(Exception):
        await producer.client.close()
    producer._closed = True  # closed by hand: no "Unclosed AIOKafkaProducer" warning
