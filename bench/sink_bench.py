"""Sink throughput: row encodings and insert groupings into a ClickHouse HTTP endpoint.

Usage: .venv/bin/python bench/sink_bench.py [--rows 200000] [--partitions 4]
       [--batch-rows 5000] [--runs 3]
       [--url http://default:@127.0.0.1:8123/]   (default: start the embedded endpoint)

Every variant inserts the same rows into a freshly migrated database (the
materialized views run as in production), `--runs` times, variants
interleaved so that load from other processes spreads over all of them.
"per batch" is one insert per SinkBatch (one partition's offset range);
"per round" is one insert per processing round (the k-th batch of every
partition), as `write_many` does. The table shows medians of:
- rows/s end to end: first insert sent to last insert acknowledged, server
  included (on this machine the endpoint shares the CPUs with the client);
- worker CPU us/row: time.process_time() around the client calls (encoding,
  compression, HTTP; in-process threads included, the server excluded);
- ratios of both to the baseline, clickhouse-connect's Native insert per
  batch (the sink before write_many);
- "same rows": count and a hash of every column of every row equal the
  baseline's, i.e. the variant stores exactly the same values.
The last row, chdb in-process from Arrow (no HTTP, no Python encoding), is
the engine's own pace for reference; its CPU includes the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import clickhouse_connect
import lz4.frame
import msgspec
import orjson

from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks._encode import COLUMN_NAMES, PARSE_SETTINGS, event_columns
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch
from tokenpulse.sinks.clickhouse import EVENT_COLUMNS, INSERT_SETTINGS, ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate, plan
from tokenpulse.sinks.synthetic import as_batches, random_events

Insert = Callable[[Any, ClickHouseSink, Sequence[SinkBatch], str], Awaitable[None]]
FINGERPRINT = "SELECT count(), groupBitXor(cityHash64(*)) FROM {db}.usage_events"
_OPT = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _events(batches: Sequence[SinkBatch]) -> list[AcceptedEvent]:
    return [a for b in batches for a in b.events]


def _row(a: AcceptedEvent) -> tuple[Any, ...]:
    e = a.event
    return (e.event_id, e.tenant_id, e.occurred_at, e.model, e.input_tokens, e.output_tokens,
            e.cached_input_tokens, e.reasoning_tokens, e.agent_id or "", e.region or "",
            e.provider or "", e.operation or "", e.gpu_seconds, e.attributes, e.schema_version,
            a.topic, a.partition, a.offset, a.ingested_at, a.late)  # fmt: skip


async def _raw(client: Any, db: str, body: bytes, fmt: str, token: str, lz4c: bool) -> None:
    settings = {**INSERT_SETTINGS, **PARSE_SETTINGS, "insert_deduplication_token": token}
    await client.raw_insert(
        f"{db}.usage_events",
        COLUMN_NAMES,
        insert_block=lz4.frame.compress(body) if lz4c else body,
        settings=settings,
        fmt=fmt,
        compression="lz4" if lz4c else None,
    )


async def native(client: Any, sink: ClickHouseSink, batches: Sequence[SinkBatch], t: str) -> None:
    """The sink before write_many: clickhouse-connect encodes Native in Python (lz4)."""
    await client.insert(
        "usage_events",
        event_columns(_events(batches)),
        column_names=list(COLUMN_NAMES),
        column_type_names=[t for _, t in EVENT_COLUMNS],
        database=sink.database,
        column_oriented=True,
        settings={**INSERT_SETTINGS, "insert_deduplication_token": t},
    )


async def json_each_row(client: Any, sink: ClickHouseSink, bs: Sequence[SinkBatch], t: str) -> None:
    names = COLUMN_NAMES
    body = b"\n".join(orjson.dumps(dict(zip(names, _row(a), strict=True)), option=_OPT)
                      for a in _events(bs))  # fmt: skip
    await _raw(client, sink.database, body, "JSONEachRow", t, True)


async def json_compact_rows(
    client: Any, sink: ClickHouseSink, bs: Sequence[SinkBatch], t: str
) -> None:
    body = b"\n".join(orjson.dumps(_row(a), option=_OPT) for a in _events(bs))
    await _raw(client, sink.database, body, "JSONCompactEachRow", t, True)


async def json_columns_raw(
    client: Any, sink: ClickHouseSink, bs: Sequence[SinkBatch], t: str
) -> None:
    body = orjson.dumps(event_columns(_events(bs)), option=_OPT)
    await _raw(client, sink.database, body, "JSONCompactColumns", t, False)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_TOKENS = struct.Struct("<QQQQ")


def _str(s: str, out: bytearray) -> None:
    raw = s.encode()
    n = len(raw)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    out += raw


async def row_binary(client: Any, sink: ClickHouseSink, bs: Sequence[SinkBatch], t: str) -> None:
    """RowBinary packed by hand with struct (integers of ms for DateTime64(3))."""
    out = bytearray()
    for a in _events(bs):
        e = a.event
        _str(e.event_id, out)
        _str(e.tenant_id, out)
        out += struct.pack("<q", (e.occurred_at - _EPOCH) // _MS)
        _str(e.model, out)
        out += _TOKENS.pack(e.input_tokens, e.output_tokens, e.cached_input_tokens,
                            e.reasoning_tokens)  # fmt: skip
        for s in (e.agent_id, e.region, e.provider, e.operation):
            _str(s or "", out)
        out += b"\x01" if e.gpu_seconds is None else struct.pack("<Bd", 0, e.gpu_seconds)
        out.append(len(e.attributes))  # < 128 attributes: a one-byte varint
        for k, v in e.attributes.items():
            _str(k, out)
            _str(v, out)
        out += struct.pack("<H", e.schema_version)
        _str(a.topic, out)
        out += struct.pack("<IQq?", a.partition, a.offset, (a.ingested_at - _EPOCH) // _MS, a.late)
    await _raw(client, sink.database, bytes(out), "RowBinary", t, True)


async def sink_write(client: Any, sink: ClickHouseSink, bs: Sequence[SinkBatch], t: str) -> None:
    for b in bs:
        await sink.write(b)


async def sink_write_many(
    client: Any, sink: ClickHouseSink, bs: Sequence[SinkBatch], t: str
) -> None:
    await sink.write_many(bs)


VARIANTS: tuple[tuple[str, Insert, bool], ...] = (
    # (label, insert, one insert per round rather than per batch)
    ("Native (clickhouse-connect), per batch", native, False),
    ("Native (clickhouse-connect), per round", native, True),
    ("JSONEachRow, orjson per row, lz4, per round", json_each_row, True),
    ("JSONCompactEachRow, orjson per row, lz4, round", json_compact_rows, True),
    ("RowBinary, struct by hand, lz4, per round", row_binary, True),
    ("JSONCompactColumns, orjson, no lz4, per round", json_columns_raw, True),
    ("ClickHouseSink.write (per batch)", sink_write, False),
    ("ClickHouseSink.write_many (per round)", sink_write_many, True),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_endpoint(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenpulse.local.clickhouse_http", "--data-dir", data_dir,
         "--port", str(port)],
    )  # fmt: skip
    url = f"http://default:@127.0.0.1:{port}/"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("embedded ClickHouse endpoint did not start")


async def _run(url: str, insert: Insert, groups: list[list[SinkBatch]], db: str) -> tuple[Any, ...]:
    """One variant once: (rows/s, worker CPU us/row, fingerprint)."""
    admin = clickhouse_connect.get_client(dsn=url)
    admin.command(f"DROP DATABASE IF EXISTS {db}")
    migrate(admin, RenderOptions(database=db))
    rows = sum(len(b.events) for g in groups for b in g)
    async with ClickHouseSink(url, database=db) as sink:
        client = sink._require()
        cpu = 0.0
        t0 = time.perf_counter()
        for i, group in enumerate(groups):
            c0 = time.process_time()
            await insert(client, sink, group, f"g{i}")
            cpu += time.process_time() - c0
        elapsed = time.perf_counter() - t0
    fingerprint = tuple(admin.query(FINGERPRINT.format(db=db)).result_rows[0])
    assert fingerprint[0] == rows, (fingerprint, rows)
    admin.command(f"DROP DATABASE {db}")
    admin.close()
    return rows / elapsed, cpu / rows * 1e6, fingerprint


def _direct(batches: list[SinkBatch], rows: int) -> tuple[float, float]:
    import chdb
    import pyarrow as pa

    conn = chdb.connect(tempfile.mkdtemp(prefix="tp-bench-direct-"))
    for _, stmt in plan(RenderOptions(database="bench_direct")):
        conn.query(stmt)
    tables = []
    for b in batches:
        arrays = dict(zip(COLUMN_NAMES, event_columns(b.events), strict=True))
        arrays["attributes"] = pa.array(
            [list(d.items()) for d in arrays["attributes"]], type=pa.map_(pa.string(), pa.string())
        )
        tables.append(pa.table(arrays))
    t0, c0 = time.perf_counter(), time.process_time()
    for i, tbl in enumerate(tables):
        globals()["_tbl"] = tbl
        conn.query(
            f"INSERT INTO bench_direct.usage_events SETTINGS insert_deduplication_token='d{i}',"
            " deduplicate_blocks_in_dependent_materialized_views=1"
            f" SELECT {', '.join(COLUMN_NAMES)} FROM Python(_tbl)"
        )
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    count = int(str(conn.query("SELECT count() FROM bench_direct.usage_events", "CSV")).strip())
    assert count == rows, count
    conn.close()
    return rows / elapsed, cpu / rows * 1e6


def _workload(args: argparse.Namespace) -> tuple[list[SinkBatch], list[list[SinkBatch]]]:
    rng = random.Random(11)
    events: list[UsageEvent] = [
        # Floats with full mantissas, so "same rows" checks their exact transport too.
        msgspec.structs.replace(e, gpu_seconds=rng.random() * 100) if i % 3 else e
        for i, e in enumerate(
            random_events(
                args.rows,
                start=datetime(2026, 11, 1, tzinfo=UTC),
                span=timedelta(days=7),
                tenants=[f"org{i}/team{i % 7}" for i in range(50)],
                models=("research-xl", "frontier-large", "small-fast"),
            )
        )
    ]
    batches = list(as_batches(events, partitions=args.partitions, batch_rows=args.batch_rows))
    by_part: dict[int, list[SinkBatch]] = {}
    for b in batches:
        by_part.setdefault(b.partition, []).append(b)
    depth = max(len(v) for v in by_part.values())
    rounds = [[v[k] for v in by_part.values() if k < len(v)] for k in range(depth)]
    return batches, rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch-rows", type=int, default=5_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--url", help="an existing ClickHouse HTTP endpoint")
    args = ap.parse_args()
    batches, rounds = _workload(args)
    results: dict[str, list[tuple[Any, ...]]] = {label: [] for label, _, _ in VARIANTS}
    proc = None
    url = args.url
    if url is None:
        proc, url = _start_endpoint(tempfile.mkdtemp(prefix="tp-bench-ch-"))
    try:
        for run in range(args.runs):
            for i, (label, insert, per_round) in enumerate(VARIANTS):
                groups = rounds if per_round else [[b] for b in batches]
                db = f"bench_sink_{i}_{run}"
                results[label].append(asyncio.run(_run(url, insert, groups, db)))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    direct = [_direct(batches, args.rows) for _ in range(args.runs)]

    rows_per_round = args.partitions * args.batch_rows
    print(f"rows={args.rows} partitions={args.partitions} batch_rows={args.batch_rows}"
          f" batches={len(batches)} rounds={len(rounds)} (<= {rows_per_round:,} rows/insert)"
          f" runs={args.runs} (medians)")  # fmt: skip
    head = f"{'variant':<48}{'rows/s':>10}{'x base':>8}{'CPU us/row':>12}{'x base':>8}  same rows"
    print(head)
    print("-" * len(head))
    base_label = VARIANTS[0][0]
    base_rate = statistics.median(r[0] for r in results[base_label])
    base_cpu = statistics.median(r[1] for r in results[base_label])
    base_fp = results[base_label][0][2]
    for label, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        same = "yes" if all(r[2] == base_fp for r in runs) else "NO"
        print(f"{label:<48}{rate:>10,.0f}{rate / base_rate:>8.2f}{cpu:>12.2f}"
              f"{base_cpu / cpu:>8.2f}  {same}")  # fmt: skip
    rate = statistics.median(d[0] for d in direct)
    cpu = statistics.median(d[1] for d in direct)
    print(f"{'chdb in-process Python(arrow), per batch':<48}{rate:>10,.0f}"
          f"{rate / base_rate:>8.2f}{cpu:>12.2f}{'':>8}  (engine CPU included)")  # fmt: skip
    print(
        "x base: rows/s ratio (higher is faster); CPU ratio = base CPU / variant CPU"
        " (higher is less worker CPU)"
    )


if __name__ == "__main__":
    main()
