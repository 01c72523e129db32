"""Quota burn-down for the report: definitions from Kafka, usage of each period from ClickHouse.

Definitions are read whole from the compacted quotas topic the same way the
workers' quota feed does (a group-less consumer from the beginning up to the
end offsets seen at start). Period boundaries and tenant-subtree matching
come from the workers' own pure quota logic, so the report's "used" is the
number the workers enforce.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenpulse.errors import InvalidRecord, ServiceUnavailable
from tokenpulse.report.model import QuotaBurn
from tokenpulse.schemas.quota import QuotaDefinition, decode_quota_definition
from tokenpulse.sinks.migrations.ddl import check_identifier
from tokenpulse.streams.quota_logic import period_bounds

# Buckets per period: enough points for a readable curve, few enough to query fast.
BUCKET_S = {"minute": 5, "hour": 60, "day": 1800, "week": 6 * 3600, "month": 86400}


async def _read_definitions(bootstrap: str, topic: str, timeout_s: float) -> list[QuotaDefinition]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a failed start still holds a client: release it
        raise
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        latest: dict[bytes, QuotaDefinition | None] = {}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for msg in msgs:
                    if msg.key is None:
                        continue
                    try:
                        latest[msg.key] = (
                            None if msg.value is None else decode_quota_definition(msg.value)
                        )
                    except InvalidRecord:
                        # The workers skip a malformed definition too; so does the report.
                        continue
        return [d for d in latest.values() if d is not None]
    finally:
        await consumer.stop()


def load_definitions(
    bootstrap: str, topic: str, *, timeout_s: float = 10.0
) -> list[QuotaDefinition]:
    """Current quota definitions on `topic`; ServiceUnavailable if Kafka does not answer in time."""

    async def run() -> list[QuotaDefinition]:
        return await asyncio.wait_for(_read_definitions(bootstrap, topic, timeout_s), timeout_s)

    try:
        return asyncio.run(run())
    except ServiceUnavailable:
        raise
    except Exception as exc:
        # aiokafka raises KafkaConnectionError or times out; either way the
        # report goes on without quotas and says why.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ServiceUnavailable(
            f"cannot read quota definitions from {topic} at {bootstrap}: {reason};"
            " start Kafka (`tokenpulse dev up`) or set KAFKA_BOOTSTRAP_SERVERS",
        ) from exc


def burn_for(client: Any, database: str, definition: QuotaDefinition, as_of: datetime) -> QuotaBurn:
    """Cumulative usage of the period holding `as_of` (just before it), bucket by bucket."""
    db = check_identifier(database, "database")
    start, end = period_bounds(
        definition.period, as_of - timedelta(milliseconds=1), definition.timezone
    )
    bucket_s = BUCKET_S.get(definition.period, 3600)
    stop = min(as_of, end)
    n_buckets = max(1, math.ceil((stop - start).total_seconds() / bucket_s))
    sql = (
        "SELECT intDiv(toUnixTimestamp64Milli(occurred_at) - {start_ms:Int64}, {bucket_ms:Int64})"
        " AS b, sum(input_tokens), sum(output_tokens)"
        f" FROM {db}.usage_events"
        " WHERE (tenant_id = {t:String} OR startsWith(tenant_id, {tp:String}))"
        " AND occurred_at >= {start:DateTime64(3, 'UTC')}"
        " AND occurred_at < {stop:DateTime64(3, 'UTC')}"
    )
    params: dict[str, Any] = {
        "start_ms": int(start.timestamp() * 1000),
        "bucket_ms": bucket_s * 1000,
        "t": definition.tenant_id,
        "tp": definition.tenant_id + "/",
        "start": start,
        "stop": stop,
    }
    if definition.model is not None:
        sql += " AND model = {m:String}"
        params["m"] = definition.model
    sql += " GROUP BY b"
    per_bucket: dict[int, int] = {}
    for b, inp, out in client.query(sql, parameters=params).result_rows:
        value = {"input": int(inp), "output": int(out)}.get(definition.metric, int(inp) + int(out))
        per_bucket[int(b)] = value
    cumulative = []
    used = 0
    for i in range(n_buckets):
        used += per_bucket.get(i, 0)
        at = min(start + timedelta(seconds=bucket_s * (i + 1)), stop)
        cumulative.append((at, used))
    return QuotaBurn(definition, start, end, bucket_s, tuple(cumulative))


def burns(
    client: Any, database: str, definitions: Sequence[QuotaDefinition], as_of: datetime
) -> tuple[list[QuotaBurn], list[str]]:
    """Burn-downs of the token quotas; notes for the ones the report cannot chart."""
    out, notes = [], []
    for d in sorted(definitions, key=lambda d: (d.tenant_id, d.quota_id)):
        if d.metric == "cost":
            notes.append(
                f"quota {d.quota_id} ({d.tenant_id}) limits cost; cost quotas are not charted"
            )
            continue
        out.append(burn_for(client, database, d, as_of.astimezone(UTC)))
    return out, notes
