"""Done-when: `tokenpulse bill` matches an independent Decimal computation to the cent.

Tens of thousands of events go through the ClickHouseSink (some of them late,
after October closed); the expected invoices are computed here from the raw
events with a deliberately plain implementation that shares no code with
tokenpulse.sinks.billing.
"""

from __future__ import annotations

import json
import tomllib
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.cli import main
from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.sinks.synthetic import as_batches, random_events

pytestmark = pytest.mark.integration

PRICEBOOK = """
currency = "EUR"
[[versions]]
id = "2026-q4"
effective_from = 2026-10-01
minimum_monthly_fee = "1.00"
[versions.tenant_minimums]
"initech" = "25000.00"
[versions.models."research-xl"]
input = "150.00"
cached_input = "15.00"
output = "150.00"
[versions.models."frontier-large"]
cached_input = "1.337"
output = "75.00"
reasoning = "80.00"
[versions.models."frontier-large".input]
mode = "graduated"
tiers = [{ up_to = 10_000_000, price = "15.00" }, { up_to = 30_000_000, price = "12.50" },
         { price = "9.99" }]
[versions.models."small-fast"]
output = "0.60"
[versions.models."small-fast".input]
mode = "volume"
tiers = [{ up_to = 20_000_000, price = "0.15" }, { price = "0.11" }]
"""

TENANTS = ("acme/research", "acme/research/agent-7", "acme/ops", "globex", "initech")
MODELS = ("research-xl", "frontier-large", "small-fast")
OCT, NOV = date(2026, 10, 1), date(2026, 11, 1)
GRACE = timedelta(days=3)


def _plain_cost(spec: Any, qty: int) -> Decimal:
    """Independent tier arithmetic, straight from the TOML."""
    if isinstance(spec, str):
        return Decimal(qty) * Decimal(spec) / 1_000_000
    bounds = [t.get("up_to") for t in spec["tiers"]]
    prices = [Decimal(t["price"]) for t in spec["tiers"]]
    if spec.get("mode", "graduated") == "volume":
        for b, p in zip(bounds, prices, strict=True):
            if b is None or qty <= b:
                return Decimal(qty) * p / 1_000_000
    total, lower = Decimal(0), 0
    for b, p in zip(bounds, prices, strict=True):
        top = qty if b is None else min(qty, b)
        if top > lower:
            total += Decimal(top - lower) * p / 1_000_000
        if b is None or qty <= b:
            break
        lower = b
    return total


def _cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _month(d: datetime) -> date:
    return date(d.year, d.month, 1)


def _expected(
    events: list[tuple[UsageEvent, datetime]], book: dict[str, Any]
) -> dict[str, dict[tuple[str, str, str, str], Decimal]]:
    version = book["versions"][0]
    models = version["models"]
    before: dict[tuple[str, str, date, str], int] = defaultdict(int)
    now: dict[tuple[str, str, date, str], int] = defaultdict(int)
    for ev, ingested in events:
        usage_m = _month(ev.occurred_at)
        bill_m = max(usage_m, _month(ingested - GRACE))
        if bill_m > NOV:
            continue
        prices = models[ev.model]
        parts = {
            "input": ev.input_tokens - ev.cached_input_tokens,
            "cached_input": ev.cached_input_tokens,
            "output": ev.output_tokens - ev.reasoning_tokens,
            "reasoning": ev.reasoning_tokens,
        }
        for ttype, n in parts.items():
            priced_as = ttype if ttype in prices else {"cached_input": "input"}.get(ttype, "output")
            target = now if bill_m == NOV else before
            target[(ev.tenant_id, ev.model, usage_m, priced_as)] += n
    out: dict[str, dict[tuple[str, str, str, str], Decimal]] = defaultdict(dict)
    for (tenant, model, usage_m, ttype), qty in now.items():
        if not qty:
            continue
        spec = models[model][ttype]
        prior = before.get((tenant, model, usage_m, ttype), 0)
        amount = _cents(_plain_cost(spec, prior + qty)) - _cents(_plain_cost(spec, prior))
        kind = "usage" if usage_m == NOV else "adjustment"
        out[tenant][(kind, model, ttype, f"{usage_m:%Y-%m}")] = amount
    for tenant in set(out) | set(version["tenant_minimums"]):
        usage = sum((a for k, a in out[tenant].items() if k[0] == "usage"), Decimal(0))
        minimum = Decimal(version["tenant_minimums"].get(tenant, version["minimum_monthly_fee"]))
        if usage < minimum:
            out[tenant][("minimum", "", "", "2026-11")] = _cents(minimum - usage)
    return out


async def test_bill_matches_an_independent_computation_to_the_cent(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = clickhouse_database
    migrate(clickhouse_client, RenderOptions(database=db))
    book_path = tmp_path / "pricebook.toml"
    book_path.write_text(PRICEBOOK, encoding="utf-8")

    def gen(n: int, start: datetime, span: timedelta, seed: int, prefix: str) -> list[UsageEvent]:
        return random_events(
            n, start=start, span=span, tenants=TENANTS, models=MODELS, seed=seed, prefix=prefix
        )

    oct_start = datetime(2026, 10, 1, tzinfo=UTC)
    nov_start = datetime(2026, 11, 1, tzinfo=UTC)
    waves = [
        # October usage billed in October, ingested on time
        (gen(12_000, oct_start, timedelta(days=31), 1, "oct"), datetime(2026, 10, 31, tzinfo=UTC)),
        # October usage arriving Nov 2 (within grace): still October's invoice
        (gen(1_500, oct_start, timedelta(days=31), 2, "oct-g"), datetime(2026, 11, 2, tzinfo=UTC)),
        # October usage arriving Nov 20, after October closed: November adjustments
        (gen(2_500, oct_start, timedelta(days=31), 3, "oct-l"), datetime(2026, 11, 20, tzinfo=UTC)),
        (gen(16_000, nov_start, timedelta(days=30), 4, "nov"), datetime(2026, 11, 30, tzinfo=UTC)),
        # November usage arriving Dec 2 (within grace): November's invoice
        (gen(1_000, nov_start, timedelta(days=30), 5, "nov-g"), datetime(2026, 12, 2, tzinfo=UTC)),
        # November usage arriving Dec 10: December's invoice, not this one
        (gen(700, nov_start, timedelta(days=30), 6, "nov-l"), datetime(2026, 12, 10, tzinfo=UTC)),
    ]
    all_events: list[tuple[UsageEvent, datetime]] = []
    async with ClickHouseSink(services.clickhouse_url, database=db) as sink:
        for i, (events, ingested) in enumerate(waves):
            topic = f"usage-{i}"
            for batch in as_batches(events, topic=topic, batch_rows=4_000, ingested_at=ingested):
                await sink.write(batch)
            all_events += [(e, ingested) for e in events]
    assert sum(len(w[0]) for w in waves) == 33_700

    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url)
    argv = ["bill", "--month", "2026-11", "--format", "json", "--pricebook", str(book_path)]
    assert main([*argv, "--database", db, "--write"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {
        inv["tenant_id"]: {
            (ln["kind"], ln["model"], ln["token_type"], ln["usage_month"]): Decimal(ln["amount"])
            for ln in inv["lines"]
        }
        for inv in doc["invoices"]
    }
    expected = _expected(all_events, tomllib.loads(PRICEBOOK))
    assert got == expected
    for inv in doc["invoices"]:
        assert inv["currency"] == "EUR"
        assert Decimal(inv["total"]) == sum(Decimal(ln["amount"]) for ln in inv["lines"])
    # The data exercises every path: tiers crossed, adjustments, a minimum true-up.
    kinds = {k[0] for lines in got.values() for k in lines}
    assert kinds == {"usage", "adjustment", "minimum"}

    # --write stored exactly these lines; the view shows the latest run.
    stored = clickhouse_client.query(
        f"SELECT tenant_id, sum(amount) FROM {db}.invoice_lines_current"
        " WHERE invoice_month = '2026-11-01' GROUP BY tenant_id"
    ).result_rows
    assert {t: Decimal(a) for t, a in stored} == {
        inv["tenant_id"]: Decimal(inv["total"]) for inv in doc["invoices"]
    }

    # One tenant alone, as CSV, has the same lines.
    assert (
        main(
            [
                *argv[:3],
                "--format",
                "csv",
                "--pricebook",
                str(book_path),
                "--database",
                db,
                "--tenant",
                "globex",
            ]
        )
        == 0
    )
    csv_lines = capsys.readouterr().out.strip().splitlines()
    assert len(csv_lines) == 1 + len(expected["globex"])
