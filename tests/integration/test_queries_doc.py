"""Every ```sql block of docs/queries.md runs as written on seeded data, with known answers."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.cli import main
from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "queries.md"
A7 = "acme/research/agent-7"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (tenant, model, region, occurred, ingested, input, cached, output, late)
SEED = [
    (A7, "research-xl", "eu-west", "2026-11-02 10:00:05", "2026-11-02 10:00:06",
     1_000_000, 200_000, 500_000, False),
    (A7, "research-xl", "eu-west", "2026-11-02 10:00:40", "2026-11-02 10:00:41",
     200_000, 0, 100_000, False),
    (A7, "research-xl", "eu-west", "2026-11-04 08:00:00", "2026-11-04 08:00:01",
     10_000, 0, 0, False),
    ("acme/ops", "frontier-large", "us-east", "2026-11-03 09:00:00", "2026-11-03 09:00:01",
     300_000, 0, 0, False),
    ("acme/ops", "frontier-large", "us-east", "2026-10-15 12:00:00", "2026-10-15 12:00:01",
     100_000, 0, 0, False),
    ("acme/ops", "frontier-large", "us-east", "2026-10-30 12:00:00", "2026-11-10 00:00:00",
     40_000, 0, 0, True),
    ("globex", "small-fast", "eu-west", "2026-11-05 00:00:00", "2026-11-05 00:00:01",
     50_000, 0, 10_000, False),
]  # fmt: skip


def _seed_batches() -> list[SinkBatch]:
    accepted = []
    for i, (tenant, model, region, occ, ing, inp, cached, out, late) in enumerate(SEED):
        ev = UsageEvent(
            event_id=f"q-{i}", tenant_id=tenant, occurred_at=_at(occ), model=model,
            input_tokens=inp, cached_input_tokens=cached, output_tokens=out, region=region,
        )  # fmt: skip
        accepted.append(AcceptedEvent(ev, "usage", 0, i, _at(ing), late))
    return [SinkBatch("usage", 0, 0, len(accepted) - 1, tuple(accepted))]


Rows = list[tuple[Any, ...]]


def _by(rows: Rows, col: int = 0) -> dict[Any, tuple[Any, ...]]:
    return {r[col]: r for r in rows}


# One check per ```sql block, in document order: (columns, check on the rows).
CHECKS: list[tuple[int, Callable[[Rows], bool]]] = [
    # 1 tenant/model totals: agent-7 research-xl: 3 events, uncached 1.01M, total 1.81M
    (7, lambda r: (r[0][0], r[0][2], r[0][3], r[0][6]) == (A7, 3, 1_010_000, 1_810_000)),
    # 2 organisations: acme = 1.81M + 0.3M, two sub-tenants
    (3, lambda r: r[0] == ("acme", 2_110_000, 2) and _by(r)["globex"][1] == 60_000),
    # 3 agent-7 per day
    (4, lambda r: [(str(x[0]), x[1], x[3]) for x in r]
     == [("2026-11-02", 1_200_000, 2), ("2026-11-04", 10_000, 1)]),
    # 4 hierarchy levels
    (3, lambda r: _by(r)["acme"][1:] == (1, 2_110_000)
     and _by(r)["acme/research"][1:] == (2, 1_810_000) and _by(r)[A7][1] == 3),
    # 5 cache share: research-xl 200k of 1.21M
    (4, lambda r: _by(r)["research-xl"][1:3] == (200_000, 1_210_000)
     and float(_by(r)["research-xl"][3]) == 16.53),
    # 6 growth: acme/ops 300k now vs 140k in October
    (4, lambda r: _by(r)["acme/ops"][1:3] == (300_000, 140_000)
     and float(_by(r)["acme/ops"][3]) == 114.3),
    # 7 late: the October event ingested on Nov 10
    (6, lambda r: len(r) == 1 and r[0][0] == "acme/ops" and r[0][3:] == (1, 40_000, 1)),
    # 8 peak: research-xl eu-west minute 10:00 carries 1.8M tokens = 30000/s
    (5, lambda r: r[0][:2] == ("research-xl", "eu-west") and float(r[0][4]) == 30_000.0),
    # 9 busiest hour of week: Monday 10:00 = hour 10
    (4, lambda r: r[0][:3] == ("research-xl", 10, 1_800_000) and float(r[0][3]) == 30_000.0),
    # 10 invoices per org account (examples/pricebook.toml, account_level = 1): acme =
    # agent-7 1.01M x 150 + 0.2M x 15 + 0.6M x 150 per million = 151.50 + 3.00 + 90.00,
    # plus acme/ops 300k x 15/M = 4.50, and its late October 40k x 15/M = 0.60;
    # globex has a 500.00 minimum
    (6, lambda r: _by(r)["acme"][1:]
     == ("USD", Decimal("249.00"), Decimal("0.60"), 0, Decimal("249.60"))
     and _by(r)["globex"][4:] == (Decimal("499.98"), Decimal("500.00"))),
    # dedup check: events == distinct ids
    (2, lambda r: r == [(5, 5)]),
]  # fmt: skip


def _sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


async def test_every_documented_query_runs_and_answers_correctly(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = clickhouse_database
    migrate(clickhouse_client, RenderOptions(database=db))
    async with ClickHouseSink(services.clickhouse_url, database=db) as sink:
        for batch in _seed_batches():
            await sink.write(batch)
    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url)
    book = str(ROOT / "examples" / "pricebook.toml")
    assert (
        main(["bill", "--month", "2026-11", "--pricebook", book, "--database", db, "--write"]) == 0
    )
    capsys.readouterr()

    blocks = _sql_blocks()
    assert len(blocks) == len(CHECKS) == 11
    for i, (sql, (ncols, check)) in enumerate(zip(blocks, CHECKS, strict=True), start=1):
        runnable = re.sub(r"\btokenpulse\.", f"{db}.", sql)
        assert db in runnable, f"query {i} does not read the tokenpulse database"
        result = clickhouse_client.query(runnable)
        rows = [tuple(r) for r in result.result_rows]
        assert rows, f"query {i} returned nothing"
        assert len(result.column_names) == ncols, f"query {i}: {result.column_names}"
        assert check(rows), f"query {i} answered {rows}"
