"""Reading a bounded offset range of a Kafka topic: from a start time to the
end offsets taken when the read began (or the offsets of an end time).

A plain consumer (no group, nothing committed, read_committed), so a busy
topic still gives a bounded, repeatable range. `tokenpulse reconcile` reads
the usage topic with it, `tokenpulse dlq` the DLQ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tokenpulse.errors import ConfigError, ServiceUnavailable

Ranges = dict[int, tuple[int, int]]  # partition -> [start, end) offsets


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


async def _consumer(bootstrap: str, timeout_s: float) -> Any:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise ServiceUnavailable(
            f"cannot reach Kafka at {bootstrap}: {exc}; start it (`tokenpulse dev up`) "
            "or set KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    return consumer


async def _partitions(bootstrap: str, topic: str, timeout_s: float) -> list[int]:
    """The topic's partitions from the broker's metadata (the consumer has no subscription)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for item in described:
        if item.get("topic") == topic and not item.get("error_code"):
            return sorted(int(p["partition"]) for p in item.get("partitions", []))
    raise ConfigError(
        f"topic {topic!r} does not exist on the broker; check the topic name "
        "(--topic, TOKENPULSE_TOPIC_PREFIX/SUFFIX) and KAFKA_BOOTSTRAP_SERVERS",
        details={"topic": topic},
    )


async def _ranges(
    consumer: Any,
    bootstrap: str,
    topic: str,
    since: datetime,
    until: datetime | None,
    timeout_s: float,
) -> Ranges:
    from aiokafka import TopicPartition

    parts = await _partitions(bootstrap, topic, timeout_s)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    ends = await consumer.end_offsets(tps)
    starts = await consumer.offsets_for_times({tp: _ms(since) for tp in tps})
    stops: dict[Any, Any] = {}
    if until is not None:
        stops = await consumer.offsets_for_times({tp: _ms(until) for tp in tps})
    out: Ranges = {}
    for tp in tps:
        end = int(ends[tp])
        start = end if starts.get(tp) is None else int(starts[tp].offset)
        if until is not None and stops.get(tp) is not None:
            end = min(end, int(stops[tp].offset))
        out[tp.partition] = (start, max(start, end))
    return out


async def _read(
    consumer: Any,
    topic: str,
    ranges: Ranges,
    timeout_s: float,
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    from aiokafka import TopicPartition

    todo = {TopicPartition(topic, p): r for p, r in ranges.items() if r[0] < r[1]}
    if not todo:
        return []
    total = sum(end - start for start, end in todo.values())
    consumer.assign(list(todo))
    for tp, (start, _) in todo.items():
        consumer.seek(tp, start)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while todo:
        if time.monotonic() > deadline:
            left = sorted(tp.partition for tp in todo)
            raise ServiceUnavailable(
                f"reading {topic} did not reach the end offsets of partitions {left} within "
                f"{timeout_s:.0f}s; retry or raise --timeout-s"
            )
        batch = await consumer.getmany(*todo, timeout_ms=500)
        for tp, msgs in batch.items():
            end = todo[tp][1] if tp in todo else -1
            out.extend(m for m in msgs if m.offset < end)
        if progress is not None:
            progress(len(out), total)  # offsets, not records: markers make total an upper bound
        for tp in list(todo):
            # Transaction markers take offsets too: the position, not the
            # last record, tells when a partition is done.
            if await consumer.position(tp) >= todo[tp][1]:
                del todo[tp]
    return out


async def read_topic(
    bootstrap: str,
    topic: str,
    since: datetime,
    until: datetime | None,
    *,
    timeout_s: float = 120.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Ranges, list[Any]]:
    """The offset range per partition from `since` to `until` (or the end offsets
    when the read began), and aiokafka's records in it.

    `progress(records_read, offsets_in_range)` is called after each fetch.
    """
    consumer = await _consumer(bootstrap, timeout_s)
    try:
        ranges = await _ranges(consumer, bootstrap, topic, since, until, timeout_s)
        msgs = await _read(consumer, topic, ranges, timeout_s, progress)
    finally:
        await consumer.stop()
    return ranges, msgs
