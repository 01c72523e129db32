"""Cost quotas: the period's usage priced with the billing price book, exactly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenpulse.schemas import (
    QuotaAlert,
    QuotaDefinition,
    QuotaState,
    UsageEvent,
    decode_quota_alert,
    decode_quota_state,
)
from tokenpulse.schemas.quota import quota_state_key
from tokenpulse.sinks.billing import PriceBook, parse_pricebook
from tokenpulse.streams.cost import ModelUsage, billing_month, period_cost
from tokenpulse.streams.quota_logic import Usage
from tokenpulse.streams.quotas import QuotaEngine, Touch
from tokenpulse.streams.usage_query import ModelUsageRequest, UsageRequest

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MONTH = billing_month(NOW)

PRICEBOOK: PriceBook = parse_pricebook(
    {
        "currency": "USD",
        "versions": [
            {
                "id": "2026-01",
                "effective_from": "2026-01-01",
                "models": {
                    "m-tiered": {
                        "input": {
                            "mode": "graduated",
                            "tiers": [
                                {"up_to": 1_000_000, "price": "10.00"},
                                {"price": "5.00"},
                            ],
                        },
                        "cached_input": "1.00",
                        "output": "20.00",  # no reasoning price: reasoning bills as output
                    },
                    "m-flat": {"input": "0.50", "output": "1.50"},
                },
            }
        ],
    }
)


def _tok(input: int = 0, cached: int = 0, output: int = 0, reasoning: int = 0) -> dict[str, int]:
    return {"input": input, "cached_input": cached, "output": output, "reasoning": reasoning}


ROWS = [
    # 800k input tokens earlier this month put the tenant 200k below the tier boundary.
    ModelUsage(
        "acme/a",
        "m-tiered",
        before=_tok(input=800_000),
        within=_tok(input=400_000, cached=100_000, output=50_000, reasoning=10_000),
    ),
    ModelUsage("acme/b", "m-flat", before=_tok(), within=_tok(input=2_000_000, output=100_000)),
]
# By hand:
#   m-tiered input, at the margin: (1M x 10 + 200k x 5)/M - 800k x 10/M = 11.00 - 8.00 = 3.00
#   m-tiered cached: 100k x 1/M = 0.10; output + reasoning: 60k x 20/M = 1.20   -> 4.30
#   m-flat: 2M x 0.50/M = 1.00; 100k x 1.50/M = 0.15                           -> 1.15
EXPECTED = Decimal("5.45")


def test_period_cost_by_hand_exact_decimal() -> None:
    cost = period_cost(PRICEBOOK, "USD", MONTH, ROWS)
    assert cost.amount == EXPECTED
    assert isinstance(cost.amount, Decimal)
    assert cost.unpriced_models == ()


def test_unpriced_model_is_reported_never_zero() -> None:
    rows = [*ROWS, ModelUsage("acme/c", "m-new", before=_tok(), within=_tok(input=1))]
    cost = period_cost(PRICEBOOK, "USD", MONTH, rows)
    assert cost.amount == EXPECTED
    assert cost.unpriced_models == ("m-new",)
    assert period_cost(PRICEBOOK, "EUR", MONTH, ROWS).reason is not None


class Reader:
    def __init__(self, rows: list[ModelUsage]) -> None:
        self.rows = rows

    async def usage(
        self, tenant_prefix: str, model: str | None, start: datetime, end: datetime
    ) -> Usage:
        raise AssertionError("cost quotas read usage by model")

    async def usage_by_model(
        self, tenant_prefix: str, model: str | None, since: datetime, start: datetime, end: datetime
    ) -> list[ModelUsage]:
        assert since == datetime(2026, 11, 1, tzinfo=UTC)
        return self.rows

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        raise AssertionError("cost quotas read usage by model")

    async def usage_by_model_many(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        return [
            await self.usage_by_model(r.tenant_prefix, r.model, r.since, r.start, r.end)
            for r in requests
        ]


QUOTA = QuotaDefinition(
    quota_id="spend",
    tenant_id="acme",
    metric="cost",
    period="day",
    limit=Decimal("10.00"),
    currency="USD",
    thresholds_pct=(50, 100),
)
KEY = quota_state_key("acme", "spend")
TOUCH = Touch("acme/a", "m-tiered", NOW, "e1")


async def _check(
    rows: list[ModelUsage], pricebook: PriceBook | None
) -> tuple[list[QuotaAlert], list[QuotaState]]:
    engine = QuotaEngine(Reader(rows), alerts_topic="a", state_topic="s", pricebook=pricebook)
    engine.apply_definition(KEY, QUOTA)
    outs = await engine.check([TOUCH], NOW)
    alerts = [decode_quota_alert(o.value) for o in outs if o.topic == "a"]
    states = [decode_quota_state(o.value) for o in outs if o.topic == "s"]
    return alerts, states


async def test_cost_quota_alerts_at_the_decimal_threshold() -> None:
    alerts, states = await _check(ROWS, PRICEBOOK)
    assert [(a.threshold_pct, a.used, a.limit) for a in alerts] == [
        (50, EXPECTED, Decimal("10.00"))
    ]
    assert (states[-1].status, states[-1].used, states[-1].reason) == ("warning", EXPECTED, None)


async def test_missing_model_makes_the_state_priced_partial_with_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [*ROWS, ModelUsage("acme/c", "m-new", before=_tok(), within=_tok(output=5))]
    with caplog.at_level(logging.ERROR, logger="tokenpulse.streams.quotas"):
        _, states = await _check(rows, PRICEBOOK)
    state = states[-1]
    assert state.status == "priced_partial"
    assert state.used == EXPECTED  # the priced part; the real spend is higher
    assert state.reason is not None
    assert "m-new" in state.reason
    assert any("m-new" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


async def test_only_unpriced_usage_or_no_pricebook_is_unknown() -> None:
    rows = [ModelUsage("acme/c", "m-new", before=_tok(), within=_tok(input=5))]
    _, states = await _check(rows, PRICEBOOK)
    assert states[-1].status == "unknown"
    _, states = await _check(ROWS, None)
    assert states[-1].status == "unknown"
    assert states[-1].reason is not None
    assert "TOKENPULSE_PRICEBOOK" in states[-1].reason


async def test_a_cost_quota_alerts_early_on_its_priced_lower_bound() -> None:
    """Pending tokens are priced with the rows the store returned: the alert precedes the write."""
    engine = QuotaEngine(Reader(ROWS), alerts_topic="a", state_topic="s", pricebook=PRICEBOOK)
    engine.apply_definition(KEY, QUOTA)
    outs = await engine.check([TOUCH], NOW, settle_upto=0)  # 5.45 of 10.00: 50 %, and the base
    assert [decode_quota_alert(o.value).threshold_pct for o in outs if o.topic == "a"] == [50]
    # 10M input tokens of m-flat not yet written: + 5.00 at 0.50 per million.
    big = UsageEvent(
        event_id="e-big",
        tenant_id="acme/b",
        occurred_at=NOW,
        model="m-flat",
        input_tokens=10_000_000,
        output_tokens=0,
    )
    outs = engine.early(1, [big], NOW)
    alerts = [decode_quota_alert(o.value) for o in outs if o.topic == "a"]
    assert [(a.threshold_pct, a.used, a.event_id) for a in alerts] == [
        (100, Decimal("10.45"), "e-big")
    ]
    assert engine.states[KEY].status == "exceeded"
