"""Reading both sides: the usage and DLQ topics from Kafka, usage_events from ClickHouse.

Kafka is read with a plain consumer (no group, nothing committed,
read_committed) from the offsets for a start time up to the end offsets
taken when the read began (or the offsets for an end time), so a busy topic
still gives a bounded, repeatable range.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from tokenpulse.errors import ConfigError, ServiceUnavailable
from tokenpulse.reconcile.compare import ChRow, DlqEntry, Key
from tokenpulse.reconcile.expect import KafkaRecord

log = logging.getLogger("tokenpulse.reconcile")

Ranges = dict[int, tuple[int, int]]
_LOOKUP_CHUNK = 200  # ids per IN (...) lookup, so the parameters stay in the URL


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


_COORDINATOR_ATTEMPTS = 10


async def committed_offsets(
    bootstrap: str, group: str, topic: str, timeout_s: float
) -> dict[int, int]:
    """The worker group's committed offset per partition of `topic` (absent: none yet).

    The worker commits an offset only after everything before it is durable
    (rows, DLQ records, alerts), so offsets below it are finished even when
    they left no trace (a de-duplicated record at a partition's tail).
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        # A broker on which no group ever committed has no __consumer_offsets
        # yet: the first lookup creates it, and the coordinator answers soon after.
        for attempt in range(_COORDINATOR_ATTEMPTS):
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except GroupCoordinatorNotAvailableError:
                if attempt == _COORDINATOR_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
    except KafkaError as exc:
        # Reconcile still works without the commits (rows and DLQ bound what
        # is finished); only a de-duplicated tail record then looks pending.
        log.warning(
            "cannot read the commits of group %r (%s); pending is measured from "
            "ClickHouse and the DLQ only",
            group,
            exc,
        )
        return {}
    finally:
        await admin.close()
    return {
        tp.partition: int(meta.offset)
        for tp, meta in offsets.items()
        if tp.topic == topic and meta.offset >= 0
    }


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


async def read_usage(
    bootstrap: str,
    topic: str,
    since: datetime,
    until: datetime | None,
    *,
    timeout_s: float = 120.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Ranges, list[KafkaRecord]]:
    """The offset range per partition and every record in it, by (partition, offset)."""
    ranges, msgs = await read_topic(
        bootstrap, topic, since, until, timeout_s=timeout_s, progress=progress
    )
    records = [
        KafkaRecord(m.topic, m.partition, m.offset, m.value, tuple(m.headers or ())) for m in msgs
    ]
    records.sort(key=lambda r: (r.partition, r.offset))
    return ranges, records


async def read_dlq(
    bootstrap: str, dlq_topic: str, usage_topic: str, since: datetime, *, timeout_s: float = 120.0
) -> tuple[list[DlqEntry], int]:
    """DLQ entries that point into usage_topic, plus how many DLQ records were unreadable.

    Read from `since` to the end: a rejection is written after its record, so
    every DLQ record for the reconciled range is at or after `since`.
    """
    from tokenpulse.dlq import read_parked

    parking = await read_parked(bootstrap, dlq_topic, since, None, timeout_s=timeout_s)
    entries = [
        DlqEntry(p.record.partition, p.record.offset, p.record.reason, p.record.batch_index)
        for p in parking.parked
        if p.record.topic == usage_topic
    ]
    return entries, parking.unreadable


_ROW_COLUMNS = (
    "tenant_id, event_id, kafka_partition, kafka_offset, input_tokens, output_tokens,"
    " cached_input_tokens"
)


def _row(values: Any) -> ChRow:
    t, e, p, o, i, out, c = values
    return ChRow(str(t), str(e), int(p), int(o), int(i), int(out), int(c))


def clickhouse_rows(client: Any, database: str, topic: str, ranges: Ranges) -> list[ChRow]:
    """usage_events rows of `topic` whose offsets fall in the ranges."""
    rows: list[ChRow] = []
    for partition, (start, end) in sorted(ranges.items()):
        if start >= end:
            continue
        result = client.query(
            f"SELECT {_ROW_COLUMNS} FROM {database}.usage_events"
            " WHERE kafka_topic = {topic:String} AND kafka_partition = {p:UInt32}"
            " AND kafka_offset >= {lo:UInt64} AND kafka_offset < {hi:UInt64}",
            parameters={"topic": topic, "p": partition, "lo": start, "hi": end},
        )
        rows.extend(_row(r) for r in result.result_rows)
    return rows


def clickhouse_max_offsets(client: Any, database: str, topic: str) -> dict[int, int]:
    result = client.query(
        f"SELECT kafka_partition, max(kafka_offset) FROM {database}.usage_events"
        " WHERE kafka_topic = {topic:String} GROUP BY kafka_partition",
        parameters={"topic": topic},
    )
    return {int(p): int(o) for p, o in result.result_rows}


def clickhouse_lookup(client: Any, database: str, keys: Iterable[Key]) -> dict[Key, list[ChRow]]:
    """Rows for (tenant, event_id) keys anywhere in the table (e.g. before the range)."""
    by_tenant: dict[str, list[str]] = {}
    for tenant, event_id in keys:
        by_tenant.setdefault(tenant, []).append(event_id)
    out: dict[Key, list[ChRow]] = {}
    for tenant, ids in by_tenant.items():
        for i in range(0, len(ids), _LOOKUP_CHUNK):
            result = client.query(
                f"SELECT {_ROW_COLUMNS} FROM {database}.usage_events"
                " WHERE tenant_id = {t:String} AND event_id IN {ids:Array(String)}",
                parameters={"t": tenant, "ids": ids[i : i + _LOOKUP_CHUNK]},
            )
            for values in result.result_rows:
                row = _row(values)
                out.setdefault((row.tenant_id, row.event_id), []).append(row)
    return out
