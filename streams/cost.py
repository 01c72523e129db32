"""The cost of a quota period's usage, priced with the billing price book, in Decimal.

Tiers in the price book are over a tenant's monthly tokens of one model and
token type, so a period inside a month is priced at the margin: cost(month
to date up to the period's end) - cost(month to date before the period),
per (tenant, model, priced token type). The sum of a month's periods is
therefore exactly the month's invoice amount (before minimums and rounding).
The billing month is the UTC month of the period start (as invoices use
UTC months). A model missing from the price book is never priced at 0: it
is reported, and the quota state says unknown/priced_partial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from tokenpulse.sinks.billing import TOKEN_TYPES, PriceBook
from tokenpulse.sinks.billing.invoice import priced_quantities


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Tokens by type (input, cached_input, output, reasoning) of one tenant and model."""

    tenant_id: str
    model: str
    before: Mapping[str, int]  # from the billing month's start to the period start
    within: Mapping[str, int]  # inside the period


@dataclass(frozen=True, slots=True)
class PeriodCost:
    amount: Decimal  # exact, unrounded; only the priced part
    unpriced_models: tuple[str, ...]  # sorted; non-empty means `amount` is a lower bound
    priced_any: bool
    reason: str | None = None  # set when nothing could be priced for a reason of its own


def billing_month(start: datetime) -> date:
    utc = start.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def period_cost(
    pricebook: PriceBook, currency: str, month: date, rows: Iterable[ModelUsage]
) -> PeriodCost:
    version = pricebook.version_for(month)
    if version.currency != currency:
        return PeriodCost(
            Decimal(0),
            (),
            False,
            f"price book {pricebook.source} is in {version.currency}, the quota in {currency}",
        )
    total = Decimal(0)
    unpriced: set[str] = set()
    priced_any = False
    for row in rows:
        if not any(row.within.values()):
            continue
        before = priced_quantities(version, row.model, dict(row.before))
        upto = priced_quantities(
            version,
            row.model,
            {t: row.before.get(t, 0) + row.within.get(t, 0) for t in TOKEN_TYPES},
        )
        if before is None or upto is None:
            unpriced.add(row.model)
            continue
        priced_any = True
        for token_type, quantity in upto.items():
            found = version.rate(row.model, token_type)
            assert found is not None  # priced_quantities returned only priced types
            rate = found[1]
            total += rate.cost(quantity) - rate.cost(before.get(token_type, 0))
    return PeriodCost(total, tuple(sorted(unpriced)), priced_any)
