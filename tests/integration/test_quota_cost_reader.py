"""The cost quota's usage query on the real ClickHouse engine, priced end to end.

The quota engine reads the minute totals and splits each minute's sums into
billing's token types; billing splits each event. A month of daily cost
quota periods must price to exactly what the invoice prices.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tokenpulse.config import ClickHouseTarget
from tokenpulse.sinks.billing import parse_pricebook
from tokenpulse.sinks.billing.invoice import compute_invoices
from tokenpulse.sinks.billing.store import fetch_usage
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.cost import billing_month, period_cost
from tokenpulse.streams.usage_query import ClickHouseUsageReader, ModelUsageRequest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = datetime(2026, 11, 25, tzinfo=UTC)
COLS = ["event_id", "tenant_id", "occurred_at", "model", "input_tokens", "output_tokens",
        "cached_input_tokens", "reasoning_tokens"]  # fmt: skip

BOOK = parse_pricebook(
    {
        "currency": "USD",
        "versions": [
            {
                "effective_from": "2026-01-01",
                "models": {
                    "m": {
                        "input": {
                            "tiers": [{"up_to": 1_000_000, "price": "10.00"}, {"price": "5.00"}]
                        },
                        "cached_input": "1.00",
                        "output": "20.00",
                    },
                    "other": {"input": "3.00", "output": "12.00", "reasoning": "15.00"},
                },
            }
        ],
    }
)


async def test_usage_by_model_splits_before_within_and_token_types(
    services: Any, clickhouse_client: Any, clickhouse_database: str
) -> None:
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    at = datetime(2026, 11, 25, 9, tzinfo=UTC)
    rows = [
        ["e1", "acme/a", datetime(2026, 11, 3, tzinfo=UTC), "m", 800_000, 0, 0, 0],  # before
        ["e2", "acme/a", at, "m", 400_000, 60_000, 100_000, 10_000],
        ["e3", "acme2", at, "m", 5, 5, 0, 0],  # not a sub-tenant
        ["e4", "acme/b", datetime(2026, 10, 31, 23, tzinfo=UTC), "m", 7, 7, 0, 0],  # last month
        ["e5", "acme/b", datetime(2026, 11, 26, 0, tzinfo=UTC), "m", 9, 9, 0, 0],  # after the day
    ]  # fmt: skip
    clickhouse_client.insert(f"{clickhouse_database}.usage_events", rows, column_names=COLS)
    target = ClickHouseTarget.parse(services.clickhouse_url + clickhouse_database)
    reader = ClickHouseUsageReader(target)
    await reader.start()
    try:
        since = datetime(2026, 11, 1, tzinfo=UTC)
        got = await reader.usage_by_model(
            "acme", None, since, DAY, datetime(2026, 11, 26, tzinfo=UTC)
        )
    finally:
        await reader.close()
    assert len(got) == 1
    (u,) = got
    assert (u.tenant_id, u.model) == ("acme/a", "m")
    assert dict(u.before) == {"input": 800_000, "cached_input": 0, "output": 0, "reasoning": 0}
    assert dict(u.within) == {
        "input": 300_000,  # uncached input: 400k - 100k cached
        "cached_input": 100_000,
        "output": 50_000,  # 60k - 10k reasoning
        "reasoning": 10_000,
    }
    # input 800k -> 1.1M: 200k x 10/M + 100k x 5/M = 2.50; cached 0.10; output+reasoning 1.20
    cost = period_cost(BOOK, "USD", billing_month(DAY), got)
    assert cost.amount == Decimal("3.80")


async def test_a_month_of_daily_cost_periods_prices_to_the_invoice(
    services: Any, clickhouse_client: Any, clickhouse_database: str
) -> None:
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    rnd = random.Random(4)
    month = datetime(2026, 11, 1, tzinfo=UTC)
    rows = []
    for i in range(600):
        inp, out = rnd.randint(0, 90_000), rnd.randint(0, 9_000)
        at = month + timedelta(seconds=rnd.randrange(30 * 86400), milliseconds=rnd.randrange(1000))
        rows.append([f"e{i}", ("acme", "beta")[i % 2], at, ("m", "other")[i % 5 == 0],
                     inp, out, rnd.randint(0, inp), rnd.randint(0, out)])  # fmt: skip
    clickhouse_client.insert(f"{clickhouse_database}.usage_events", rows, column_names=COLS)
    # The quota engine's reads: every day of the month, month to date before it.
    days = [month + timedelta(days=d) for d in range(31)]
    requests = [
        ModelUsageRequest(tenant, None, month, start, end)
        for tenant in ("acme", "beta")
        for start, end in itertools.pairwise(days)
    ]
    reader = ClickHouseUsageReader(
        ClickHouseTarget.parse(services.clickhouse_url + clickhouse_database)
    )
    await reader.start()
    try:
        read = await reader.usage_by_model_many(requests)
    finally:
        await reader.close()
    quota_cost = {"acme": Decimal(0), "beta": Decimal(0)}
    for r, got in zip(requests, read, strict=True):
        cost = period_cost(BOOK, "USD", billing_month(r.start), got)
        assert cost.unpriced_models == ()
        quota_cost[r.tenant_prefix] += cost.amount
    # Billing's own read and split, priced unrounded per line.
    usage = fetch_usage(clickhouse_client, clickhouse_database, date(2026, 11, 1))
    invoices = compute_invoices(
        usage, BOOK, date(2026, 11, 1), now=datetime(2026, 12, 9, tzinfo=UTC)
    )
    version = BOOK.version_for(date(2026, 11, 1))
    billed = {}
    for inv in invoices:
        billed[inv.account_id] = sum(
            (version.rate(ln.model, ln.token_type)[1].cost(ln.quantity)  # type: ignore[index]
             for ln in inv.lines if ln.kind == "usage"), Decimal(0))  # fmt: skip
        assert abs(billed[inv.account_id] - inv.total) < Decimal("0.01") * len(inv.lines)
    assert billed == quota_cost
    assert min(quota_cost.values()) > Decimal(10)  # tiers crossed, every type priced
