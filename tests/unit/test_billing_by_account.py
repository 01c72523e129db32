"""Invoices per billing account: account-wide tiers and minimums, the exact per-tenant split."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime
from decimal import Decimal

from tokenpulse.sinks.billing import Invoice, UsageRow, compute_invoices, parse_pricebook

NOV, OCT = date(2026, 11, 1), date(2026, 10, 1)
LATER = datetime(2027, 1, 1, tzinfo=UTC)

BOOK = parse_pricebook(
    tomllib.loads(
        """
currency = "USD"
account_level = 1
[accounts]
"acme/research" = "acme-research"
[[versions]]
id = "v1"
effective_from = 2026-01-01
[versions.tenant_minimums]
"globex" = "500.00"
"initech" = "20.00"
[versions.models.tiered]
output = "1.00"
[versions.models.tiered.input]
mode = "graduated"
tiers = [{ up_to = 1_000_000, price = "10.00" }, { price = "5.00" }]
[versions.models.vol]
output = "1.00"
[versions.models.vol.input]
mode = "volume"
tiers = [{ up_to = 1_000_000, price = "3.00" }, { price = "1.00" }]
"""
    )
)


def _row(tenant: str, model: str, inp: int, usage: date = NOV, bill: date = NOV) -> UsageRow:
    return UsageRow(
        tenant, model, usage, bill, {"input": inp, "cached_input": 0, "output": 0, "reasoning": 0}
    )


def _by_account(rows: list[UsageRow], by_tenant: bool = False) -> dict[str, Invoice]:
    invoices = compute_invoices(rows, BOOK, NOV, by_tenant=by_tenant, now=LATER)
    return {i.account_id: i for i in invoices}


ROWS = [
    # 600k + 500k + 1 for globex: no agent reaches the 1M tier, the org does.
    _row("globex/research/agent-1", "tiered", 600_000),
    _row("globex/research/agent-2", "tiered", 500_000),
    _row("globex/ops/agent-9", "tiered", 1),
    _row("acme/research/agent-7", "tiered", 200_000),
    _row("acme/ops/agent-1", "tiered", 300_000),
]


def test_tiers_run_over_the_account_total_not_each_tenant() -> None:
    invoices = _by_account(ROWS)
    assert sorted(invoices) == ["acme", "acme-research", "globex", "initech"]
    globex = invoices["globex"]
    # 1,100,001 tokens: 1M x 10/M + 100,001 x 5/M = 10.00 + 0.500005 -> 10.50
    (line, minimum) = globex.lines
    assert (line.kind, line.quantity, line.amount) == ("usage", 1_100_001, Decimal("10.50"))
    assert line.tenant_id == "globex"
    assert globex.tenants == (
        "globex/ops/agent-9",
        "globex/research/agent-1",
        "globex/research/agent-2",
    )
    # The minimum is per account: 500 - 10.50, not 500 next to agents' invoices.
    assert (minimum.kind, minimum.amount) == ("minimum", Decimal("489.50"))
    assert globex.total == Decimal("500.00")
    # The explicit mapping takes acme/research away from acme.
    assert invoices["acme-research"].total == Decimal("2.00")
    assert invoices["acme"].total == Decimal("3.00")
    # A listed account without usage still gets its minimum.
    assert [(ln.kind, ln.amount) for ln in invoices["initech"].lines] == [
        ("minimum", Decimal("20.00"))
    ]


def test_level_zero_is_one_invoice_per_leaf_tenant_as_before() -> None:
    book0 = BOOK.with_account_level(0)
    rows = [r for r in ROWS if not r.tenant_id.startswith("acme/research")]
    invoices = {i.account_id: i for i in compute_invoices(rows, book0, NOV, now=LATER)}
    assert invoices["globex/research/agent-1"].total == Decimal("6.00")
    assert invoices["globex"].lines[0].kind == "minimum"  # no usage of its own
    assert invoices["globex"].total == Decimal("500.00")


def test_by_tenant_lines_add_up_exactly_to_the_account_lines() -> None:
    plain = _by_account(ROWS)["globex"]
    split = _by_account(ROWS, by_tenant=True)["globex"]
    assert split.by_tenant
    assert split.total == plain.total
    usage = [ln for ln in split.lines if ln.kind == "usage"]
    assert [(ln.tenant_id, ln.quantity, ln.amount) for ln in usage] == [
        # 10.50 x 1/1,100,001 = 0.0000095.. -> 0.00 ; 600k share 5.7272.. ; 500k 4.7727..
        # floors 0 + 572 + 477 = 1049 cents; the last cent goes to the largest
        # remainder (agent-1's .727 beats agent-2's .273 and agent-9's .001).
        ("globex/ops/agent-9", 1, Decimal("0.00")),
        ("globex/research/agent-1", 600_000, Decimal("5.73")),
        ("globex/research/agent-2", 500_000, Decimal("4.77")),
    ]
    assert sum(ln.amount for ln in usage) == plain.lines[0].amount
    # The minimum stays an account charge.
    assert [ln.tenant_id for ln in split.lines if ln.kind == "minimum"] == ["globex"]
    # Same input, same split.
    assert _by_account(ROWS, by_tenant=True)["globex"] == split


def test_late_adjustments_are_per_account_and_split_too() -> None:
    rows = [
        # October: 900k billed in October across two agents of globex
        _row("globex/a", "tiered", 500_000, OCT, OCT),
        _row("globex/b", "tiered", 400_000, OCT, OCT),
        # 300k more of October arrive in November: 100k at 10/M + 200k at 5/M = 2.00
        _row("globex/a", "tiered", 100_000, OCT, NOV),
        _row("globex/c", "tiered", 200_000, OCT, NOV),
    ]
    inv = _by_account(rows, by_tenant=True)["globex"]
    adj = [ln for ln in inv.lines if ln.kind == "adjustment"]
    assert [(ln.tenant_id, ln.quantity, ln.amount) for ln in adj] == [
        ("globex/a", 100_000, Decimal("0.67")),
        ("globex/c", 200_000, Decimal("1.33")),
    ]
    assert all(ln.usage_month == OCT for ln in adj)


def test_a_volume_credit_is_split_as_a_credit() -> None:
    rows = [
        _row("globex/a", "vol", 900_000, OCT, OCT),  # October billed 900k x 3 = 2.70
        _row("globex/a", "vol", 100_000, OCT, NOV),  # 1.0M still at 3/M: +0.30
        _row("globex/b", "vol", 50_001, OCT, NOV),  # 1,050,001 all at 1/M: 1.05 in all
    ]
    inv = _by_account(rows, by_tenant=True)["globex"]
    adj = [ln for ln in inv.lines if ln.kind == "adjustment"]
    # 1.05 - 2.70 = -1.65 over 100,000 : 50,001
    assert sum(ln.amount for ln in adj) == Decimal("-1.65")
    assert [ln.amount for ln in adj] == [Decimal("-1.10"), Decimal("-0.55")]


def test_one_account_by_id_or_by_one_of_its_tenants() -> None:
    (inv,) = compute_invoices(ROWS, BOOK, NOV, account_id="globex", now=LATER)
    assert inv.account_id == "globex"
    assert inv.total == Decimal("500.00")
    (same,) = compute_invoices(ROWS, BOOK, NOV, tenant_id="globex/ops/agent-9", now=LATER)
    assert same == inv
    (research,) = compute_invoices(ROWS, BOOK, NOV, tenant_id="acme/research/x", now=LATER)
    assert research.account_id == "acme-research"
