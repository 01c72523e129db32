"""aiokafka specifics under the pipeline: building a client, handing it
record batches, reading a send's outcome, asking the topic's size limit, and
abandoning a client whose broker is away; plus the report types.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaProducer, codec
from aiokafka.codec import has_lz4, has_zstd
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.protocol.admin import DescribeConfigsRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from tokenpulse.errors import InvalidRecord
from tokenpulse.sdk._config import ProducerConfig

T = TypeVar("T")

# (key, value, what the record carries): one Kafka record to send.
Unit = tuple[bytes, bytes, Sequence[T]]
Headers = list[tuple[str, bytes]] | None

# The broker's answers to a record batch above the topic's max.message.bytes
# (or, rarely, above its segment size). aiokafka does not retry them, and the
# same batch sent again gets the same answer: only a smaller batch can pass.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
_TOPIC_RESOURCE = 2  # ConfigResourceType.TOPIC in DescribeConfigs


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
    rejected: int = 0  # refused by the broker for good (too large): never re-sent


@dataclass(frozen=True)
class DeliveryReport:
    """What flush()/close() could not confirm as delivered within the timeout.

    Undelivered are the events still waiting or in flight plus, since start,
    those the broker refused for good; `errors` holds one error per refused
    event (InvalidRecord, code "invalid_record.record_too_large", its details
    naming the event, the size and the topic's limit).
    """

    undelivered_count: int
    undelivered_event_ids: tuple[str, ...]
    sent: int
    errors: tuple[InvalidRecord, ...] = ()

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


# aiokafka >= 0.11 compresses lz4 at level 9 (LZ4 HC) and has no setting for it
# (aio-libs/aiokafka#1028; #1121 proposes level 1). On a batch of our events
# level 9 costs 1.2 us of CPU an event, level 1 0.11 us, for batches 20 %
# larger (14.9x against 12.5x smaller than the JSON); at 43k events/s HC was a
# tenth of the generating process's CPU. Decompression costs the same.
_LZ4_LEVEL = 1


def fast_lz4() -> None:
    """Make aiokafka's lz4 compress at _LZ4_LEVEL in this process (idempotent).

    The one function aiokafka compresses lz4 with takes its level as a
    default argument; that default is changed, only while it is still
    aiokafka's 9, so a later aiokafka with another choice is left alone.
    """
    encode = codec.lz4_encode
    if encode.__defaults__ == (9,):
        encode.__defaults__ = (_LZ4_LEVEL,)


def new_producer(c: ProducerConfig, max_batch_bytes: int) -> AIOKafkaProducer:
    """An idempotent aiokafka producer (acks=all) configured from c.

    max_batch_bytes bounds a record batch before compression: c.max_batch_bytes
    or less, once the topic's limit is known (Pipeline).
    """
    compression = compression_type(c)
    if compression == "lz4":
        fast_lz4()
    return AIOKafkaProducer(
        bootstrap_servers=c.bootstrap_servers,
        client_id=c.client_id,
        acks="all",
        enable_idempotence=True,
        compression_type=compression,
        linger_ms=c.linger_ms,
        max_batch_size=max_batch_bytes,
        request_timeout_ms=c.request_timeout_ms,
        retry_backoff_ms=c.retry_backoff_ms,
        **c.kafka_security_kwargs(),
    )


async def topic_max_message_bytes(
    producer: AIOKafkaProducer, topic: str, timeout_s: float
) -> int | None:
    """The topic's max.message.bytes as its broker applies it, or None if it cannot say.

    One DescribeConfigs request on the producer's own connection (no admin
    client, no extra login). None when the principal may not describe the
    topic, the topic does not exist yet, the broker is too old or slow: the
    caller then meets the limit as rejected batches instead.
    """
    client = producer.client
    request = DescribeConfigsRequest([(_TOPIC_RESOURCE, topic, ["max.message.bytes"])])
    try:
        node = client.get_random_node()
        if node is None:
            return None
        response = await asyncio.wait_for(client.send(node, request), timeout_s)
        for error_code, _, _, name, entries in response.resources:
            if error_code or name != topic:
                continue
            for entry in entries:
                if entry[0] == "max.message.bytes":
                    return int(entry[1])
    except Exception:  # any failure only means "not known": never stop the drain
        return None
    return None


def one_record_batch_bytes(key: bytes, value: bytes, headers: Headers) -> int:
    """Bytes of a record batch holding just this record, before compression."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers or []))


class KeyHashCache:
    """aiokafka's default partitioner with each key's hash remembered.

    The default computes the Java client's murmur2 in pure Python for every
    record (several us for a tenant id: more than the rest of record()),
    while the keys are tenant ids, a few thousand at most per runtime. Same
    partition for every key as DefaultPartitioner and the Java client, so
    a tenant's records stay on one partition whichever producer wrote them.
    """

    MAX_KEYS = 65_536  # ~6 MB at most; past it the cache starts again

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        hashes = self._hashes
        h = hashes.get(key)
        if h is None:
            if len(hashes) >= self.MAX_KEYS:
                hashes.clear()
            h = hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


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


@dataclass
class Handed(Generic[T]):
    """What send_batched handed to the client, and what it could not."""

    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    carried: list[list[T]] = field(default_factory=list)  # per future: what it acknowledges
    unsent: list[T] = field(default_factory=list)
    error: Exception | None = None


async def send_batched(
    producer: AIOKafkaProducer,
    topic: str,
    units: Sequence[Unit[T]],
    *,
    partitioner: KeyHashCache,
    headers_for: Callable[[bytes], Headers],
) -> Handed[T]:
    """Send units as record batches, one per partition (more when full), in order.

    aiokafka's send() costs a coroutine, a partitioner call, a future and a
    shield per record, and a callback per record when the batch is
    acknowledged: most of the SDK's CPU per event (py-spy, bench/sdk_bench.py).
    Here a batch is filled by the record builder and acknowledged with one
    future. Records of one key keep their order: same partition, appended
    in order, batches handed over in order. On a failure (metadata or buffer
    timeout: the broker is away) the batch that failed and every later one
    come back in `unsent`, in order.
    """
    handed: Handed[T] = Handed()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[Unit[T]]] = {}
        for unit in units:
            by_partition.setdefault(partitioner(unit[0], partitions, partitions), []).append(unit)
    except Exception as exc:
        handed.unsent = [it for _, _, items in units for it in items]
        handed.error = exc
        return handed
    batches: list[tuple[int, Any, list[T]]] = []
    for partition, group in by_partition.items():
        batch = producer.create_batch()
        carried: list[T] = []
        for key, value, items in group:
            headers = headers_for(value)
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                batches.append((partition, batch, carried))  # full: the next one takes it
                batch, carried = producer.create_batch(), []
                batch.append(key=key, value=value, timestamp=None, headers=headers)
            carried.extend(items)
        batches.append((partition, batch, carried))
    for index, (partition, batch, carried) in enumerate(batches):
        try:
            future = await producer.send_batch(batch, topic, partition=partition)
        except Exception as exc:
            handed.unsent = [it for _, _, rest in batches[index:] for it in rest]
            handed.error = exc
            break
        handed.futures.append(future)
        handed.carried.append(carried)
    return handed
