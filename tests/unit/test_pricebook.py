"""Price book parsing, validation and tier arithmetic."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.sinks.billing import PriceBookError, load_pricebook, parse_pricebook
from tokenpulse.sinks.billing.pricebook import Rate, Tier

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pricebook.toml"


def _book(models: str, head: str = 'currency = "USD"') -> dict[str, Any]:
    return tomllib.loads(f'{head}\n[[versions]]\nid = "v1"\neffective_from = 2026-01-01\n{models}')


def test_the_example_price_book_parses() -> None:
    book = load_pricebook(EXAMPLE)
    assert [v.id for v in book.versions] == ["2026-01", "2026-12"]
    from datetime import date

    assert book.version_for(date(2026, 11, 1)).id == "2026-01"
    assert book.version_for(date(2027, 3, 1)).id == "2026-12"


def test_seed_example_50m_tokens_a_day_at_150_per_million_is_7500_dollars() -> None:
    rate = Rate("graduated", (Tier(None, Decimal("150")),))
    assert rate.cost(50_000_000) == Decimal("7500")
    assert rate.cost(30 * 50_000_000) == Decimal("225000")


def test_graduated_tiers_price_each_band_at_its_own_rate() -> None:
    rate = Rate(
        "graduated",
        (Tier(100, Decimal("10")), Tier(1000, Decimal("5")), Tier(None, Decimal("1"))),
    )
    # 100 x 10 + 900 x 5 + 500 x 1 = 6000 (per million)
    assert rate.cost(1500) == Decimal(6000) / 1_000_000
    assert rate.cost(100) == Decimal(1000) / 1_000_000
    assert rate.cost(0) == 0
    assert [n for n, _, _ in rate.breakdown(1500)] == [100, 900, 500]


def test_volume_tiers_price_all_tokens_at_the_reached_tier() -> None:
    rate = Rate("volume", (Tier(1000, Decimal("10")), Tier(None, Decimal("4"))))
    assert rate.cost(1000) == Decimal(10_000) / 1_000_000  # boundary is inclusive
    assert rate.cost(1001) == Decimal(4004) / 1_000_000


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            '[versions.models.m]\ninput = "1"\noutput = "-1"',
            r"model 'm' output: price -1 must be a finite number >= 0",
        ),
        (
            '[versions.models.m]\ninput = "1"\noutput = "1"\nthinking = "1"',
            r"model 'm': unknown token type \['thinking'\]",
        ),
        ('[versions.models.m]\ninput = "1"\noutput = 2.5', r"must be a decimal string"),
        ('[versions.models.m]\ninput = "1"', r"missing the 'output' price"),
        (
            '[versions.models.m]\noutput = "1"\n[versions.models.m.input]\n'
            'tiers = [{ up_to = 100, price = "2" }, { up_to = 50, price = "1" }, { price = "0" }]',
            r"model 'm' input tier 2: up_to 50 must be an integer above the previous tier's 100",
        ),
        (
            '[versions.models.m]\noutput = "1"\n[versions.models.m.input]\n'
            'tiers = [{ price = "2" }, { up_to = 50, price = "1" }]',
            r"model 'm' input tier 1: only the last tier may omit up_to",
        ),
        (
            '[versions.models.m]\noutput = "1"\n[versions.models.m.input]\n'
            'tiers = [{ up_to = 5, price = "2" }]',
            r"tier 1: the last tier must omit up_to",
        ),
        (
            '[versions.models.m]\noutput = "1"\n[versions.models.m.input]\n'
            'mode = "stairs"\ntiers = [{ price = "2" }]',
            r"mode 'stairs' is not one of graduated, volume",
        ),
    ],
)
def test_invalid_price_books_are_rejected_naming_model_and_tier(models: str, message: str) -> None:
    with pytest.raises(PriceBookError, match=message):
        parse_pricebook(_book(models))


def test_missing_currency_is_an_error() -> None:
    with pytest.raises(PriceBookError, match="currency is missing"):
        parse_pricebook(_book('[versions.models.m]\ninput = "1"\noutput = "1"', head=""))


def test_effective_dates_must_be_month_starts_and_unique() -> None:
    raw = _book('[versions.models.m]\ninput = "1"\noutput = "1"')
    raw["versions"][0]["effective_from"] = "2026-01-15"
    with pytest.raises(PriceBookError, match="first day of a month"):
        parse_pricebook(raw)
    raw["versions"][0]["effective_from"] = "2026-01-01"
    raw["versions"].append(dict(raw["versions"][0], id="v2"))
    with pytest.raises(PriceBookError, match="v1 and v2 both start"):
        parse_pricebook(raw)


def test_month_before_the_first_version_is_an_error() -> None:
    from datetime import date

    book = parse_pricebook(_book('[versions.models.m]\ninput = "1"\noutput = "1"'))
    with pytest.raises(PriceBookError, match="no version effective for 2025-12"):
        book.version_for(date(2025, 12, 1))


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match="--pricebook"):
        load_pricebook(tmp_path / "nope.toml")


def test_the_example_price_book_bills_orgs() -> None:
    accounts = load_pricebook(EXAMPLE).accounts
    assert accounts.level == 1
    assert accounts.account_for("globex/research/agent-2") == "globex"
