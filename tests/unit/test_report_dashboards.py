"""Every Grafana panel's SQL runs on the real engine against a seeded database.

Grafana's macros and this repo's dashboard variables are replaced by
concrete values the way the ClickHouse data source plugin expands them,
then each query runs through clickhouse-connect. A panel whose SQL no
longer fits the schema fails here, not on someone's screen.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.sinks.billing import (
    compute_invoices,
    fetch_usage,
    parse_pricebook,
    write_invoices,
)
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.sinks.synthetic import as_batches, random_events

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
FROM = datetime(2026, 10, 1, tzinfo=UTC)
TO = datetime(2026, 11, 1, tzinfo=UTC)
BOOK = {
    "currency": "USD",
    "versions": [
        {
            "id": "v1",
            "effective_from": date(2026, 1, 1),
            "models": {
                "m-large": {"input": "10.00", "output": "30.00"},
                "m-small": {"input": "0.10", "output": "0.40"},
            },
        }
    ],
}


def panels() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for p in doc["panels"]:
            for target in p["targets"]:
                out.append((path.stem, p["title"], target["rawSql"]))
    return out


def expand(sql: str, database: str, tenant: str) -> str:
    """Grafana's macros and variables, as the ClickHouse plugin expands them."""
    t0, t1 = int(FROM.timestamp()), int(TO.timestamp())
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        lambda m: f"{m[1]} >= toDateTime({t0}) AND {m[1]} <= toDateTime({t1})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\((\w+)\)",
        lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL 3600 second)",
        sql,
    )
    quoted = "'" + tenant.replace("\\", "\\\\").replace("'", "\\'") + "'"
    for macro, value in (
        ("$__fromTime", f"toDateTime({t0})"),
        ("$__toTime", f"toDateTime({t1})"),
        ("$__interval_s", "3600"),
        ("${database}", database),
        ("${tenant:sqlstring}", quoted),
        ("${headroom}", "0.3"),
        ("${gpu_tokens_per_s}", "100"),
    ):
        sql = sql.replace(macro, value)
    assert "$" not in sql, f"unexpanded macro in: {sql}"
    return sql


def test_the_three_dashboards_have_panels() -> None:
    found = {dash for dash, _, _ in panels()}
    assert found == {"usage", "billing", "capacity"}
    assert len(panels()) >= 15


async def test_every_panel_query_runs_and_returns_rows(
    services: Any, clickhouse_client: Any, clickhouse_database: str
) -> None:
    db = clickhouse_database
    migrate(clickhouse_client, RenderOptions(database=db))
    events = random_events(
        3_000,
        start=FROM,
        span=TO - FROM - timedelta(hours=1),
        tenants=("acme/research", "acme/ops/agent-1", "globex"),
        models=("m-large", "m-small"),
    )
    late = random_events(
        100, start=FROM, span=timedelta(days=20), tenants=("acme/ops",), models=("m-small",),
        seed=9, prefix="late",
    )  # fmt: skip
    async with ClickHouseSink(services.clickhouse_url, database=db) as sink:
        for batch in as_batches(events, ingested_at=FROM + timedelta(days=3)):
            await sink.write(batch)
        for batch in as_batches(late, topic="late", ingested_at=TO, late=True):
            await sink.write(batch)
    book = parse_pricebook(BOOK)
    month = date(2026, 10, 1)
    invoices = compute_invoices(fetch_usage(clickhouse_client, db, month), book, month)
    write_invoices(clickhouse_client, db, invoices)

    for dash, title, raw in panels():
        for tenant in ("", "acme"):
            rows = clickhouse_client.query(expand(raw, db, tenant)).result_rows
            assert rows, f"{dash} / {title} (tenant {tenant!r}) returned no rows"
    # The tenant filter covers the subtree and nothing else.
    (top,) = [raw for dash, title, raw in panels() if title == "Top tenants in range"]
    tenants = {r[0] for r in clickhouse_client.query(expand(top, db, "acme")).result_rows}
    assert tenants == {"acme/research", "acme/ops/agent-1", "acme/ops"}
