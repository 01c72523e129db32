"""What the worker's quota read costs the endpoint on a tenant hierarchy, by quotas per query.

Usage: .venv/bin/python bench/quota_read_bench.py [--orgs 50] [--teams 20] [--agents 20]
       [--minutes 30] [--spacing-minutes 7] [--period day] [--quotas 50 500]
       [--chunks 50 100 250] [--runs 5]

A fresh embedded endpoint gets the minute and hour totals of orgs x teams x
agents leaf tenants (`org1/team2/agent3`, 20,000 by default): `--minutes`
minute rows each, `--spacing-minutes` apart from the start of the quotas'
`--period` (day or month), generated inside the server, merged into one
part per table; the hour rows are the minute rows summed. The quotas are
on random tenants of the hierarchy: 70 % agents, 20 % teams, 10 % orgs (a
prefix quota covers 400 or 20 tenants). The reader's own SQL is captured
(`ClickHouseUsageReader.usage_many` with `max_branches` = the chunk) and
run `--runs` times; printed: the endpoint's CPU per check (median) and per
quota. `bench/ab.sh REV PAIRS quota_read_bench.py ...` compares a commit.

A month of always-on agents (round 15):
  quota_read_bench.py --orgs 20 --teams 5 --agents 10 --minutes 28800
      --spacing-minutes 1 --period month --quotas 50 --chunks 50
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import clickhouse_connect
from sink_bench import _start_endpoint  # bench/ is on sys.path when run as a script

from tokenpulse.bench.services import proc_cpu_s
from tokenpulse.config import ClickHouseTarget
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.usage_query import MAX_BRANCHES, ClickHouseUsageReader, UsageRequest

MONTH = datetime(2026, 11, 1, tzinfo=UTC)
NEXT_MONTH = datetime(2026, 12, 1, tzinfo=UTC)

_DB = "quota_read_bench"
_COLS = ["tenant_id", "model", "minute", "events", "input_tokens", "output_tokens",
         "cached_input_tokens", "reasoning_tokens", "gpu_seconds"]  # fmt: skip


class _Rows(NamedTuple):
    result_rows: list[tuple[Any, ...]]


Answer = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]


class ReaderSql:
    """A `ClickHouseUsageReader` whose client records the queries it sends.

    `answer` gives each query's rows (default: none, a valid answer of the
    minute reads). The benches run the worker's own SQL, not a copy of it.
    Also used by bench/endpoint_bench.py.
    """

    def __init__(self, db: str, *, max_branches: int = MAX_BRANCHES, answer: Answer | None = None):
        self.queries: list[tuple[str, dict[str, Any]]] = []
        self._answer = answer
        self.reader = ClickHouseUsageReader(
            ClickHouseTarget.parse(f"http://default:@127.0.0.1:1/{db}"), max_branches=max_branches
        )
        self.reader._client = self

    async def query(self, sql: str, parameters: dict[str, Any]) -> _Rows:
        self.queries.append((sql, parameters))
        return _Rows(self._answer(sql, parameters) if self._answer is not None else [])


def _queries(requests: list[UsageRequest], chunk: int) -> list[tuple[str, dict[str, Any]]]:
    sql = ReaderSql(_DB, max_branches=chunk)
    asyncio.run(sql.reader.usage_many(requests))
    return sql.queries


def _seed(client: Any, tenants: list[str], minutes: int, spacing_min: int) -> None:
    client.command(f"CREATE TABLE {_DB}.tenants (i UInt32, tenant_id String) ENGINE = Memory")
    client.insert(f"{_DB}.tenants", list(enumerate(tenants)), column_names=["i", "tenant_id"])
    # Generated inside the server: a dense month is tens of millions of rows.
    start_s = int(MONTH.timestamp())
    client.command(
        f"INSERT INTO {_DB}.usage_by_minute ({', '.join(_COLS)})"
        " SELECT tenant_id, ['gpt-4o', 'claude', 'llama'][i % 3 + 1],"
        f" toDateTime({start_s} + ((number * {spacing_min}) + i % 5) * 60, 'UTC'),"
        f" 1, 100, 10, 0, 0, 0 FROM {_DB}.tenants AS t CROSS JOIN numbers({minutes}) AS n"
    )
    client.command(
        f"INSERT INTO {_DB}.usage_by_hour (tenant_id, model, region, hour, events, input_tokens,"
        " output_tokens, cached_input_tokens, reasoning_tokens, gpu_seconds)"
        " SELECT tenant_id, model, 'eu', toStartOfHour(minute) AS hour, sum(events),"
        " sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),"
        f" sum(reasoning_tokens), sum(gpu_seconds) FROM {_DB}.usage_by_minute"
        " GROUP BY tenant_id, model, hour"
    )
    client.command(f"OPTIMIZE TABLE {_DB}.usage_by_minute FINAL")
    client.command(f"OPTIMIZE TABLE {_DB}.usage_by_hour FINAL")


def _quotas(tenants: list[str], n: int, period: str, rnd: random.Random) -> list[UsageRequest]:
    start, end = (MONTH, MONTH + timedelta(days=1)) if period == "day" else (MONTH, NEXT_MONTH)
    out = []
    for _ in range(n):
        tenant, x = rnd.choice(tenants), rnd.random()
        if x < 0.2:
            tenant = tenant.rsplit("/", 1)[0]  # a team
        elif x < 0.3:
            tenant = tenant.split("/")[0]  # an org
        out.append(UsageRequest(tenant, None, start, end))
    return list(dict.fromkeys(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--spacing-minutes", type=int, default=7)
    parser.add_argument("--period", choices=("day", "month"), default="day")
    parser.add_argument("--quotas", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--chunks", type=int, nargs="+", default=[50, 100, 250])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tenants = [
        f"org{o}/team{t}/agent{a}"
        for o in range(args.orgs)
        for t in range(args.teams)
        for a in range(args.agents)
    ]
    data_dir = tempfile.mkdtemp(prefix="tp-quota-read-")
    proc, url = _start_endpoint(data_dir)
    try:
        client = clickhouse_connect.get_client(dsn=url)
        migrate(client, RenderOptions(database=_DB))
        _seed(client, tenants, args.minutes, args.spacing_minutes)
        rnd = random.Random(1)
        print(f"{len(tenants):,} leaf tenants, {len(tenants) * args.minutes:,} minute rows;"
              f" medians of {args.runs} checks\n")  # fmt: skip
        print("| quotas | quotas per query | queries | endpoint CPU ms a check | ms a quota |")
        print("| --- | --- | --- | --- | --- |")
        for n in args.quotas:
            requests = _quotas(tenants, n, args.period, rnd)
            for chunk in (c for c in args.chunks if c <= max(args.chunks[0], len(requests))):
                queries = _queries(requests, chunk)
                costs = []
                for _ in range(args.runs):
                    before = proc_cpu_s(proc.pid)
                    for sql, params in queries:
                        client.query(sql, parameters=params)
                    costs.append((proc_cpu_s(proc.pid) - before) * 1e3)
                ms = statistics.median(costs)
                print(f"| {len(requests)} | {chunk} | {len(queries)} | {ms:,.0f}"
                      f" | {ms / len(requests):.2f} |")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
