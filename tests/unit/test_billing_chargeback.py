"""Chargeback roll-up over the tenant hierarchy, by hand."""

from __future__ import annotations

import tomllib
from datetime import date
from decimal import Decimal

import pytest

from tokenpulse.sinks.billing import PricingError, parse_pricebook
from tokenpulse.sinks.billing.chargeback import ALL, ancestors, compute_chargeback

NOV, OCT = date(2026, 11, 1), date(2026, 10, 1)
BOOK = parse_pricebook(
    tomllib.loads(
        'currency = "USD"\n[[versions]]\nid = "v"\neffective_from = 2026-01-01\n'
        '[versions.models.big]\ninput = "150.00"\noutput = "100.00"\n'
    )
)


def _tokens(inp: int = 0, out: int = 0) -> dict[str, int]:
    return {"input": inp, "cached_input": 0, "output": out, "reasoning": 0}


def test_ancestors() -> None:
    assert ancestors("acme/research/agent-7") == ["acme", "acme/research", "acme/research/agent-7"]
    assert ancestors("solo") == ["solo"]


def test_costs_roll_up_every_level_with_growth() -> None:
    rows = [
        ("acme/research/agent-7", "big", "eu", NOV, _tokens(inp=1_000_000)),  # 150
        ("acme/research/agent-7", "big", "us", NOV, _tokens(out=1_000_000)),  # 100
        ("acme/ops", "big", "eu", NOV, _tokens(inp=2_000_000)),  # 300
        ("acme/ops", "big", "eu", OCT, _tokens(inp=1_000_000)),  # 150 last month
        ("globex", "big", "eu", OCT, _tokens(inp=1)),
    ]
    out = {(r.node, r.model, r.region): r for r in compute_chargeback(rows, BOOK, NOV)}
    acme = out[("acme", ALL, ALL)]
    assert (acme.tokens, acme.cost) == (4_000_000, Decimal(550))
    assert (acme.prev_tokens, acme.prev_cost) == (1_000_000, Decimal(150))
    assert acme.tokens_growth_pct == Decimal("300.0")
    assert acme.to_dict()["cost"] == "550.00"
    assert out[("acme/research", ALL, ALL)].cost == Decimal(250)
    assert out[("acme/research/agent-7", ALL, "us")].cost == Decimal(100)
    assert out[("acme", ALL, "eu")].cost == Decimal(450)
    assert out[("acme", "big", ALL)].tokens == 4_000_000
    assert out[("acme/research", ALL, ALL)].cost_growth_pct is None  # nothing last month
    assert out[("globex", ALL, ALL)].tokens == 0
    assert out[("globex", ALL, ALL)].prev_tokens == 1
    assert out[("acme", ALL, ALL)].depth == 1
    assert out[("acme/research/agent-7", ALL, ALL)].depth == 3


def test_unpriced_models_are_reported() -> None:
    with pytest.raises(PricingError, match="mystery"):
        compute_chargeback([("a", "mystery", "eu", NOV, _tokens(inp=5))], BOOK, NOV)


def test_costs_use_the_account_tiers_and_the_prefix_keeps_a_subtree() -> None:
    book = parse_pricebook(
        tomllib.loads(
            'currency = "USD"\naccount_level = 1\n[[versions]]\nid = "v"\n'
            'effective_from = 2026-01-01\n[versions.models.big]\noutput = "1.00"\n'
            '[versions.models.big.input]\nmode = "graduated"\n'
            'tiers = [{ up_to = 1_000_000, price = "10.00" }, { price = "5.00" }]\n'
        )
    )
    rows = [
        ("acme/research/a", "big", "eu", NOV, _tokens(inp=600_000)),
        ("acme/ops/b", "big", "us", NOV, _tokens(inp=1_400_000)),
    ]
    # acme's 2M: 1M x 10 + 1M x 5 = 15.00, shared 30% / 70% by tokens (at level 0
    # they would cost 6.00 and 12.00, 18.00 in all).
    out = {(r.node, r.model, r.region): r for r in compute_chargeback(rows, book, NOV)}
    assert out[("acme", ALL, ALL)].cost == Decimal(15)
    assert out[("acme/research/a", ALL, ALL)].cost == Decimal("4.5")
    assert out[("acme/ops", ALL, "us")].cost == Decimal("10.5")
    subtree = compute_chargeback(rows, book, NOV, tenant_prefix="acme/research")
    assert {r.node for r in subtree} == {"acme/research", "acme/research/a"}
    assert {r.cost for r in subtree} == {Decimal("4.5")}
    flat = compute_chargeback(rows, book.with_account_level(0), NOV)
    assert next(r.cost for r in flat if r.node == "acme" and r.model == r.region == ALL) == 18
