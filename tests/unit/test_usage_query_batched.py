"""ClickHouseUsageReader's batched reads against a fake client: chunks, order, errors.

What the SQL computes is proven on the real engine
(tests/integration/test_quota_batched_reader.py); here: how requests become
queries, how rows map back, and that failures propagate as they are.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenpulse.config import ClickHouseTarget
from tokenpulse.errors import ConfigError, ServiceUnavailable
from tokenpulse.streams.quota_logic import Usage
from tokenpulse.streams.retry import RetryAbandoned
from tokenpulse.streams.usage_query import (
    MAX_BRANCHES,
    ClickHouseUsageReader,
    ModelUsageRequest,
    UsageRequest,
    _hours_and_minutes,
)

START = datetime(2026, 11, 25, tzinfo=UTC)


@dataclass
class Result:
    result_rows: list[tuple[Any, ...]]


@dataclass
class FakeClient:
    """Answers quota q (0-based) with tenant number x 10 input tokens and q output tokens.

    The reader's one query over the minute totals numbers the quotas from 1
    (`q_t` holds their tenants), its UNION ALL over the events from 0.
    """

    delay_s: float = 0.0
    fail: list[BaseException] = field(default_factory=list)  # raised by the next queries
    drop_row: bool = False  # the server has no row for one quota (it used nothing)
    extra_row: bool = False  # ... or one for a quota nobody asked about
    queries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled: int = 0

    async def query(self, sql: str, parameters: dict[str, Any]) -> Result:
        self.queries.append((sql, parameters))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.fail:
                raise self.fail.pop(0)
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        rows = []
        if "ARRAY JOIN arrayFilter" in sql:
            for q, tenant in enumerate(parameters["q_t"]):
                rows.append((q + 1, int(tenant.removeprefix("t")) * 10, q))
            if self.extra_row:
                rows.append((len(rows) + 1, 1, 1))
        else:
            for q, branch in enumerate(sql.split(" UNION ALL ")):
                assert branch.startswith(f"SELECT toUInt32({q}) AS q,")
                tenant = parameters[re.search(r"tenant_id = \{(\w+):String\}", branch)[1]]  # type: ignore[index]
                rows.append((q, int(tenant.removeprefix("t")) * 10, q))
        rows.reverse()  # the server's order is arbitrary
        return Result(rows[1:] if self.drop_row else rows)


def _reader(client: FakeClient, **kw: Any) -> ClickHouseUsageReader:
    reader = ClickHouseUsageReader(ClickHouseTarget.parse("http://default:@127.0.0.1:1/db"), **kw)
    reader._client = client
    return reader


def _requests(n: int) -> list[UsageRequest]:
    return [
        UsageRequest(f"t{i}", None if i % 2 else "m", START, START + timedelta(days=1))
        for i in range(n)
    ]


async def test_one_query_per_max_branches_distinct_requests_in_request_order() -> None:
    client = FakeClient()
    requests = _requests(450)
    reader = _reader(client, max_branches=200)
    got = await reader.usage_many(requests + requests[:30])  # repeats are read once
    assert len(client.queries) == 3
    assert [len(p["q_t"]) for _, p in client.queries] == [200, 200, 50]
    assert [u.input_tokens for u in got] == [i * 10 for i in range(450)] + [
        i * 10 for i in range(30)
    ]
    # Shared values are bound once: 450 subtrees (for the primary key), one
    # start and one end, and the 10 parameters of each query's quota arrays.
    assert sum(len(p) for _, p in client.queries) == 450 + 3 * (2 + 10)
    assert await reader.usage_many([]) == []
    assert len(client.queries) == 3
    assert _reader(client).max_branches == MAX_BRANCHES == 50


async def test_one_request_is_one_query() -> None:
    client = FakeClient()
    (got,) = await _reader(client).usage_many(_requests(8)[7:])
    assert got == Usage(70, 0)
    assert len(client.queries) == 1


async def test_chunks_run_concurrently_within_the_bound() -> None:
    client = FakeClient(delay_s=0.01)
    got = await _reader(client, max_branches=10, max_concurrent_queries=3).usage_many(
        _requests(100)
    )
    assert len(got) == 100
    assert len(client.queries) == 10
    assert client.max_in_flight == 3


async def test_a_non_retriable_failure_propagates_as_is_and_cancels_the_rest() -> None:
    error = ConfigError("no such table")
    client = FakeClient(delay_s=0.05, fail=[error])
    reader = _reader(client, max_branches=10)
    with pytest.raises(ConfigError) as caught:
        await reader.usage_many(_requests(40))
    assert caught.value is error
    assert client.cancelled == 3
    assert client.in_flight == 0


async def test_a_retriable_failure_is_waited_out_then_answered() -> None:
    client = FakeClient(fail=[ServiceUnavailable("refused")])
    got = await _reader(client).usage_many(_requests(3))
    assert [u.input_tokens for u in got] == [0, 10, 20]
    assert len(client.queries) == 2


async def test_a_quota_without_a_row_used_nothing_an_unknown_one_is_an_error() -> None:
    # Over the minute totals a quota whose subtree has no rows in its period
    # has no group: it used nothing. An answer about a quota not asked for is
    # a wrong query, never silently dropped.
    got = await _reader(FakeClient(drop_row=True)).usage_many(_requests(3))
    assert got == [Usage(0, 0), Usage(10, 1), Usage(0, 0)]  # the third's row was dropped
    with pytest.raises(RuntimeError, match="answered quota 4 of 3"):
        await _reader(FakeClient(extra_row=True)).usage_many(_requests(3))


async def test_bounds_off_the_minute_take_a_branch_per_quota_over_the_events() -> None:
    client = FakeClient(drop_row=True)
    odd = [UsageRequest(r.tenant_prefix, r.model, r.start, r.end + timedelta(seconds=1))
           for r in _requests(3)]  # fmt: skip
    with pytest.raises(RuntimeError, match="returned 2 of 3 rows"):
        await _reader(client).usage_many(odd)
    ((sql, _),) = client.queries
    assert "usage_events" in sql
    assert sql.count(" UNION ALL ") == 2


async def test_a_retry_wait_gives_way_when_asked_to_abandon() -> None:
    # A revocation (or a stop) must not wait for the store to come back: the
    # quota check of a batch gives up between attempts, the batch stays
    # uncommitted and is re-verified by the partition's next owner.
    client = FakeClient(fail=[ServiceUnavailable("refused")] * 100)
    reader = _reader(client)
    asked = [False]
    reader.should_abandon = lambda: asked[0]
    task = asyncio.create_task(reader.usage_many(_requests(3)))
    await asyncio.sleep(0.5)  # retrying: 0.2 s, then 0.4 s
    assert not task.done()
    asked[0] = True
    with pytest.raises(RetryAbandoned, match="abandoned while the store is away"):
        await asyncio.wait_for(task, 2.0)
    attempts = len(client.queries)
    assert 2 <= attempts <= 4


@dataclass
class Recorder:
    """Records the queries; no rows (a valid answer of the minute read)."""

    queries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def query(self, sql: str, parameters: dict[str, Any]) -> Result:
        self.queries.append((sql, parameters))
        return Result([])


async def test_subtrees_are_one_anchored_regular_expression_of_literal_prefixes() -> None:
    client = Recorder()
    await _reader(client).usage_many(
        [UsageRequest(t, None, START, START + timedelta(days=1)) for t in ("t1", "a.b:c-d")]
    )
    ((sql, params),) = client.queries
    assert params["q_re"] == r"^(?:t1\/|a\.b\:c\-d\/)"
    # The startsWith terms only pick granules; rows are matched by the expression.
    assert "indexHint(tenant_id IN {q_in:Array(String)} OR startsWith(" in sql
    assert "OR match(tenant_id, {q_re:String})" in sql


async def test_minute_bounds_are_read_on_the_utc_clock_naive_ones_as_utc() -> None:
    client = FakeClient()
    naive = [UsageRequest(r.tenant_prefix, r.model, r.start.replace(tzinfo=None),
                          r.end.replace(tzinfo=None)) for r in _requests(2)]  # fmt: skip
    await _reader(client).usage_many(_requests(2))
    await _reader(client).usage_many(naive)
    aware_params, naive_params = (p for _, p in client.queries)
    day = [int(START.timestamp()), int((START + timedelta(days=1)).timestamp())]
    assert aware_params["q_bounds"] == day
    assert naive_params["q_bounds"] == day


@dataclass
class CostClient:
    """Answers a cost query with one row per quota: its tenant, model `m`, 1..8 tokens."""

    answer_quota: int | None = None  # answer this quota number instead (a wrong query)
    queries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def query(self, sql: str, parameters: dict[str, Any]) -> Result:
        self.queries.append((sql, parameters))
        if "ARRAY JOIN" in sql:
            n = len(parameters["q_t"])
            return Result([(self.answer_quota or q, parameters["q_t"][q - 1], "m", *range(1, 9))
                           for q in range(n, 0, -1)])  # fmt: skip
        return Result([(q, "t", "m", *range(1, 9)) for q in range(sql.count("SELECT"))])


def _cost_requests(n: int, start: datetime = START) -> list[ModelUsageRequest]:
    month = START.replace(day=1)
    return [
        ModelUsageRequest(f"t{i}", None, month, start, START + timedelta(days=1)) for i in range(n)
    ]


async def test_cost_rows_on_the_hour_are_one_query_over_the_hour_totals() -> None:
    client = CostClient()
    got = await _reader(client).usage_by_model_many(_cost_requests(3))
    ((sql, params),) = client.queries
    assert "usage_by_hour" in sql
    assert "usage_by_minute" not in sql  # no bound splits an hour
    assert "usage_events" not in sql
    # month start, period start, period end: the period's start is span 2.
    assert params["q_bounds"] == [int(START.replace(day=1).timestamp()), int(START.timestamp()),
                                  int((START + timedelta(days=1)).timestamp())]  # fmt: skip
    assert (params["q_s"], params["q_b"], params["q_e"]) == ([1] * 3, [2] * 3, [3] * 3)
    assert [[u.tenant_id for u in rows] for rows in got] == [["t0"], ["t1"], ["t2"]]
    assert dict(got[0][0].before) == {"input": 1, "cached_input": 2, "output": 3, "reasoning": 4}
    assert dict(got[0][0].within) == {"input": 5, "cached_input": 6, "output": 7, "reasoning": 8}
    with pytest.raises(RuntimeError, match="answered quota 7 of 3"):
        await _reader(CostClient(answer_quota=7)).usage_by_model_many(_cost_requests(3))


async def test_cost_rows_off_the_minute_take_a_branch_per_quota_over_the_events() -> None:
    client = CostClient()
    odd = _cost_requests(3, START + timedelta(seconds=30))
    got = await _reader(client).usage_by_model_many(odd)
    ((sql, _),) = client.queries
    assert "usage_events" in sql
    assert sql.count(" UNION ALL ") == 2
    assert [len(rows) for rows in got] == [1, 1, 1]


H = 3600


def test_periods_on_the_hour_are_read_by_the_hour_only() -> None:
    month = (0, 30 * 24 * H)
    assert _hours_and_minutes(month) == ((0, 30 * 24 * H, []), [])


def test_an_hour_that_a_bound_splits_is_read_by_the_minute() -> None:
    # A day in Asia/Kolkata (+05:30): its first and last half hours by the minute.
    lo, hi = 18 * H + 1800, 42 * H + 1800
    assert _hours_and_minutes([lo, hi]) == (
        (19 * H, 42 * H, []),
        [(lo, 19 * H), (42 * H, hi)],
    )
    # A minute quota inside a UTC day: its hour is cut out of the hours.
    bounds = [0, 7 * H + 1800, 7 * H + 1860, 24 * H]
    assert _hours_and_minutes(bounds) == ((0, 24 * H, [7 * H]), [(7 * H, 8 * H)])


def test_a_period_within_one_hour_is_read_by_the_minute_only() -> None:
    lo, hi = 7 * H + 1800, 7 * H + 1860
    assert _hours_and_minutes([lo, hi]) == (None, [(lo, hi)])
    # Two minute quotas in adjacent hours: one range of minutes.
    bounds = [7 * H + 3540, 7 * H + 3600 + 60]
    assert _hours_and_minutes(bounds) == (None, [(bounds[0], bounds[1])])


async def test_a_chunk_with_split_hours_reads_both_tables_in_one_query() -> None:
    client = Recorder()
    minute = START + timedelta(hours=7, minutes=30)
    await _reader(client).usage_many(
        [
            UsageRequest("t1", None, START, START + timedelta(days=1)),
            UsageRequest("t2", None, minute, minute + timedelta(minutes=1)),
        ]
    )
    ((sql, params),) = client.queries
    assert sql.count("FROM db.usage_by_hour WHERE") == 1
    assert sql.count("FROM db.usage_by_minute WHERE") == 1
    assert " UNION ALL " in sql
    assert params["q_split"] == [int((START + timedelta(hours=7)).timestamp())]
