"""Reading both sides: the usage and DLQ topics from Kafka, usage_events from ClickHouse.

Kafka ranges are read by `tokenpulse.kafka_range` (bounded by a start time
and the end offsets when the read began).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from tokenpulse.dlq import read_parked
from tokenpulse.kafka_range import Ranges, read_topic
from tokenpulse.reconcile.compare import ChRow, DlqEntry, Key
from tokenpulse.reconcile.expect import KafkaRecord

log = logging.getLogger("tokenpulse.reconcile")

_LOOKUP_CHUNK = 200  # ids per IN (...) lookup, so the parameters stay in the URL
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
