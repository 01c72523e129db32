"""Invoice computation from usage rows: token types, tiers, late adjustments, minimums."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from tokenpulse.sinks.billing import (
    Invoice,
    PricingError,
    UsageRow,
    compute_invoices,
    parse_pricebook,
)
from tokenpulse.sinks.billing.invoice import add_months, month_closes_at, parse_month

NOV = date(2026, 11, 1)
OCT = date(2026, 10, 1)
LATER = datetime(2027, 1, 1, tzinfo=UTC)

BOOK = parse_pricebook(
    tomllib.loads(
        """
currency = "USD"
[[versions]]
id = "v1"
effective_from = 2026-01-01
[versions.tenant_minimums]
"small" = "100.00"
[versions.models.big]
input = "150.00"
cached_input = "15.00"
output = "150.00"
[versions.models.tiered]
output = "1.00"
[versions.models.tiered.input]
mode = "graduated"
tiers = [{ up_to = 1_000_000, price = "10.00" }, { price = "5.00" }]
"""
    )
)


def _row(
    tenant: str,
    model: str,
    usage: date,
    bill: date,
    inp: int = 0,
    cached: int = 0,
    out: int = 0,
    reasoning: int = 0,
) -> UsageRow:
    return UsageRow(
        tenant,
        model,
        usage,
        bill,
        {"input": inp, "cached_input": cached, "output": out, "reasoning": reasoning},
    )


def _only(tenant: str, rows: list[UsageRow], now: datetime = LATER) -> Invoice:
    (inv,) = compute_invoices(rows, BOOK, NOV, tenant_id=tenant, now=now)
    return inv


def test_researcher_at_50m_tokens_a_day_pays_7500_a_day() -> None:
    inv = _only("lab", [_row("lab", "big", NOV, NOV, inp=50_000_000)])
    assert inv.total == Decimal("7500.00")
    assert [(ln.token_type, ln.quantity, ln.amount) for ln in inv.lines] == [
        ("input", 50_000_000, Decimal("7500.00"))
    ]


def test_cached_tokens_are_billed_only_at_the_cached_rate() -> None:
    # 1M input of which 400k cached (rows carry uncached input already).
    rows = [_row("t", "big", NOV, NOV, inp=600_000, cached=400_000)]
    inv = _only("t", rows)
    amounts = {ln.token_type: ln.amount for ln in inv.lines}
    assert amounts == {"input": Decimal("90.00"), "cached_input": Decimal("6.00")}


def test_reasoning_without_its_own_price_is_billed_as_output_once() -> None:
    rows = [_row("t", "big", NOV, NOV, out=700_000, reasoning=300_000)]
    inv = _only("t", rows)
    assert [(ln.token_type, ln.quantity, ln.amount) for ln in inv.lines] == [
        ("output", 1_000_000, Decimal("150.00"))
    ]


def test_graduated_tiers_across_rows_and_lines_sum_to_total() -> None:
    rows = [
        _row("t", "tiered", NOV, NOV, inp=800_000, out=3),
        _row("t", "tiered", NOV, NOV, inp=700_000),
    ]
    inv = _only("t", rows)
    # 1M x 10 + 0.5M x 5 = 12.50 ; output 3 tokens x 1/M rounds to 0.00
    amounts = {ln.token_type: ln.amount for ln in inv.lines}
    assert amounts == {"input": Decimal("12.50"), "output": Decimal("0.00")}
    assert inv.total == sum(amounts.values())


def test_late_events_become_adjustment_lines_priced_at_the_marginal_tier() -> None:
    rows = [
        _row("t", "tiered", OCT, OCT, inp=900_000),  # billed on October's invoice
        _row("t", "tiered", OCT, NOV, inp=200_000),  # arrived after October closed
        _row("t", "tiered", NOV, NOV, inp=100_000),
    ]
    inv = _only("t", rows)
    lines = {(ln.kind, ln.usage_month): ln for ln in inv.lines}
    adj = lines[("adjustment", OCT)]
    # October total 1.1M: 10.00 + 0.50 = 10.50; already billed 9.00 -> 1.50
    assert adj.quantity == 200_000
    assert adj.amount == Decimal("1.50")
    assert lines[("usage", NOV)].amount == Decimal("1.00")
    assert inv.total == Decimal("2.50")


def test_minimum_fee_adds_the_gap_and_applies_to_listed_tenants_without_usage() -> None:
    rows = [_row("other", "big", NOV, NOV, inp=10_000)]
    invoices = {inv.tenant_id: inv for inv in compute_invoices(rows, BOOK, NOV, now=LATER)}
    assert invoices["other"].total == Decimal("1.50")
    small = invoices["small"]
    assert [(ln.kind, ln.amount) for ln in small.lines] == [("minimum", Decimal("100.00"))]


def test_unpriced_models_are_an_error_listing_them_never_billed_at_zero() -> None:
    rows = [
        _row("a", "mystery", NOV, NOV, inp=1),
        _row("b", "mystery", NOV, NOV, out=1),
        _row("a", "ghost", NOV, NOV, inp=1),
        _row("a", "big", NOV, NOV, inp=1),
    ]
    with pytest.raises(PricingError, match=r"ghost \(tenants: a\); mystery \(tenants: a, b\)"):
        compute_invoices(rows, BOOK, NOV, now=LATER)


def test_invoice_is_provisional_until_month_end_plus_grace() -> None:
    rows = [_row("t", "big", NOV, NOV, inp=1)]
    closes = month_closes_at(NOV, 3)
    assert closes == datetime(2026, 12, 4, tzinfo=UTC)
    inv = _only("t", rows, now=datetime(2026, 12, 2, tzinfo=UTC))
    assert inv.provisional
    inv = _only("t", rows, now=closes)
    assert not inv.provisional


def test_month_helpers() -> None:
    assert parse_month("2026-11") == NOV
    assert add_months(NOV, 2) == date(2027, 1, 1)
    assert add_months(NOV, -11) == date(2025, 12, 1)
    from tokenpulse.errors import TokenpulseError

    with pytest.raises(TokenpulseError, match="YYYY-MM"):
        parse_month("11/2026")
