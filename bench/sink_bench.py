"""Sink throughput: ClickHouseSink into a ClickHouse HTTP endpoint vs the engine's own insert.

Usage: .venv/bin/python bench/sink_bench.py [--rows 200000] [--batch-rows 20000]
       [--url http://default:@127.0.0.1:8123/]   (default: start the embedded endpoint)

Both sides insert the same rows into a freshly migrated database: the sink
through clickhouse-connect (Native format, lz4, HTTP), the direct side with
chdb in-process from an Arrow table (no network, no encoding in Python).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import clickhouse_connect

from tokenpulse.sinks.clickhouse import EVENT_COLUMNS, ClickHouseSink, event_columns
from tokenpulse.sinks.migrations import RenderOptions, migrate, plan
from tokenpulse.sinks.synthetic import as_batches, random_events


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


async def _sink_rows_per_s(url: str, batches: list[Any], rows: int) -> float:
    client = clickhouse_connect.get_client(dsn=url)
    client.command("DROP DATABASE IF EXISTS bench_sink")
    migrate(client, RenderOptions(database="bench_sink"))
    async with ClickHouseSink(url, database="bench_sink") as sink:
        t0 = time.perf_counter()
        for b in batches:
            await sink.write(b)
        elapsed = time.perf_counter() - t0
    assert int(client.command("SELECT count() FROM bench_sink.usage_events")) == rows
    client.close()
    return rows / elapsed


def _direct_rows_per_s(batches: list[Any], rows: int) -> float:
    import chdb
    import pyarrow as pa

    conn = chdb.connect(tempfile.mkdtemp(prefix="tp-bench-direct-"))
    for _, stmt in plan(RenderOptions(database="bench_direct")):
        conn.query(stmt)
    names = [c for c, _ in EVENT_COLUMNS]
    tables = []
    for b in batches:
        cols = event_columns(b.events)
        arrays = dict(zip(names, cols, strict=True))
        arrays["attributes"] = pa.array(
            [list(d.items()) for d in arrays["attributes"]], type=pa.map_(pa.string(), pa.string())
        )
        tables.append(pa.table(arrays))
    t0 = time.perf_counter()
    for i, tbl in enumerate(tables):
        globals()["_tbl"] = tbl
        conn.query(
            f"INSERT INTO bench_direct.usage_events SETTINGS insert_deduplication_token='d{i}',"
            " deduplicate_blocks_in_dependent_materialized_views=1"
            f" SELECT {', '.join(names)} FROM Python(_tbl)"
        )
    elapsed = time.perf_counter() - t0
    count = int(str(conn.query("SELECT count() FROM bench_direct.usage_events", "CSV")).strip())
    assert count == rows, count
    conn.close()
    return rows / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-rows", type=int, default=20_000)
    ap.add_argument("--url", help="an existing ClickHouse HTTP endpoint")
    args = ap.parse_args()
    events = random_events(
        args.rows,
        start=datetime(2026, 11, 1, tzinfo=UTC),
        span=timedelta(days=7),
        tenants=[f"org{i}/team{i % 7}" for i in range(50)],
        models=("research-xl", "frontier-large", "small-fast"),
    )
    batches = list(as_batches(events, partitions=4, batch_rows=args.batch_rows))
    proc = None
    url = args.url
    if url is None:
        proc, url = _start_endpoint(tempfile.mkdtemp(prefix="tp-bench-ch-"))
    try:
        sink_rate = asyncio.run(_sink_rows_per_s(url, batches, args.rows))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    direct_rate = _direct_rows_per_s(batches, args.rows)
    print(f"rows={args.rows} batch_rows={args.batch_rows} batches={len(batches)}")
    print(f"{'path':<44}{'rows/s':>12}")
    print(f"{'ClickHouseSink -> HTTP endpoint (incl. MVs)':<44}{sink_rate:>12,.0f}")
    print(f"{'chdb direct Python(arrow) insert (incl. MVs)':<44}{direct_rate:>12,.0f}")
    print(f"{'ratio sink / direct':<44}{sink_rate / direct_rate:>12.2f}")


if __name__ == "__main__":
    main()
