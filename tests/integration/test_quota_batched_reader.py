"""Batched usage reads on the real ClickHouse engine equal the single-quota reads.

About 60 quotas over hierarchical tenants (with `acme2`, a string prefix
match of `acme` that is not its child, and ids with regex punctuation),
models and periods in several time zones: `usage_many` (one query, and
chunked) must answer exactly what `usage` answers per quota and what the
rows say, and so for the cost rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenpulse.config import ClickHouseTarget
from tokenpulse.schemas import QuotaDefinition
from tokenpulse.schemas.quota import quota_state_key
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.cost import ModelUsage
from tokenpulse.streams.quota_logic import Usage, period_bounds, tenant_matches
from tokenpulse.streams.quotas import QuotaEngine, Touch
from tokenpulse.streams.usage_query import (
    ClickHouseUsageReader,
    ModelUsageRequest,
    UsageRequest,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NOW = datetime(2026, 11, 25, 7, 30, tzinfo=UTC)  # 23:30 the day before in Los Angeles
# "a.b:c-d" (regex punctuation) must not cover "aXb:c-d/x".
TENANTS = ("acme", "acme/research", "acme/research/agent-7", "acme2", "acme2/x", "beta",
           "a.b:c-d", "a.b:c-d/e_f", "aXb:c-d/x")  # fmt: skip
# Kolkata (+05:30), Kathmandu (+05:45) and the minute start and end inside
# an hour: those hours are read by the minute, the others by the hour.
PERIODS = (("hour", "UTC"), ("day", "UTC"), ("day", "America/Los_Angeles"),
           ("month", "Asia/Kolkata"), ("week", "Europe/Berlin"), ("minute", "UTC"),
           ("day", "Asia/Kathmandu"))  # fmt: skip
COLS = ["event_id", "tenant_id", "occurred_at", "model", "input_tokens", "output_tokens",
        "cached_input_tokens", "reasoning_tokens"]  # fmt: skip


def _rows() -> list[list[Any]]:
    rows = []
    for i in range(400):
        at = NOW + timedelta(hours=2) - timedelta(minutes=23 * i, milliseconds=i)
        tenant = TENANTS[(i * 7) % len(TENANTS)]
        model = ("m-large", "m-small", "m-new")[(i // 7) % 3]
        rows.append([f"e{i}", tenant, at, model, 1000 + i, 10 + i % 50, i % 400, i % 10])
    return rows


ROWS = _rows()


def _requests() -> list[UsageRequest]:
    out = []
    for n, tenant in enumerate(TENANTS):
        for p, (period, tz) in enumerate(PERIODS):
            model = (None, "m-large", "m-small")[(n + p) % 3]
            start, end = period_bounds(period, NOW, tz)
            out.append(UsageRequest(tenant, model, start, end))
    return out  # 63


def _expected(r: UsageRequest, rows: Sequence[list[Any]] = ROWS) -> Usage:
    hit = [row for row in rows if tenant_matches(r.tenant_prefix, row[1])
           and r.model in (None, row[3]) and r.start <= row[2] < r.end]  # fmt: skip
    return Usage(sum(row[4] for row in hit), sum(row[5] for row in hit))


def _expected_cost(r: ModelUsageRequest, rows: Sequence[list[Any]]) -> list[ModelUsage]:
    """Billing's split of each event (invoice.py), summed per (tenant, model)."""
    sums: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for row in rows:
        if not (tenant_matches(r.tenant_prefix, row[1]) and r.model in (None, row[3])
                and min(r.since, r.start) <= row[2] < r.end):  # fmt: skip
            continue
        side = sums.setdefault((row[1], row[3]), {"before": {}, "within": {}})
        side = side["before" if row[2] < r.start else "within"]
        split = {"input": row[4] - min(row[6], row[4]), "cached_input": row[6],
                 "output": row[5] - min(row[7], row[5]), "reasoning": row[7]}  # fmt: skip
        for kind, n in split.items():
            side[kind] = side.get(kind, 0) + n
    zero = dict.fromkeys(("input", "cached_input", "output", "reasoning"), 0)
    return [
        ModelUsage(t, m, {**zero, **s["before"]}, {**zero, **s["within"]})
        for (t, m), s in sorted(sums.items())
    ]


class PerQuota:
    """The engine's read path before batching: one single-quota query each."""

    def __init__(self, reader: ClickHouseUsageReader) -> None:
        self.reader = reader

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        return [await self.reader.usage(r.tenant_prefix, r.model, r.start, r.end) for r in requests]

    async def usage_by_model_many(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        raise AssertionError("no cost quotas here")


async def test_usage_many_equals_usage_per_quota_and_the_rows(
    services: Any, clickhouse_client: Any, clickhouse_database: str
) -> None:
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    clickhouse_client.insert(f"{clickhouse_database}.usage_events", ROWS, column_names=COLS)
    target = ClickHouseTarget.parse(services.clickhouse_url + clickhouse_database)
    reader = ClickHouseUsageReader(target)
    chunked = ClickHouseUsageReader(target, max_branches=7, max_concurrent_queries=3)
    await reader.start()
    await chunked.start()
    try:
        requests = _requests()
        expected = [_expected(r) for r in requests]
        assert sum(u.input_tokens > 0 for u in expected) >= 20  # most quotas see usage
        single = [await reader.usage(r.tenant_prefix, r.model, r.start, r.end) for r in requests]
        assert single == expected
        assert await reader.usage_many(requests) == expected
        assert await chunked.usage_many(requests[::-1] + requests[:3]) == (
            expected[::-1] + expected[:3]
        )
        acme = requests[TENANTS.index("acme") * len(PERIODS) + 1]  # the UTC day
        with_acme2 = [r for r in ROWS if r[1].startswith("acme") and acme.start <= r[2] < acme.end]
        assert _expected(acme).input_tokens < sum(r[4] for r in with_acme2)

        # Cost rows: a month to date before the period and the period itself.
        by_model = [
            ModelUsageRequest(r.tenant_prefix, r.model, r.start - timedelta(days=3), r.start, r.end)
            for r in requests
        ]
        single_rows = [
            await reader.usage_by_model(r.tenant_prefix, r.model, r.since, r.start, r.end)
            for r in by_model
        ]
        single_rows = [sorted(rows, key=lambda u: (u.tenant_id, u.model)) for rows in single_rows]
        assert sum(map(len, single_rows)) > 20
        assert max(map(len, single_rows)) >= 4  # several (tenant, model) rows in one quota
        assert await reader.usage_by_model_many(by_model) == single_rows
        assert await chunked.usage_by_model_many(by_model) == single_rows

        # The engine on top: same alerts and states as with one query per quota.
        outs = []
        for r in (reader, PerQuota(reader)):
            engine = QuotaEngine(r, alerts_topic="a", state_topic="s")  # type: ignore[arg-type]
            for n, req in enumerate(requests):
                period, tz = PERIODS[n % len(PERIODS)]
                d = QuotaDefinition(quota_id=f"q{n}", tenant_id=req.tenant_prefix,
                                    metric=("input", "output", "total")[n % 3],  # type: ignore[arg-type]
                                    period=period, limit=5_000 * (1 + n % 4),  # type: ignore[arg-type]
                                    model=req.model, timezone=tz)  # fmt: skip
                engine.apply_definition(quota_state_key(d.tenant_id, d.quota_id), d)
            touches = [
                Touch(t, m, NOW, f"x{t}{m}") for t in TENANTS for m in ("m-large", "m-small")
            ]
            outs.append(await engine.check(touches, NOW))
        assert outs[0] == outs[1]
        assert sum(o.topic == "a" for o in outs[0]) > 5
    finally:
        await reader.close()
        await chunked.close()


async def test_minute_aligned_periods_are_read_from_the_minute_totals(
    services: Any, clickhouse_client: Any, clickhouse_database: str
) -> None:
    """Quota periods (always whole minutes) read usage_by_minute; other bounds the events."""
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    aligned = _requests()
    # Cost quotas: month to date since a day before, split at the period start.
    costs = [ModelUsageRequest(r.tenant_prefix, r.model, r.start - timedelta(days=1), r.start,
                               r.end) for r in aligned]  # fmt: skip
    # Rows on each period's edges: its first instant and last millisecond count,
    # its end does not (the minute totals must keep [start, end) exact); the
    # millisecond before the start is the cost's month to date, and so is the
    # first instant of `since`, but not the millisecond before it.
    edges = [
        [f"edge{n}-{k}", r.tenant_prefix, at, r.model or "m-new", 7 + k, 3 + k, k, 1]
        for n, r in enumerate(aligned)
        for k, at in enumerate(
            (
                r.start,
                r.end - timedelta(milliseconds=1),
                r.end,
                r.start - timedelta(milliseconds=1),
                r.start - timedelta(days=1),
                r.start - timedelta(days=1, milliseconds=1),
            )
        )
    ]
    rows = ROWS + edges
    clickhouse_client.insert(f"{clickhouse_database}.usage_events", rows, column_names=COLS)
    reader = ClickHouseUsageReader(
        ClickHouseTarget.parse(services.clickhouse_url + clickhouse_database)
    )
    await reader.start()
    try:
        # Off the minute: only usage_events can answer it exactly.
        odd = [UsageRequest(r.tenant_prefix, r.model, r.start + timedelta(minutes=50, seconds=30),
                            r.end) for r in aligned]  # fmt: skip
        assert await reader.usage_many(aligned) == [_expected(r, rows) for r in aligned]
        assert await reader.usage_many(odd) == [_expected(r, rows) for r in odd]
        assert [_expected(r, rows) for r in odd] != [_expected(r, rows) for r in aligned]
        assert [_expected(r, rows) for r in aligned] != [_expected(r) for r in aligned]
        odd_costs = [ModelUsageRequest(r.tenant_prefix, r.model, r.since,
                                       r.start + timedelta(seconds=30), r.end)
                     for r in costs]  # fmt: skip
        cost_rows = [_expected_cost(r, rows) for r in costs]
        assert sum(map(len, cost_rows)) > 60
        assert await reader.usage_by_model_many(costs) == cost_rows
        assert await reader.usage_by_model_many(odd_costs) == [
            _expected_cost(r, rows) for r in odd_costs
        ]
        assert [_expected_cost(r, rows) for r in odd_costs] != cost_rows
        # Without the events, the whole-minute periods still read their totals
        # (from the minute table), the others read nothing.
        clickhouse_client.command(f"TRUNCATE TABLE {clickhouse_database}.usage_events")
        assert await reader.usage_many(aligned) == [_expected(r, rows) for r in aligned]
        assert await reader.usage_many(odd) == [Usage(0, 0)] * len(odd)
        # So cost quotas outlive a usage_events retention shorter than a month.
        assert await reader.usage_by_model_many(costs) == cost_rows
        assert await reader.usage_by_model_many(odd_costs) == [[]] * len(odd_costs)
        # Whole hours come from the hour totals: without the minute totals,
        # periods on the hour still read everything; a period whose bound
        # splits an hour (its edge rows are in that hour) misses them.
        clickhouse_client.command(f"TRUNCATE TABLE {clickhouse_database}.usage_by_minute")
        hourly = [r for r in aligned if r.start.minute == 0 and r.end.minute == 0]
        split = [r for r in aligned if r not in hourly]
        assert len(hourly) == 4 * len(TENANTS)
        assert len(split) == 3 * len(TENANTS)
        assert await reader.usage_many(hourly) == [_expected(r, rows) for r in hourly]
        missing = await reader.usage_many(split)
        assert all(u.input_tokens < _expected(r, rows).input_tokens
                   for u, r in zip(missing, split, strict=True))  # fmt: skip
    finally:
        await reader.close()
