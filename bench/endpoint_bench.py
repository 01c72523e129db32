"""Where the embedded ClickHouse endpoint's CPU goes: inserts by table shape and format, queries.

    .venv/bin/python bench/endpoint_bench.py [--inserts 30] [--rows 12000] [--runs 3]
    .venv/bin/python bench/endpoint_bench.py --only-settings --inserts 300 \\
        --setting usage_events:merge_selector_base=5

Starts a temporary local stack and reads the endpoint process's CPU from
/proc (so it measures the embedded endpoint only). Each insert variant gets a
freshly migrated database and the same `--inserts` bodies of `--rows`
usage_events rows, sent as the sink sends them (lz4, its settings, one
dedup token an insert) 100 ms apart, about a worker's insert pace at half
the bench's load; the CPU is counted until the database's merges settled
and printed per row. Variants, interleaved run by run:
- as the sink writes today (JSONCompactColumns, the three materialized views,
  the p_offsets projection and the event_id bloom index);
- the same database without the materialized views, without the
  projection, without the bloom index: what each costs the endpoint;
- the same rows as ArrowStream (pyarrow, naive: Python lists to arrays): what
  that body would save the endpoint, next to what building it costs here.
- `--setting [TABLE:]NAME=VALUE`: a MergeTree setting on the tables (e.g.
  `usage_events:merge_selector_base=5`); `--insert-setting NAME=VALUE`: one
  more setting on each insert; `--only-settings` leaves out the shape and
  format variants.
In the last run, each variant's database is also queried as it was left
(merges settled): SELECT 1, a count over one tenant, `tokenpulse bench`'s
freshness poll and the worker's quota read of 50 tenants (both forms), so a
setting's price per query shows beside what it saves per row. One table of
medians; compare rows within a run (the VM's speed moves).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import clickhouse_connect
import lz4.frame
import pyarrow as pa
from quota_read_bench import ReaderSql  # bench/ is on sys.path when run as a script

from tokenpulse.bench.services import obtain_services, proc_cpu_s
from tokenpulse.sinks._encode import (
    COLUMN_NAMES,
    EVENT_COLUMNS,
    FORMAT,
    PARSE_SETTINGS,
    encode_events,
    event_columns,
)
from tokenpulse.sinks.base import AcceptedEvent
from tokenpulse.sinks.clickhouse import INSERT_SETTINGS
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.sinks.synthetic import as_batches, random_events
from tokenpulse.streams.usage_query import ModelUsageRequest, UsageRequest

_ARROW_TYPES = {
    "String": pa.string(),
    "LowCardinality(String)": pa.string(),
    "DateTime64(3, 'UTC')": pa.timestamp("ms", tz="UTC"),
    "UInt64": pa.uint64(),
    "UInt32": pa.uint32(),
    "UInt16": pa.uint16(),
    "Nullable(Float64)": pa.float64(),
    "Map(String, String)": pa.map_(pa.string(), pa.string()),
    "Bool": pa.bool_(),
}


_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in EVENT_COLUMNS])
_MAP = COLUMN_NAMES.index("attributes")


def arrow_body(events: Sequence[AcceptedEvent]) -> bytes:
    """The rows as one ArrowStream body (the endpoint reads columns by name)."""
    cols: list[Any] = event_columns(events)
    cols[_MAP] = [list(d.items()) for d in cols[_MAP]]
    arrays = [pa.array(col, type=field.type) for col, field in zip(cols, _SCHEMA, strict=True)]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _SCHEMA) as writer:
        writer.write_table(pa.Table.from_arrays(arrays, schema=_SCHEMA))
    return bytes(sink.getvalue().to_pybytes())


class Variant(NamedTuple):
    label: str
    setup: tuple[str, ...]  # statements run after the migration
    fmt: str  # body format
    insert_settings: tuple[tuple[str, str], ...] = ()  # on top of the sink's


VARIANTS: tuple[Variant, ...] = (
    Variant("as the sink writes", (), FORMAT),
    Variant(
        "without the 3 materialized views",
        tuple(
            f"DROP VIEW {{db}}.{v}"
            for v in ("usage_by_minute_mv", "usage_by_hour_mv", "demand_by_minute_mv")
        ),
        FORMAT,
    ),
    Variant(
        "without the p_offsets projection",
        ("ALTER TABLE {db}.usage_events DROP PROJECTION p_offsets",),
        FORMAT,
    ),
    Variant(
        "without the event_id bloom index",
        ("ALTER TABLE {db}.usage_events DROP INDEX idx_event_id",),
        FORMAT,
    ),
    Variant("ArrowStream body", (), "ArrowStream"),
)
_TENANTS = tuple([f"acme/{t}" for t in "abcdefgh"] + [f"team-{i}" for i in range(92)])
_TABLES = ("usage_events", "usage_by_minute", "usage_by_hour", "demand_by_minute")


def setting_variant(assignment: str) -> Variant:
    """A variant with one MergeTree setting, `[TABLE:]NAME=VALUE`: on TABLE or on the four."""
    key, sep, value = assignment.partition("=")
    target, _, name = key.rpartition(":")
    if not sep or not name.isidentifier() or (target and target not in _TABLES):
        raise SystemExit(f"--setting wants [TABLE:]NAME=VALUE, TABLE one of {_TABLES}")
    tables = (target,) if target else _TABLES
    return Variant(
        f"with {name}={value}" + (f" on {target}" if target else ""),
        tuple(f"ALTER TABLE {{db}}.{t} MODIFY SETTING {name} = {value}" for t in tables),
        FORMAT,
    )


def insert_setting_variant(assignment: str) -> Variant:
    """A variant whose inserts carry one more query setting, `NAME=VALUE`."""
    name, sep, value = assignment.partition("=")
    if not sep or not name.isidentifier():
        raise SystemExit(f"--insert-setting wants NAME=VALUE, got {assignment!r}")
    return Variant(f"inserts with {name}={value}", (), FORMAT, ((name, value),))


def _settle(client: Any, db: str, timeout_s: float = 60.0) -> None:
    """Wait until no merge runs in `db`, then a second more."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = client.query(
            "SELECT count() FROM system.merges WHERE database = {db:String}",
            parameters={"db": db},
        ).result_rows[0][0]
        if not running:
            break
        time.sleep(0.2)
    time.sleep(1.0)


def _insert(
    client: Any,
    db: str,
    bodies: list[bytes],
    fmt: str,
    extra: tuple[tuple[str, str], ...] = (),
) -> None:
    """The bodies into db.usage_events as the sink sends them, 100 ms apart."""
    for i, body in enumerate(bodies):
        settings = {
            **INSERT_SETTINGS,
            **PARSE_SETTINGS,
            **dict(extra),
            "insert_deduplication_token": f"{db}-{i}",
        }
        client.raw_insert(
            f"{db}.usage_events", COLUMN_NAMES, insert_block=body, settings=settings,
            fmt=fmt, compression="lz4",
        )  # fmt: skip
        time.sleep(0.1)


class Measured(NamedTuple):
    us_per_row: float  # endpoint CPU, merges included
    parts: int  # active parts of usage_events once the merges settled
    query_ms: dict[str, float]  # endpoint CPU per query on them (empty: not asked)


def _insert_variant(
    client: Any,
    pid: int,
    variant: Variant,
    bodies: dict[str, list[bytes]],
    rows: int,
    query_repeat: int = 0,
) -> Measured:
    """One variant on a fresh database (`rows`: of all its bodies); with `query_repeat`,
    also what a query costs on the parts it left."""
    label, setup, fmt, extra = variant
    db = "eb_" + uuid.uuid4().hex[:10]
    client.command(f"CREATE DATABASE {db}")
    try:
        migrate(client, RenderOptions(database=db))
        for statement in setup:
            client.command(statement.format(db=db))
        _settle(client, db)
        before = proc_cpu_s(pid)
        _insert(client, db, bodies[fmt], fmt, extra)
        _settle(client, db)
        stored = client.query(f"SELECT count() FROM {db}.usage_events").result_rows[0][0]
        if stored != rows:
            raise RuntimeError(f"{label}: {stored} rows stored, {rows} sent")
        us = (proc_cpu_s(pid) - before) / stored * 1e6
        parts = client.query(
            "SELECT count() FROM system.parts WHERE database = {db:String}"
            " AND table = 'usage_events' AND active",
            parameters={"db": db},
        ).result_rows[0][0]
        queries = _query_costs(client, pid, db, query_repeat) if query_repeat else {}
        return Measured(us, int(parts), queries)
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")


_QUOTA_BRANCHES = 50


def _quota_reads(db: str, tenants: Sequence[str], start: datetime) -> dict[str, tuple[str, Any]]:
    """The worker's quota reads of these tenants' day, as `ClickHouseUsageReader` builds
    them: over the minute totals (whole-minute bounds, the engine's) and over the events
    (other bounds), for token quotas and for cost quotas (month to date and the day).
    Captured from the reader itself, so the bench runs the worker's own SQL."""

    def answer(sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        if "sumIf" in sql:  # a cost read: no (tenant, model) rows is a valid answer
            return []
        first = 1 if "ARRAY JOIN" in sql else 0  # the minute read numbers quotas from 1
        return [(first + q, 0, 0) for q in range(len(tenants))]

    capture = ReaderSql(db, answer=answer)
    reader = capture.reader
    end = start + timedelta(days=1)
    asyncio.run(reader.usage_many([UsageRequest(t, None, start, end) for t in tenants]))
    off_minute = end - timedelta(seconds=1)
    asyncio.run(reader.usage_many([UsageRequest(t, None, start, off_minute) for t in tenants]))
    month = start.replace(day=1)
    costs = [ModelUsageRequest(t, None, month, start, end) for t in tenants]
    asyncio.run(reader.usage_by_model_many(costs))
    odd = [ModelUsageRequest(t, None, month, start, off_minute) for t in tenants]
    asyncio.run(reader.usage_by_model_many(odd))
    (minutes, events, cost_minutes, cost_events) = capture.queries
    n = len(tenants)
    return {
        f"quota read, {n} tenants' day (minute totals)": (minutes[0], lambda: minutes[1]),
        f"quota read, {n} tenants' day (events, a branch each)": (events[0], lambda: events[1]),
        f"cost quota read, {n} (minute totals)": (cost_minutes[0], lambda: cost_minutes[1]),
        f"cost quota read, {n} (events, a branch each)": (cost_events[0], lambda: cost_events[1]),
    }


def _query_costs(client: Any, pid: int, db: str, repeat: int) -> dict[str, float]:
    """Endpoint CPU ms per query on `db` as it is (merges settled)."""
    ids = [r[0] for r in client.query(
        f"SELECT event_id FROM {db}.usage_events WHERE tenant_id = 'acme/a' LIMIT 1000"
    ).result_rows]  # fmt: skip
    since = datetime(2026, 11, 25, tzinfo=UTC)
    queries: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "SELECT 1": ("SELECT 1", dict),
        "count over one tenant": (
            f"SELECT count() FROM {db}.usage_events WHERE tenant_id = {{t:String}}",
            lambda: {"t": "acme/a"},
        ),
        "freshness poll (20 ids)": (
            f"SELECT event_id FROM {db}.usage_events WHERE tenant_id = {{t:String}}"
            " AND occurred_at >= {since:DateTime64(3, 'UTC')}"
            " AND has({ids:Array(String)}, event_id)",
            lambda: {"t": "acme/a", "since": since, "ids": random.sample(ids, 20)},
        ),
        **_quota_reads(db, _TENANTS[:_QUOTA_BRANCHES], since),
    }
    out: dict[str, float] = {}
    for label, (sql, params) in queries.items():
        before = proc_cpu_s(pid)
        for _ in range(repeat):
            client.query(sql, parameters=params())
        out[label] = (proc_cpu_s(pid) - before) / repeat * 1e3
    return out


def _bodies(inserts: int, rows: int) -> list[list[AcceptedEvent]]:
    events = random_events(
        inserts * rows,
        start=datetime(2026, 11, 25, tzinfo=UTC),
        span=timedelta(hours=1),
        tenants=list(_TENANTS),
        models=("gpt-4o", "claude-sonnet", "llama-70b"),
    )
    batches = list(as_batches(events, partitions=6, batch_rows=rows))
    return [list(b.events) for b in batches]


def _cpu_us_per_row(
    encode: Callable[[Sequence[AcceptedEvent]], bytes], groups: list[list[AcceptedEvent]]
) -> float:
    """This process's CPU per row to build the bodies (after one warm-up call)."""
    encode(groups[0][:100])  # pyarrow initialises its converters on first use
    started = time.process_time()
    for group in groups:
        encode(group)
    return (time.process_time() - started) / sum(len(g) for g in groups) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserts", type=int, default=30)
    parser.add_argument("--rows", type=int, default=12_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="[TABLE:]NAME=VALUE",
        help="also a variant with this MergeTree setting on TABLE or the four tables (repeatable)",
    )
    parser.add_argument(
        "--insert-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also a variant whose inserts carry this query setting (repeatable)",
    )
    parser.add_argument(
        "--only-settings",
        action="store_true",
        help="the --setting variants beside the sink's writes only (no shape or format variants)",
    )
    args = parser.parse_args()
    variants = (
        (VARIANTS[:1] if args.only_settings else VARIANTS)
        + tuple(setting_variant(a) for a in args.setting)
        + tuple(insert_setting_variant(a) for a in args.insert_setting)
    )
    groups = _bodies(args.inserts, args.rows)
    rows = sum(len(g) for g in groups)
    encode_us = {
        FORMAT: _cpu_us_per_row(encode_events, groups[:5]),
        "ArrowStream": _cpu_us_per_row(arrow_body, groups[:5]),
    }
    bodies = {
        FORMAT: [bytes(lz4.frame.compress(encode_events(g))) for g in groups],
        "ArrowStream": [bytes(lz4.frame.compress(arrow_body(g))) for g in groups],
    }
    # The KAFKA/CLICKHOUSE variables would name another server: the endpoint's
    # CPU is read from its process here, so always the bench's own stack.
    os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.pop("CLICKHOUSE_URL", None)
    results: dict[str, list[float]] = {v.label: [] for v in variants}
    parts: dict[str, list[int]] = {v.label: [] for v in variants}
    queries: dict[str, dict[str, float]] = {}
    with obtain_services() as services:
        pid = services.store_pid
        assert pid is not None
        url = urlsplit(services.clickhouse_url)
        client = clickhouse_connect.get_client(
            host=url.hostname, port=url.port, username="default", password=""
        )
        for run in range(args.runs):
            last = run == args.runs - 1
            for variant in variants:
                got = _insert_variant(
                    client, pid, variant, bodies, rows, args.queries if last else 0
                )
                results[variant.label].append(got.us_per_row)
                parts[variant.label].append(got.parts)
                if last:
                    queries[variant.label] = got.query_ms
                sys.stderr.write(
                    f"run {run + 1}: {variant.label}: {got.us_per_row:.2f} us/row,"
                    f" {got.parts} parts\n"
                )
    base = statistics.median(results[variants[0].label])
    print(
        f"{len(groups)} inserts of ~{rows // len(groups):,} rows, 100 ms apart, "
        f"medians of {args.runs} runs\n"
    )
    print(
        "| insert variant | endpoint CPU us/row | x as the sink writes | client encode us/row"
        " | usage_events parts left |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, _, fmt, _ in variants:
        median = statistics.median(results[label])
        span = "-".join(str(n) for n in sorted({min(parts[label]), max(parts[label])}))
        print(f"| {label} | {median:.2f} | {median / base:.2f} | {encode_us[fmt]:.2f} | {span} |")
    labels = [v.label for v in variants]
    print(
        f"\n| query (endpoint CPU ms, on the last run's parts) | {' | '.join(labels)} |\n"
        f"| --- |{' --- |' * len(labels)}"
    )
    for query in queries[labels[0]]:
        cells = " | ".join(f"{queries[label][query]:.2f}" for label in labels)
        print(f"| {query} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
