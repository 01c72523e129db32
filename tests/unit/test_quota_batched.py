"""The quota engine reads all touched quotas of a check in one batched call, same results.

The reference is the per-quota path the engine took before: a reader whose
batched methods call the single-quota ones one by one. Both readers sum the
same in-memory rows, so any difference in the engine's output comes from
how it batches, maps and orders readings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tokenpulse.errors import ServiceUnavailable
from tokenpulse.schemas import QuotaDefinition, decode_quota_state
from tokenpulse.schemas.quota import quota_state_key
from tokenpulse.sinks.billing import parse_pricebook
from tokenpulse.streams.cost import ModelUsage
from tokenpulse.streams.quota_logic import Usage, period_bounds, tenant_matches
from tokenpulse.streams.quotas import Outgoing, QuotaEngine, Touch
from tokenpulse.streams.usage_query import ModelUsageRequest, UsageRequest

# 07:30 UTC is 23:30 of the day before in Los Angeles and 13:00 in Kolkata.
NOW = datetime(2026, 11, 25, 7, 30, tzinfo=UTC)
TENANTS = ("acme", "acme/research", "acme/research/agent-7", "acme2")
PERIODS = (("hour", "UTC"), ("day", "UTC"), ("day", "America/Los_Angeles"),
           ("month", "Asia/Kolkata"))  # fmt: skip
MODELS = (None, "m-large")
METRICS = ("input", "output", "total")


@dataclass(frozen=True)
class Row:
    tenant_id: str
    model: str
    at: datetime
    input_tokens: int
    output_tokens: int
    cached: int = 0
    reasoning: int = 0


def _rows() -> list[Row]:
    rows = []
    for i in range(120):
        tenant = TENANTS[i % len(TENANTS)]
        # Every 40 minutes back from NOW+1h: other hours, days (in every zone) and months.
        at = NOW + timedelta(hours=1) - timedelta(minutes=40 * i)
        model = ("m-large", "m-small")[i % 3 == 0]
        big = 50 if tenant == "acme2" else 1  # acme2 would push acme's quotas over if counted
        rows.append(Row(tenant, model, at, 100 * big + i, 10 * big + i % 7, i % 5, i % 3))
    return rows


ROWS = _rows()


class RowsReader:
    """Sums ROWS; the batched methods answer in one pass and count their calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[UsageRequest | ModelUsageRequest] = []
        self.fail: BaseException | None = None

    def _rows(self, prefix: str, model: str | None, lo: datetime, hi: datetime) -> list[Row]:
        return [
            r
            for r in ROWS
            if tenant_matches(prefix, r.tenant_id)
            and (model is None or r.model == model)
            and lo <= r.at < hi
        ]

    async def usage(
        self, tenant_prefix: str, model: str | None, start: datetime, end: datetime
    ) -> Usage:
        self.calls["usage"] += 1
        rows = self._rows(tenant_prefix, model, start, end)
        return Usage(sum(r.input_tokens for r in rows), sum(r.output_tokens for r in rows))

    async def usage_by_model(
        self, tenant_prefix: str, model: str | None, since: datetime, start: datetime, end: datetime
    ) -> list[ModelUsage]:
        self.calls["usage_by_model"] += 1
        return self._by_model(tenant_prefix, model, since, start, end)

    def _by_model(
        self, tenant_prefix: str, model: str | None, since: datetime, start: datetime, end: datetime
    ) -> list[ModelUsage]:
        by: dict[tuple[str, str], tuple[Counter[str], Counter[str]]] = {}
        for r in self._rows(tenant_prefix, model, min(since, start), end):
            before, within = by.setdefault((r.tenant_id, r.model), (Counter(), Counter()))
            side = before if r.at < start else within
            side["input"] += r.input_tokens - r.cached
            side["cached_input"] += r.cached
            side["output"] += r.output_tokens - r.reasoning
            side["reasoning"] += r.reasoning
        kinds = ("input", "cached_input", "output", "reasoning")
        return [
            ModelUsage(t, m, {k: b[k] for k in kinds}, {k: w[k] for k in kinds})
            for (t, m), (b, w) in sorted(by.items())
        ]

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        self.calls["usage_many"] += 1
        self.requests += requests
        if self.fail is not None:
            raise self.fail
        totals = [[0, 0] for _ in requests]
        for row in ROWS:  # one pass, like one scan serving every branch
            for i, r in enumerate(requests):
                if (
                    tenant_matches(r.tenant_prefix, row.tenant_id)
                    and r.model in (None, row.model)
                    and r.start <= row.at < r.end
                ):
                    totals[i][0] += row.input_tokens
                    totals[i][1] += row.output_tokens
        return [Usage(i, o) for i, o in totals]

    async def usage_by_model_many(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        self.calls["usage_by_model_many"] += 1
        self.requests += requests
        return [self._by_model(r.tenant_prefix, r.model, r.since, r.start, r.end) for r in requests]


class PerQuotaReader(RowsReader):
    """The path before batching: one single-quota read per (quota, period)."""

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        return [await self.usage(r.tenant_prefix, r.model, r.start, r.end) for r in requests]

    async def usage_by_model_many(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        return [
            await self.usage_by_model(r.tenant_prefix, r.model, r.since, r.start, r.end)
            for r in requests
        ]


def _definitions() -> list[QuotaDefinition]:
    defs = []
    for t in TENANTS:
        for p, (period, tz) in enumerate(PERIODS):
            for m, model in enumerate(MODELS):
                n = len(defs)
                defs.append(
                    QuotaDefinition(
                        quota_id=f"q{p}{m}",
                        tenant_id=t,
                        metric=METRICS[n % len(METRICS)],  # type: ignore[arg-type]
                        period=period,  # type: ignore[arg-type]
                        limit=[500, 2_000, 10_000, 40_000, 200_000][n % 5],
                        model=model,
                        timezone=tz,
                    )
                )
    return defs


DEFS = _definitions()
TOUCHES = [
    Touch("acme/research/agent-7", "m-large", NOW, "e1"),
    Touch("acme/research", "m-small", NOW - timedelta(minutes=5), "e2"),
    Touch("acme", "m-large", NOW - timedelta(hours=2), "e3"),
    Touch("acme2", "m-small", NOW, "e4"),
    # After midnight in Los Angeles: a second period of the same LA day quotas.
    Touch("acme/research/agent-7", "m-large", NOW + timedelta(minutes=45), "e5"),
]


def _engine(reader: RowsReader, *, cost: bool = False) -> QuotaEngine:
    engine = QuotaEngine(reader, alerts_topic="a", state_topic="s", pricebook=PRICEBOOK)
    for d in DEFS + (COST_QUOTAS if cost else []):
        engine.apply_definition(quota_state_key(d.tenant_id, d.quota_id), d)
    return engine


PRICEBOOK = parse_pricebook(
    {
        "currency": "USD",
        "versions": [
            {
                "effective_from": "2026-01-01",
                "models": {"m-large": {"input": "3.00", "output": "15.00"}},  # m-small unpriced
            }
        ],
    }
)
COST_QUOTAS = [
    QuotaDefinition(quota_id="spend", tenant_id=t, metric="cost", period=p, limit=Decimal(lim),
                    currency="USD", model=m, timezone=tz, thresholds_pct=(1, 50, 100))
    for t, p, lim, m, tz in [("acme", "day", "0.05", None, "UTC"),
                             ("acme/research", "month", "1.00", "m-large", "Asia/Kolkata")]
]  # fmt: skip


def _assert_ordered(outs: list[Outgoing]) -> None:
    topics = [o.topic for o in outs]
    assert topics == sorted(topics)  # every alert ("a") before every state ("s")
    keys = [o.key for o in outs if o.topic == "s"]
    assert keys == sorted(keys)


async def test_a_check_reads_all_touched_quotas_in_one_call() -> None:
    reader = RowsReader()
    engine = _engine(reader)
    engine._recheck.clear()  # only what the touches owe
    await engine.check(TOUCHES, NOW)
    assert reader.calls == {"usage_many": 1}
    # Every tenant level and model of every touch, each period it falls in.
    assert len(reader.requests) > 40
    assert len(set(reader.requests)) == len(reader.requests)


async def test_batched_equals_the_per_quota_path() -> None:
    batched, per_quota = RowsReader(), PerQuotaReader()
    a, b = _engine(batched), _engine(per_quota)
    topics: Counter[str] = Counter()
    for touches, now in [
        ((), NOW),  # definitions changed: re-evaluate all of them
        (TOUCHES, NOW),
        (TOUCHES[:2], NOW + timedelta(minutes=1)),
    ]:
        outs = await a.check(touches, now)
        assert outs == await b.check(touches, now)
        _assert_ordered(outs)
        topics.update(o.topic for o in outs)
    later = NOW + timedelta(hours=2)
    rolled = await a.roll_periods(later)
    assert rolled == await b.roll_periods(later)
    assert rolled
    assert topics["a"] > 10
    assert topics["s"] > len(DEFS)
    assert a.states == b.states
    assert batched.calls == {"usage_many": 4}  # one per check or roll
    assert per_quota.calls["usage"] == len(batched.requests) > 50

    # And each state's `used` is the quota's own single-quota reading.
    for key, state in a.states.items():
        d = a.definitions[key]
        start, end = period_bounds(d.period, state.period_start, d.timezone)
        usage = await per_quota.usage(d.tenant_id, d.model, start, end)
        assert state.used == usage.metric(d.metric), key


async def test_a_prefix_is_not_a_parent() -> None:
    engine = _engine(RowsReader())
    outs = await engine.check(TOUCHES, NOW)
    states = {(s.tenant_id, s.quota_id): s for s in
              (decode_quota_state(o.value) for o in outs if o.topic == "s")}  # fmt: skip
    start, end = period_bounds("day", NOW)
    (d,) = [d for d in DEFS if (d.tenant_id, d.period, d.timezone, d.model) ==
            ("acme", "day", "UTC", None)]  # fmt: skip
    family = [r for r in ROWS if r.tenant_id != "acme2" and start <= r.at < end]
    assert len(family) < len([r for r in ROWS if start <= r.at < end])
    expected = Usage(sum(r.input_tokens for r in family), sum(r.output_tokens for r in family))
    assert states[("acme", d.quota_id)].used == expected.metric(d.metric)


async def test_cost_and_token_quotas_are_read_in_one_call_each() -> None:
    batched, per_quota = RowsReader(), PerQuotaReader()
    a, b = _engine(batched, cost=True), _engine(per_quota, cost=True)
    outs = await a.check(TOUCHES, NOW)
    assert outs == await b.check(TOUCHES, NOW)
    assert batched.calls == {"usage_many": 1, "usage_by_model_many": 1}
    assert per_quota.calls["usage_by_model"] == 2  # acme's day, acme/research's month
    spend = [decode_quota_state(o.value) for o in outs if o.key.endswith(b"spend")]
    assert {s.status for s in spend} >= {"priced_partial"}  # m-small has no price


async def test_a_failed_read_propagates_unchanged_and_moves_no_state() -> None:
    reader = RowsReader()
    engine = _engine(reader)
    await engine.check((), NOW)
    before, sent = dict(engine.states), engine.alerts_sent
    reader.fail = ServiceUnavailable("clickhouse went away")
    with pytest.raises(ServiceUnavailable) as caught:
        await engine.check(TOUCHES, NOW)
    assert caught.value is reader.fail
    assert (engine.states, engine.alerts_sent) == (before, sent)

    # The retried check owes exactly what a check that never failed owes.
    reader.fail = None
    twin = _engine(RowsReader())
    await twin.check((), NOW)
    assert await engine.check(TOUCHES, NOW) == await twin.check(TOUCHES, NOW)


async def test_states_the_feed_changes_during_the_read_are_respected() -> None:
    class Feeding(RowsReader):
        async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
            engine.apply_state(key, None)  # a tombstone arrives while the query runs
            return await super().usage_many(requests)

    reader = Feeding()
    engine = QuotaEngine(reader, alerts_topic="a", state_topic="s")
    d = DEFS[2]
    key = quota_state_key(d.tenant_id, d.quota_id)
    engine.apply_definition(key, d)
    await engine.check((), NOW)
    yesterday = Touch(d.tenant_id, "m-large", NOW - timedelta(days=1), "late")
    outs = await engine.check([yesterday, TOUCHES[2]], NOW)
    # The late event's period was closed when the check read: still no state for it.
    assert [decode_quota_state(o.value).period_start for o in outs] == [
        period_bounds("day", NOW)[0]
    ]
    assert len(reader.requests) == 2  # the warm-up's one and today's; yesterday was never read
