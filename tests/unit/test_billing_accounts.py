"""Billing accounts (depth, explicit mapping, longest prefix) and the exact cent split."""

from __future__ import annotations

import random
import tomllib
from decimal import Decimal

import pytest

from tokenpulse.errors import ConfigError
from tokenpulse.sinks.billing import AccountMap, PriceBookError, allocate_cents, parse_pricebook

HEAD = 'currency = "USD"\n'
VERSION = (
    '[[versions]]\nid = "v1"\neffective_from = 2026-01-01\n'
    '[versions.models.m]\ninput = "1.00"\noutput = "1.00"\n'
)


def test_level_keeps_that_many_path_components() -> None:
    tenant = "globex/research/agent-2"
    assert AccountMap(0).account_for(tenant) == tenant
    assert AccountMap(1).account_for(tenant) == "globex"
    assert AccountMap(2).account_for(tenant) == "globex/research"
    assert AccountMap(5).account_for(tenant) == tenant
    # A tenant shallower than the level is its own account.
    assert AccountMap(2).account_for("initech") == "initech"


def test_explicit_mapping_wins_and_the_longest_prefix_wins() -> None:
    accounts = AccountMap(
        1,
        {
            "acme/research": "acme-research",
            "acme/research/lab-9": "lab-9-grant",
            "acme": "acme-corp",
        },
    )
    assert accounts.account_for("acme/research/agent-7") == "acme-research"
    assert accounts.account_for("acme/research") == "acme-research"
    assert accounts.account_for("acme/research/lab-9/agent-1") == "lab-9-grant"
    assert accounts.account_for("acme/ops/agent-1") == "acme-corp"
    # Prefixes match whole path components, never part of a name.
    assert accounts.account_for("acme/researchers/x") == "acme-corp"
    assert accounts.account_for("acmeco/x") == "acmeco"
    assert accounts.account_for("globex/research/agent-2") == "globex"


def test_the_price_book_reads_account_level_and_accounts() -> None:
    book = parse_pricebook(
        tomllib.loads(
            HEAD + 'account_level = 1\n[accounts]\n"acme/research" = "acme-research"\n' + VERSION
        )
    )
    assert book.accounts == AccountMap(1, {"acme/research": "acme-research"})
    assert book.accounts.account_for("acme/research/a") == "acme-research"
    assert book.with_account_level(0).accounts.account_for("acme/ops/a") == "acme/ops/a"
    # Absent means 0: each leaf tenant is billed on its own, as before accounts.
    assert parse_pricebook(tomllib.loads(HEAD + VERSION)).accounts == AccountMap(0, {})


@pytest.mark.parametrize(
    ("head", "match"),
    [
        ("account_level = -1\n", "account_level -1 must be an integer >= 0"),
        ("account_level = 1.5\n", "account_level 1.5 must be an integer"),
        ('account_level = "1"\n', "must be an integer"),
        ('[accounts]\n"acme/" = "a"\n', "no leading or trailing"),
        ('[accounts]\n"acme" = ""\n', "non-empty id"),
    ],
)
def test_bad_account_settings_are_refused(head: str, match: str) -> None:
    with pytest.raises(PriceBookError, match=match):
        parse_pricebook(tomllib.loads(HEAD + head + VERSION))


def test_a_minimum_for_an_account_no_tenant_is_billed_to_is_refused() -> None:
    minimum = '[versions.tenant_minimums]\n"globex/research" = "10.00"\n'
    text = HEAD + "account_level = 1\n" + VERSION + minimum
    with pytest.raises(PriceBookError, match=r"name its account \('globex'\)"):
        parse_pricebook(tomllib.loads(text))
    # Fine when that department is an explicit account, or at a deeper level.
    mapped = HEAD + 'account_level = 1\n[accounts]\n"globex/research" = "globex/research"\n'
    parse_pricebook(tomllib.loads(mapped + VERSION + minimum))
    deep = parse_pricebook(tomllib.loads(HEAD + "account_level = 2\n" + VERSION + minimum))
    with pytest.raises(PriceBookError, match="account_level = 1"):
        deep.with_account_level(1)
    with pytest.raises(ConfigError, match="integer >= 0"):
        deep.with_account_level(-2)


def test_allocation_is_proportional_and_sums_exactly() -> None:
    assert allocate_cents(Decimal("10.00"), [1, 1, 1]) == [
        Decimal("3.34"),
        Decimal("3.33"),
        Decimal("3.33"),
    ]
    # 7.01 over 2:1 -> exact 4.6733.. and 2.3366..: floors 4.67 + 2.33, the
    # leftover cent goes to the larger remainder (the second).
    assert allocate_cents(Decimal("7.01"), [2, 1]) == [Decimal("4.67"), Decimal("2.34")]
    assert allocate_cents(Decimal("0.00"), [5, 7]) == [Decimal("0.00"), Decimal("0.00")]
    assert allocate_cents(Decimal("0.05"), [0, 3, 0]) == [
        Decimal("0.00"),
        Decimal("0.05"),
        Decimal("0.00"),
    ]
    # Credits (a volume tier lowering a late adjustment) split symmetrically.
    assert allocate_cents(Decimal("-7.01"), [2, 1]) == [Decimal("-4.67"), Decimal("-2.34")]
    assert allocate_cents(Decimal("0.02"), [0, 0]) == [Decimal("0.01"), Decimal("0.01")]


def test_allocation_ties_go_to_the_earlier_part_every_time() -> None:
    # Three equal remainders, two leftover cents: the first two parts get them.
    assert allocate_cents(Decimal("0.05"), [1, 1, 1]) == [
        Decimal("0.02"),
        Decimal("0.02"),
        Decimal("0.01"),
    ]


def test_allocation_sums_exactly_and_is_deterministic_on_random_inputs() -> None:
    rng = random.Random(7)
    for _ in range(2_000):
        n = rng.randint(1, 12)
        weights = [rng.choice([0, 1, rng.randint(1, 10**12)]) for _ in range(n)]
        amount = Decimal(rng.randint(-(10**9), 10**9)).scaleb(-2)
        parts = allocate_cents(amount, weights)
        assert sum(parts) == amount
        assert parts == allocate_cents(amount, weights)
        total_w = sum(weights) or n
        for p, w in zip(parts, weights if any(weights) else [1] * n, strict=True):
            exact = amount * w / total_w
            assert abs(p - exact) < Decimal("0.01")  # never more than a cent off its share
            assert p == p.quantize(Decimal("0.01"))


def test_allocation_refuses_fractions_of_a_cent_and_nothing_to_split() -> None:
    with pytest.raises(ValueError, match="whole number of cents"):
        allocate_cents(Decimal("0.001"), [1])
    with pytest.raises(ValueError, match="nothing to allocate"):
        allocate_cents(Decimal("1.00"), [])
