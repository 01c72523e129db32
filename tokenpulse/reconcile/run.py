"""One reconciliation run: read both sides, build the expectation, compare."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tokenpulse.config import TOPIC_DLQ, TOPIC_USAGE, ClickHouseTarget
from tokenpulse.errors import ServiceUnavailable
from tokenpulse.reconcile.compare import ChRow, Key, Report, compare, missing_keys
from tokenpulse.reconcile.expect import build_expected
from tokenpulse.reconcile.sources import (
    clickhouse_lookup,
    clickhouse_max_offsets,
    clickhouse_rows,
    committed_offsets,
    read_dlq,
    read_usage,
)
from tokenpulse.schemas import Keyring
from tokenpulse.sinks._client import sync_client
from tokenpulse.sinks.migrations.ddl import check_identifier


def dlq_topic_for(usage_topic: str) -> str:
    """The DLQ beside a usage topic, keeping any prefix/suffix (as the worker names them)."""
    if TOPIC_USAGE in usage_topic:
        return usage_topic.replace(TOPIC_USAGE, TOPIC_DLQ)
    return TOPIC_DLQ


@dataclass(frozen=True)
class ReconcileOptions:
    kafka_bootstrap_servers: str
    clickhouse: ClickHouseTarget
    since: datetime
    until: datetime | None = None
    topic: str = TOPIC_USAGE
    dlq_topic: str | None = None  # None: dlq_topic_for(topic)
    database: str | None = None  # None: the CLICKHOUSE_URL's database
    keyring: Keyring | None = None  # the worker's keyring when it verifies signatures
    max_record_bytes: int = 1_048_576
    strict: bool = False
    timeout_s: float = 120.0
    # The worker group whose commits say how far it got (None: not read).
    worker_group: str | None = None


async def reconcile(
    opts: ReconcileOptions, *, progress: Callable[[int, int], None] | None = None
) -> Report:
    """Compare; `progress(records_read, offsets_in_range)` follows the usage topic's read."""
    database = check_identifier(opts.database or opts.clickhouse.database, "database")
    dlq_topic = opts.dlq_topic or dlq_topic_for(opts.topic)
    ranges, records = await read_usage(
        opts.kafka_bootstrap_servers,
        opts.topic,
        opts.since,
        opts.until,
        timeout_s=opts.timeout_s,
        progress=progress,
    )
    dlq, unreadable = await read_dlq(
        opts.kafka_bootstrap_servers, dlq_topic, opts.topic, opts.since, timeout_s=opts.timeout_s
    )
    expected = build_expected(records, keyring=opts.keyring, max_record_bytes=opts.max_record_bytes)
    committed = (
        await committed_offsets(
            opts.kafka_bootstrap_servers, opts.worker_group, opts.topic, opts.timeout_s
        )
        if opts.worker_group
        else {}
    )

    def clickhouse_side() -> tuple[list[ChRow], dict[int, int], dict[Key, list[ChRow]]]:
        from clickhouse_connect.driver.exceptions import DatabaseError

        client = sync_client(opts.clickhouse, timeout_s=opts.timeout_s)
        try:
            rows = clickhouse_rows(client, database, opts.topic, ranges)
            ch_max = clickhouse_max_offsets(client, database, opts.topic)
            elsewhere = clickhouse_lookup(client, database, missing_keys(expected, rows))
        except DatabaseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ServiceUnavailable(
                f"reading {database}.usage_events failed: {first}; check --database "
                "and that `tokenpulse db migrate` ran"
            ) from exc
        finally:
            client.close()
        return rows, ch_max, elsewhere

    rows, ch_max, elsewhere = await asyncio.to_thread(clickhouse_side)
    report = compare(
        expected,
        rows,
        topic=opts.topic,
        database=database,
        ranges=ranges,
        ch_max=ch_max,
        dlq=dlq,
        elsewhere=elsewhere,
        strict=opts.strict,
        committed=committed,
    )
    report.dlq_unreadable = unreadable
    return report
