"""The ClickHouse sink: idempotent inserts of groups of batches, via clickhouse-connect.

`write_many` turns the batches of one processing round (several partitions)
into one insert into `usage_events`: one HTTP round trip, and one new part
per month touched instead of one per batch (a write of more than
`insert_max_rows` rows: a few inserts in parallel, cut at batch boundaries).
An insert's `insert_deduplication_token` is derived from its batches' tokens
in order (`group_token`; one batch keeps `batch.token`), and the tables fed
by materialized views deduplicate with it too. Re-sending the same group
after a timeout or a lost acknowledgement therefore leaves every count
exact. `write(batch)` is `write_many([batch])`.

The rows travel as JSONCompactColumns serialized by orjson and lz4-framed
(see sinks/_encode.py for why, and for the settings that keep values exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import lz4.frame

from tokenpulse.config import ClickHouseTarget
from tokenpulse.errors import ConfigError
from tokenpulse.sinks._encode import (
    COLUMN_NAMES,
    EVENT_COLUMNS,
    FORMAT,
    PARSE_SETTINGS,
    encode_events,
    encode_fragments,
    event_columns,
    join_fragments,
)
from tokenpulse.sinks._retry import RetryPolicy, SinkWriteError, with_retries
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch, UsageSink
from tokenpulse.sinks.migrations.ddl import check_identifier
from tokenpulse.sinks.migrations.versions import WORKER_OBJECTS

__all__ = [
    "EVENT_COLUMNS",
    "INSERT_SETTINGS",
    "ClickHouseSink",
    "SinkWriteError",
    "event_columns",
    "group_token",
]

log = logging.getLogger("tokenpulse.sinks.clickhouse")

# Applied to every insert. The MV setting makes the aggregates skip a block
# that usage_events skipped; foreground distributed inserts make the token
# reach the shards synchronously on a cluster (a no-op on one node).
INSERT_SETTINGS: dict[str, Any] = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "distributed_foreground_insert": 1,
}

# Older servers name a setting differently, or lack it. Each entry: the
# setting, the older name that does the same (None: none), and what is lost
# without it (logged once at start).
_SETTING_FALLBACKS: dict[str, tuple[str | None, str]] = {
    "distributed_foreground_insert": (
        "insert_distributed_sync",
        "inserts into a Distributed table may return before the shards have the rows",
    ),
    "precise_float_parsing": (
        None,
        "gpu_seconds may be stored 1 ulp off the value sent (the server's fast float parser)",
    ),
}


def usable_insert_settings(
    known: Collection[str], wanted: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """`wanted` as this server understands it, and a warning per setting it lacks.

    A setting the server does not know fails every insert ("Unknown setting"),
    so a missing one is renamed to its older name or left out, never sent.
    Settings without a known fallback are sent as they are: the server's
    error then names them.
    """
    usable: dict[str, Any] = {}
    warnings: list[str] = []
    for name, value in wanted.items():
        if name in known or name not in _SETTING_FALLBACKS:
            usable[name] = value
            continue
        older, loss = _SETTING_FALLBACKS[name]
        if older is not None and older in known:
            usable[older] = value
            continue
        warnings.append(f"this ClickHouse server has no setting {name!r}: {loss}")
    return usable, warnings


# Every insert's settings (besides its token), before usable_insert_settings.
_WANTED_SETTINGS: Final[dict[str, Any]] = {**INSERT_SETTINGS, **PARSE_SETTINGS}

# A group's joined batch tokens are used verbatim up to this length, else hashed.
MAX_PLAIN_TOKEN_CHARS = 128

# A write of more rows is sent as parallel inserts of about this many rows
# (TOKENPULSE_INSERT_MAX_ROWS). Two inserts of 60,000 rows into the embedded
# endpoint took 0.28 s against 0.37 s for one of 120,000 (+0.09 s of its
# CPU); a write of single-event records holds at most 50,000 rows
# (TOKENPULSE_WRITE_MAX_RECORDS), so only envelope writes are cut.
INSERT_MAX_ROWS: Final = 60_000


def group_token(batches: Sequence[SinkBatch]) -> str:
    """insert_deduplication_token of one insert of these batches, in this order.

    The same batches in the same order always give the same token, so a
    group re-sent after a lost acknowledgement is skipped by the server. One
    batch keeps its own `batch.token` (what `write` always sent). A few
    batches are joined with "," (readable as they are in query_log); beyond
    MAX_PLAIN_TOKEN_CHARS the token becomes
    "<first token>+<n-1>:sha256:<hex of the tokens, newline-joined>". Why:
    the token travels as a URL parameter (proxies cap URLs at a few KiB) and
    is logged with every insert, so a round over hundreds of partitions must
    not make it kilobytes long; a sha256 of the ordered tokens is just as
    deterministic, and the readable prefix still says where it came from.
    Topic names cannot contain "," "+" or ":" (Kafka allows [a-zA-Z0-9._-]),
    so the three forms never collide.
    """
    tokens = [b.token for b in batches]
    if not tokens:
        raise ValueError("no batches, no token")
    joined = ",".join(tokens)
    if len(tokens) == 1 or len(joined) <= MAX_PLAIN_TOKEN_CHARS:
        return joined
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()
    return f"{tokens[0]}+{len(tokens) - 1}:sha256:{digest}"


def insert_chunks(batches: Sequence[SinkBatch], max_rows: int) -> list[list[SinkBatch]]:
    """The inserts one write is sent as: `batches` in order, cut at batch
    boundaries into ceil(rows / max_rows) runs of about equal rows.

    One run when the write holds at most `max_rows` rows or `max_rows` is 0;
    a batch is never cut, so a batch bigger than the share is a run of its
    own size. The cut depends only on the batches and their order, so a
    write re-sent after a failure is cut the same way and each run keeps its
    token.
    """
    total = sum(len(b.events) for b in batches)
    if max_rows <= 0 or total <= max_rows:
        return [list(batches)]
    share = total / math.ceil(total / max_rows)
    chunks: list[list[SinkBatch]] = [[]]
    rows = 0
    for b in batches:
        if chunks[-1] and rows >= share * len(chunks):
            chunks.append([])
        chunks[-1].append(b)
        rows += len(b.events)
    return chunks


def check_group(batches: Sequence[SinkBatch]) -> None:
    """Batches of one topic-partition must come in offset order without overlap.

    Two batches covering the same offsets in one insert would store their
    events twice under one token; that is a caller's bug, refused here.
    """
    last: dict[tuple[str, int], int] = {}
    for b in batches:
        key = (b.topic, b.partition)
        prev = last.get(key)
        if prev is not None and b.first_offset <= prev:
            raise ValueError(
                f"batch {b.token} overlaps or precedes an earlier batch of {b.topic}/{b.partition}"
                " in the same write_many; pass each partition's batches once, in offset order"
            )
        last[key] = b.last_offset


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


def _body(batches: Sequence[SinkBatch], compress: bool) -> bytes:
    if all(b.encoded is not None for b in batches):
        body = join_fragments(b.encoded for b in batches)
    else:
        body = encode_events(e for b in batches for e in b.events)
    if not compress:
        return body
    # One LZ4 frame, as clickhouse-connect sends its own inserts
    # (Content-Encoding: lz4); raw_insert sends the bytes as given.
    return bytes(lz4.frame.compress(body))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: may be anywhere
        return False


class ClickHouseSink(UsageSink):
    """UsageSink on clickhouse-connect's async client (HTTP, keep-alive, lz4 off loopback)."""

    def __init__(
        self,
        target: ClickHouseTarget | str,
        *,
        database: str | None = None,
        table: str = "usage_events",
        retry: RetryPolicy | None = None,
        connect_timeout_s: float = 5.0,
        send_receive_timeout_s: float = 60.0,
        insert_max_rows: int = INSERT_MAX_ROWS,
    ) -> None:
        self.target = ClickHouseTarget.parse(target) if isinstance(target, str) else target
        self.database = check_identifier(database or self.target.database, "database")
        self.table = check_identifier(table, "table")
        self.retry = retry or RetryPolicy()
        self.connect_timeout_s = connect_timeout_s
        self.send_receive_timeout_s = send_receive_timeout_s
        if insert_max_rows < 0:
            raise ConfigError(
                f"insert_max_rows must be >= 0 (0: one insert a write), got {insert_max_rows}",
                details={"setting": "TOKENPULSE_INSERT_MAX_ROWS"},
            )
        self.insert_max_rows = insert_max_rows
        self._client: Any = None
        # Inserts travel lz4-compressed (a quarter of the bytes), except to a
        # server on this machine: there compressing and decompressing is CPU
        # taken from the two processes sharing it, for nothing (~0.3 us a row).
        self.compress_inserts = not _is_loopback(self.target.host)
        # _WANTED_SETTINGS as the server understands them (set by start()).
        self._insert_settings: dict[str, Any] = dict(_WANTED_SETTINGS)

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
        try:
            await self._prepare_session()
        except BaseException:
            await self.close()  # a start that fails leaves no connection behind
            raise

    async def _prepare_session(self) -> None:
        """The insert settings this server knows, and the schema the worker needs."""
        wanted = _WANTED_SETTINGS
        client = self._client
        assert client is not None

        async def known_settings() -> Any:
            return await client.query(
                "SELECT name FROM system.settings WHERE name IN {names:Array(String)}",
                parameters={
                    "names": sorted({*wanted, *(o for o, _ in _SETTING_FALLBACKS.values() if o)})
                },
            )

        result = await with_retries("settings query", self.retry, known_settings, self._where)
        self._insert_settings, warnings = usable_insert_settings(
            {str(row[0]) for row in result.result_rows}, wanted
        )
        for warning in warnings:
            log.warning("%s (%s)", warning, self._where)
        await self._check_schema()

    async def _check_schema(self) -> None:
        """Refuse a database without the tables and views the worker's numbers depend on."""
        client = self._client
        assert client is not None

        async def present() -> Any:
            return await client.query(
                "SELECT name FROM system.tables"
                " WHERE database = {db:String} AND name IN {names:Array(String)}",
                parameters={"db": self.database, "names": list(WORKER_OBJECTS)},
            )

        result = await with_retries("schema query", self.retry, present, self._where)
        found = {str(row[0]) for row in result.result_rows}
        missing = [name for name in WORKER_OBJECTS if name not in found]
        if not missing:
            return
        details = {"database": self.database, "missing": missing}
        if WORKER_OBJECTS[0] in missing:
            raise ConfigError(
                f"database {self.database} has no {', '.join(missing)}: run"
                " `tokenpulse db migrate` for it before starting the worker",
                details=details,
            )
        raise ConfigError(
            f"database {self.database} lacks {', '.join(missing)} (dropped by hand?): quota"
            " checks and reports read the totals these views fill from each insert into"
            " usage_events, and would count less than the events; re-create them as"
            ' docs/operations.md says ("A dropped view") before starting the worker',
            details=details,
        )

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
        await self.write_many([batch])

    def encode_ahead(self, events: Sequence[AcceptedEvent]) -> Any:
        # The insert body's per-column fragments, made while the write before
        # is in flight: encoding a full group at the write took 0.4 s of its
        # 1.1-1.8 s (143,000 rows, an SDK envelope drain), the worker waiting.
        try:
            return encode_fragments(events)
        except (TypeError, ValueError):
            return None  # the write encodes it again and names the problem

    async def write_many(self, batches: Sequence[SinkBatch]) -> None:
        """Every event of these batches, durable when this returns; idempotent.

        One insert, or with more than `insert_max_rows` rows several inserts
        in parallel (`insert_chunks`), each under the `group_token` of its
        batches: a single insert of ClickHouse runs on one thread, and a
        write of SDK envelopes (~120,000 rows) kept the worker waiting for it
        a third of the time (BENCHMARKS.md, rounds 20-21). Batches without
        events are skipped (and left out of the tokens, so
        `write_many([b, empty])` is the same insert as `write(b)`); with no
        events at all nothing is sent. After a failure the caller must
        re-send the same batches in the same order: rows that may have
        landed, sent again in another grouping, get another token and would
        be stored twice. Every insert is awaited, failed or not, before a
        failure is raised (the first): none is left running into the re-send.
        """
        check_group(batches)
        full = [b for b in batches if b.events]  # an empty batch has nothing to insert
        if not full:
            return
        chunks = insert_chunks(full, self.insert_max_rows)
        if len(chunks) == 1:
            await self._insert(chunks[0])
            return
        outcomes = await asyncio.gather(
            *(self._insert(chunk) for chunk in chunks), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _insert(self, batches: Sequence[SinkBatch]) -> None:
        """One insert of these batches' events, under their group_token, with retries."""
        client = self._require()
        token = group_token(batches)
        what = f"insert of batch {token}" if len(batches) == 1 else f"insert of batches {token}"
        try:
            # Off the event loop: 1 us/row is 100 ms for a round of 100k rows.
            body = await asyncio.to_thread(_body, batches, self.compress_inserts)
        except (TypeError, ValueError) as exc:
            raise SinkWriteError(
                f"cannot encode the rows of {what}: {exc}", details={"token": token}
            ) from exc
        table = f"{self.database}.{self.table}"
        settings = {**self._insert_settings, "insert_deduplication_token": token}

        async def insert() -> None:
            await client.raw_insert(
                table,
                COLUMN_NAMES,
                insert_block=body,
                settings=settings,
                fmt=FORMAT,
                compression="lz4" if self.compress_inserts else None,
            )

        await with_retries(what, self.retry, insert, self._where)

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
    ) -> Mapping[int, Sequence[tuple[str, float, float]]]:
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
        out: dict[int, list[tuple[str, float, float]]] = {
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
                    "SELECT event_id, toUnixTimestamp64Milli(ingested_at),"
                    " toUnixTimestamp64Milli(occurred_at)" + where,
                    parameters=id_params,
                )

            result = await with_retries("recent ids query", self.retry, ids, self._where)
            event_ids, ingested_ms, occurred_ms = result.result_columns or ([], [], [])
            out[part] = [
                (str(e), int(i_ms) / 1000.0, int(o_ms) / 1000.0)
                for e, i_ms, o_ms in zip(event_ids, ingested_ms, occurred_ms, strict=True)
            ]
        return out
