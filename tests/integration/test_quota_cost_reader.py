"""The cost quota's usage query on the real ClickHouse engine, priced end to end."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tokenpulse.config import ClickHouseTarget
from tokenpulse.sinks.billing import parse_pricebook
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.cost import billing_month, period_cost
from tokenpulse.streams.usage_query import ClickHouseUsageReader

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = datetime(2026, 11, 25, tzinfo=UTC)


async def test_usage_by_model_splits_before_within_and_token_types(
    services: Any, clickhouse_client: Any, clickhouse_database: str
) -> None:
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    cols = ["event_id", "tenant_id", "occurred_at", "model", "input_tokens", "output_tokens",
            "cached_input_tokens", "reasoning_tokens"]  # fmt: skip
    at = datetime(2026, 11, 25, 9, tzinfo=UTC)
    rows = [
        ["e1", "acme/a", datetime(2026, 11, 3, tzinfo=UTC), "m", 800_000, 0, 0, 0],  # before
        ["e2", "acme/a", at, "m", 400_000, 60_000, 100_000, 10_000],
        ["e3", "acme2", at, "m", 5, 5, 0, 0],  # not a sub-tenant
        ["e4", "acme/b", datetime(2026, 10, 31, 23, tzinfo=UTC), "m", 7, 7, 0, 0],  # last month
        ["e5", "acme/b", datetime(2026, 11, 26, 0, tzinfo=UTC), "m", 9, 9, 0, 0],  # after the day
    ]  # fmt: skip
    clickhouse_client.insert(f"{clickhouse_database}.usage_events", rows, column_names=cols)
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
    book = parse_pricebook(
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
                        }
                    },
                }
            ],
        }
    )
    # input 800k -> 1.1M: 200k x 10/M + 100k x 5/M = 2.50; cached 0.10; output+reasoning 1.20
    cost = period_cost(book, "USD", billing_month(DAY), got)
    assert cost.amount == Decimal("3.80")
