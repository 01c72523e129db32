"""The ClickHouse sink: one idempotent insert per batch through clickhouse-connect.

Each `SinkBatch` becomes one column-oriented insert into `usage_events` with
`insert_deduplication_token = batch.token`; the tables fed by materialized
views deduplicate with it too. Writing a batch again after a timeout, a
crash or a lost acknowledgement therefore leaves every count exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from tokenpulse.config import ClickHouseTarget
from tokenpulse.errors import ConfigError
from tokenpulse.sinks._retry import RetryPolicy, SinkWriteError, with_retries
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch, UsageSink
from tokenpulse.sinks.migrations.ddl import check_identifier

__all__ = ["EVENT_COLUMNS", "ClickHouseSink", "SinkWriteError", "event_columns"]

# (column, ClickHouse type) in insert order; types are sent with the insert
# so no DESCRIBE round trip is needed per batch.
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "String"),
    ("tenant_id", "String"),
    ("occurred_at", "DateTime64(3, 'UTC')"),
    ("model", "LowCardinality(String)"),
    ("input_tokens", "UInt64"),
    ("output_tokens", "UInt64"),
    ("cached_input_tokens", "UInt64"),
    ("reasoning_tokens", "UInt64"),
    ("agent_id", "String"),
    ("region", "LowCardinality(String)"),
    ("provider", "LowCardinality(String)"),
    ("operation", "LowCardinality(String)"),
    ("gpu_seconds", "Nullable(Float64)"),
    ("attributes", "Map(String, String)"),
    ("schema_version", "UInt16"),
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "UInt32"),
    ("kafka_offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
    ("late", "Bool"),
)

# Applied to every batch insert. The MV setting makes the aggregates skip a
# block that usage_events skipped; foreground distributed inserts make the
# token reach the shards synchronously on a cluster (a no-op on one node).
INSERT_SETTINGS: dict[str, Any] = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "distributed_foreground_insert": 1,
}


def event_columns(events: Sequence[AcceptedEvent]) -> list[list[Any]]:
    """Pivot accepted events into the column lists of EVENT_COLUMNS."""
    cols: list[list[Any]] = [[] for _ in EVENT_COLUMNS]
    (
        event_id,
        tenant_id,
        occurred_at,
        model,
        input_tokens,
        output_tokens,
        cached,
        reasoning,
        agent_id,
        region,
        provider,
        operation,
        gpu_seconds,
        attributes,
        schema_version,
        topic,
        partition,
        offset,
        ingested_at,
        late,
    ) = cols
    for acc in events:
        ev = acc.event
        event_id.append(ev.event_id)
        tenant_id.append(ev.tenant_id)
        occurred_at.append(ev.occurred_at)
        model.append(ev.model)
        input_tokens.append(ev.input_tokens)
        output_tokens.append(ev.output_tokens)
        cached.append(ev.cached_input_tokens)
        reasoning.append(ev.reasoning_tokens)
        agent_id.append(ev.agent_id or "")
        region.append(ev.region or "")
        provider.append(ev.provider or "")
        operation.append(ev.operation or "")
        gpu_seconds.append(ev.gpu_seconds)
        attributes.append(ev.attributes)
        schema_version.append(ev.schema_version)
        topic.append(acc.topic)
        partition.append(acc.partition)
        offset.append(acc.offset)
        ingested_at.append(acc.ingested_at)
        late.append(acc.late)
    return cols


# ClickHouse caps one multipart form field (a bound parameter, once the URL
# would pass 4 KiB) at http_max_field_value_size = 128 KiB; stay well under.
CONFIRM_PARAM_BYTES = 96 * 1024


def _quoted_len(value: str) -> int:
    raw = value.encode("utf-8")
    return len(raw) + raw.count(b"'") + raw.count(b"\\") + 3  # quotes, escapes, comma


def confirmation_chunks(
    candidates: Iterable[tuple[str, str, datetime]], max_param_bytes: int = CONFIRM_PARAM_BYTES
) -> Iterator[list[tuple[str, str, datetime]]]:
    """Split candidates so each bound array (tenants, ids) stays under max_param_bytes."""
    chunk: list[tuple[str, str, datetime]] = []
    tenants: set[str] = set()
    tenant_bytes = id_bytes = 0
    for cand in candidates:
        tenant, event_id, _ = cand
        t_cost = 0 if tenant in tenants else _quoted_len(tenant)
        e_cost = _quoted_len(event_id)
        full = tenant_bytes + t_cost > max_param_bytes or id_bytes + e_cost > max_param_bytes
        if chunk and full:
            yield chunk
            chunk, tenants, tenant_bytes, id_bytes = [], set(), 0, 0
            t_cost = _quoted_len(tenant)
        chunk.append(cand)
        tenants.add(tenant)
        tenant_bytes += t_cost
        id_bytes += e_cost
    if chunk:
        yield chunk


def occurred_bounds(occurred: Iterable[datetime]) -> tuple[datetime, datetime]:
    """[min, max] of the occurred_at values, widened to whole seconds.

    The column keeps milliseconds; widening makes sure a stored value that
    was truncated from microseconds is still inside the range.
    """
    values = list(occurred)
    lo, hi = min(values).replace(microsecond=0), max(values).replace(microsecond=0)
    with contextlib.suppress(OverflowError):  # year 1: nothing is earlier
        lo -= timedelta(seconds=1)
    with contextlib.suppress(OverflowError):  # year 9999: nothing is later
        hi += timedelta(seconds=1)
    return lo, hi


class ClickHouseSink(UsageSink):
    """UsageSink on clickhouse-connect's async client (HTTP, lz4, keep-alive)."""

    def __init__(
        self,
        target: ClickHouseTarget | str,
        *,
        database: str | None = None,
        table: str = "usage_events",
        retry: RetryPolicy | None = None,
        connect_timeout_s: float = 5.0,
        send_receive_timeout_s: float = 60.0,
    ) -> None:
        self.target = ClickHouseTarget.parse(target) if isinstance(target, str) else target
        self.database = check_identifier(database or self.target.database, "database")
        self.table = check_identifier(table, "table")
        self.retry = retry or RetryPolicy()
        self.connect_timeout_s = connect_timeout_s
        self.send_receive_timeout_s = send_receive_timeout_s
        self._client: Any = None

    @property
    def _where(self) -> str:
        return f"{self.target.host}:{self.target.port}/{self.database}"

    async def start(self) -> None:
        if self._client is not None:
            return
        import clickhouse_connect

        async def connect() -> Any:
            return await clickhouse_connect.get_async_client(
                host=self.target.host,
                port=self.target.port,
                username=self.target.username,
                password=self.target.password,
                secure=self.target.secure,
                database=self.database,
                connect_timeout=self.connect_timeout_s,
                send_receive_timeout=self.send_receive_timeout_s,
                # The sink retries itself, with a bound; no hidden retries below it.
                autogenerate_session_id=False,
            )

        self._client = await with_retries("connect", self.retry, connect, self._where)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> ClickHouseSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require(self) -> Any:
        if self._client is None:
            raise ConfigError("ClickHouseSink used before start(); call `await sink.start()`")
        return self._client

    async def write(self, batch: SinkBatch) -> None:
        if not batch.events:
            return
        client = self._require()
        data = event_columns(batch.events)
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": batch.token}

        async def insert() -> None:
            await client.insert(
                self.table,
                data,
                column_names=[c for c, _ in EVENT_COLUMNS],
                column_type_names=[t for _, t in EVENT_COLUMNS],
                database=self.database,
                column_oriented=True,
                settings=settings,
            )

        await with_retries(f"insert of batch {batch.token}", self.retry, insert, self._where)

    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        if not partitions:
            return {}
        client = self._require()
        sql = (
            f"SELECT kafka_partition, max(kafka_offset) FROM {self.database}.{self.table}"
            " WHERE kafka_topic = {topic:String} AND kafka_partition IN {parts:Array(UInt32)}"
            " GROUP BY kafka_partition"
        )
        params = {"topic": topic, "parts": sorted(int(p) for p in partitions)}

        async def query() -> Any:
            return await client.query(sql, parameters=params)

        result = await with_retries("last_offsets query", self.retry, query, self._where)
        return {int(p): int(o) for p, o in result.result_rows}

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        if not event_ids:
            return set()
        client = self._require()
        sql = (
            f"SELECT DISTINCT event_id FROM {self.database}.{self.table}"
            " WHERE tenant_id = {tenant:String} AND event_id IN {ids:Array(String)}"
            " AND ingested_at >= {since:DateTime64(3, 'UTC')}"
        )
        params = {"tenant": tenant_id, "ids": list(event_ids), "since": since}

        async def query() -> Any:
            return await client.query(sql, parameters=params)

        result = await with_retries("existing_event_ids query", self.retry, query, self._where)
        return {str(row[0]) for row in result.result_rows}

    async def existing_events(
        self, candidates: Collection[tuple[str, str, datetime]], since: datetime
    ) -> set[tuple[str, str]]:
        if not candidates:
            return set()
        client = self._require()
        # tenant_id IN + the occurred_at range prune by the primary key
        # (tenant_id, occurred_at, event_id); event_id IN uses idx_event_id.
        # The cross product of tenants x ids is narrowed to the exact pairs
        # here, so a chunk costs one round trip whatever its tenant count.
        sql = (
            f"SELECT tenant_id, event_id FROM {self.database}.{self.table}"
            " WHERE tenant_id IN {tenants:Array(String)} AND event_id IN {ids:Array(String)}"
            " AND occurred_at >= {lo:DateTime64(3, 'UTC')}"
            " AND occurred_at <= {hi:DateTime64(3, 'UTC')}"
            " AND ingested_at >= {since:DateTime64(3, 'UTC')}"
        )
        found: set[tuple[str, str]] = set()
        for chunk in confirmation_chunks(candidates, CONFIRM_PARAM_BYTES):
            wanted = {(t, e) for t, e, _ in chunk}
            lo, hi = occurred_bounds(o for _, _, o in chunk)
            params = {
                "tenants": sorted({t for t, _, _ in chunk}),
                "ids": sorted({e for _, e, _ in chunk}),
                "lo": lo,
                "hi": hi,
                "since": since,
            }

            async def query(params: dict[str, Any] = params) -> Any:
                return await client.query(sql, parameters=params)

            result = await with_retries("existing_events query", self.retry, query, self._where)
            rows = ((str(t), str(e)) for t, e in result.result_rows)
            found.update(k for k in rows if k in wanted)
        return found

    async def count_events(self, tenant_id: str | None = None) -> int:
        """Rows in usage_events (of one tenant): for checks and the demo."""
        client = self._require()
        where = " WHERE tenant_id = {tenant:String}" if tenant_id is not None else ""
        sql = f"SELECT count() FROM {self.database}.{self.table}{where}"

        async def query() -> Any:
            return await client.query(sql, parameters={"tenant": tenant_id})

        result = await with_retries("count query", self.retry, query, self._where)
        return int(result.result_rows[0][0])

    async def recent_event_ids(
        self, topic: str, partitions: Collection[int], since: datetime, max_ids: int
    ) -> Mapping[int, Sequence[tuple[str, float]]]:
        if not partitions:
            return {}
        client = self._require()
        where = (
            f" FROM {self.database}.{self.table}"
            " WHERE kafka_topic = {topic:String} AND kafka_partition IN {parts:Array(UInt32)}"
            " AND ingested_at >= {since:DateTime64(3, 'UTC')}"
        )
        params: dict[str, Any] = {
            "topic": topic,
            "parts": sorted(int(p) for p in partitions),
            "since": since,
        }

        async def count() -> Any:
            return await client.query(
                f"SELECT kafka_partition, count(){where} GROUP BY kafka_partition",
                parameters=params,
            )

        counted = await with_retries("recent ids count", self.retry, count, self._where)
        sizes = {int(p): int(n) for p, n in counted.result_rows}
        out: dict[int, list[tuple[str, float]]] = {
            int(p): [] for p in partitions if sizes.get(int(p), 0) == 0
        }
        wanted = sorted(p for p, n in sizes.items() if 0 < n <= max_ids)
        if not wanted:
            return out
        # Counted first so a partition too big to warm costs no transfer; one
        # query per partition keeps at most max_ids rows in memory at a time.
        for part in wanted:
            id_params = {**params, "parts": [part]}

            async def ids(id_params: dict[str, Any] = id_params) -> Any:
                return await client.query(
                    "SELECT event_id, toUnixTimestamp64Milli(ingested_at)" + where,
                    parameters=id_params,
                )

            result = await with_retries("recent ids query", self.retry, ids, self._where)
            event_ids, ingested_ms = result.result_columns or ([], [])
            out[part] = [
                (str(e), int(ms) / 1000.0) for e, ms in zip(event_ids, ingested_ms, strict=True)
            ]
        return out
