"""Monthly invoices per billing account: tiers and money in Decimal, an exact tenant split.

Token types billed (cached and reasoning tokens are subsets, per the contract):
  input        = input_tokens - cached_input_tokens   (uncached input)
  cached_input = cached_input_tokens                  (at the cached rate only)
  output       = output_tokens - reasoning_tokens
  reasoning    = reasoning_tokens
A model without a cached_input (reasoning) price bills those tokens as input
(output), so no token is billed twice or at zero.

Who is invoiced: the billing account of each tenant (accounts.py; the leaf
tenant when account_level is 0). Tiers run over the account's monthly tokens
per model and token type, and the minimum fee applies per account. With
`by_tenant`, each account line is split over its tenants in proportion to
their tokens, rounded by largest remainder so the parts add up exactly.

Which invoice an event lands on: its usage month, unless it was ingested
after that month closed (month end + grace); then it goes on the invoice of
the month in which it arrived (minus grace), as an adjustment line for its
usage month. Adjustment amount = cost(all usage of that month billed so far
+ the late tokens) - cost(usage billed so far), both rounded, so the tiers
stay right and every usage month's invoices add up to its true cost.

Rounding: each account line is rounded half-up to cents; an invoice total is
the sum of its lines; a minimum monthly fee adds a `minimum` line for the gap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tokenpulse.errors import TokenpulseError
from tokenpulse.sinks.billing.accounts import allocate_cents
from tokenpulse.sinks.billing.pricebook import (
    TOKEN_TYPES,
    PriceBook,
    PriceBookVersion,
    round_money,
)

DEFAULT_GRACE_DAYS = 3
DEFAULT_LOOKBACK_MONTHS = 12

_Key = tuple[str, str, date]  # (account, model, usage month)


class PricingError(TokenpulseError):
    """Usage exists that the price book cannot price (never billed at zero)."""

    code = "pricing_error"


@dataclass(frozen=True)
class UsageRow:
    tenant_id: str
    model: str
    usage_month: date
    bill_month: date
    tokens: dict[str, int]  # by TOKEN_TYPES


@dataclass(frozen=True)
class InvoiceLine:
    account_id: str
    kind: str  # usage | adjustment | minimum
    model: str
    token_type: str
    usage_month: date
    quantity: int
    amount: Decimal
    detail: str = ""  # tier breakdown, human readable
    # Whose share the line is: the account itself (the default), or one of its
    # tenants on a `by_tenant` invoice.
    tenant_id: str = ""

    def __post_init__(self) -> None:
        if not self.tenant_id:
            object.__setattr__(self, "tenant_id", self.account_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "model": self.model,
            "token_type": self.token_type,
            "usage_month": f"{self.usage_month:%Y-%m}",
            "quantity": self.quantity,
            "amount": str(self.amount),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Invoice:
    account_id: str
    month: date
    currency: str
    pricebook_version: str
    lines: tuple[InvoiceLine, ...]
    provisional: bool = False
    tenants: tuple[str, ...] = ()  # the tenants whose usage is on this invoice
    by_tenant: bool = False  # lines split per tenant (they add up to the account lines)
    total: Decimal = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum((ln.amount for ln in self.lines), Decimal("0.00")))

    @property
    def tenant_id(self) -> str:
        """The invoiced id (kept for callers written before billing accounts)."""
        return self.account_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "month": f"{self.month:%Y-%m}",
            "currency": self.currency,
            "pricebook_version": self.pricebook_version,
            "provisional": self.provisional,
            "by_tenant": self.by_tenant,
            "tenants": list(self.tenants),
            "total": str(self.total),
            "lines": [ln.to_dict() for ln in self.lines],
        }


def parse_month(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise TokenpulseError(f"month {text!r} is not YYYY-MM (e.g. 2026-11)") from None


def add_months(month: date, n: int) -> date:
    idx = month.year * 12 + month.month - 1 + n
    return date(idx // 12, idx % 12 + 1, 1)


def month_closes_at(month: date, grace_days: int = DEFAULT_GRACE_DAYS) -> datetime:
    start_next = add_months(month, 1)
    return datetime(start_next.year, start_next.month, 1, tzinfo=UTC) + timedelta(days=grace_days)


def _as_dt(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _to_date(v: Any) -> date:
    return v.date() if isinstance(v, datetime) else v


def priced_quantities(
    version: PriceBookVersion, model: str, tokens: dict[str, int]
) -> dict[str, int] | None:
    """Quantities by the token type whose price applies; None if the model is unpriced."""
    out: dict[str, int] = defaultdict(int)
    for tt in TOKEN_TYPES:
        found = version.rate(model, tt)
        if found is None:
            return None
        out[found[0]] += tokens.get(tt, 0)
    return dict(out)


def _detail(version: PriceBookVersion, model: str, token_type: str, quantity: int) -> str:
    found = version.rate(model, token_type)
    assert found is not None
    parts = [f"{n} x {price}/M" for n, price, _ in found[1].breakdown(quantity)]
    mode = found[1].mode if len(found[1].tiers) > 1 else "flat"
    return f"{mode}: " + " + ".join(parts) if parts else mode


def compute_invoices(
    rows: Iterable[UsageRow],
    pricebook: PriceBook,
    month: date,
    *,
    account_id: str | None = None,
    tenant_id: str | None = None,
    by_tenant: bool = False,
    now: datetime | None = None,
    grace_days: int = DEFAULT_GRACE_DAYS,
) -> list[Invoice]:
    """The invoices of `month`, one per billing account, from the rows of fetch_usage.

    `account_id` keeps one account's invoice; `tenant_id` keeps the invoice of
    the account that tenant is billed to (the tenant's own at account level 0).
    """
    accounts = pricebook.accounts
    selected = account_id
    if selected is None and tenant_id is not None:
        selected = accounts.account_for(tenant_id)
    # (account, model, usage_month) -> tokens billed before `month`; and on
    # `month`, per tenant (for the split).
    before: dict[_Key, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    now_q: dict[_Key, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    members: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        account = accounts.account_for(r.tenant_id)
        if selected is not None and account != selected:
            continue
        key = (account, r.model, r.usage_month)
        if r.bill_month == month:
            members[account].add(r.tenant_id)
            for tt, n in r.tokens.items():
                now_q[key][r.tenant_id][tt] += n
        else:
            for tt, n in r.tokens.items():
                before[key][tt] += n
    version_m = pricebook.version_for(month)
    missing: dict[str, set[str]] = defaultdict(set)
    lines: dict[str, list[InvoiceLine]] = defaultdict(list)
    for key in sorted(now_q):
        account, model, usage_month = key
        version = pricebook.version_for(usage_month)
        by_t = {
            t: priced_quantities(version, model, tokens) for t, tokens in sorted(now_q[key].items())
        }
        q_before = priced_quantities(version, model, before.get(key, {}))
        if q_before is None or any(q is None for q in by_t.values()):
            missing[model].update(by_t)
            continue
        shares = {t: q for t, q in by_t.items() if q is not None}
        if version.currency != version_m.currency:
            raise PricingError(
                f"usage of {usage_month:%Y-%m} is priced in {version.currency} but the"
                f" {month:%Y-%m} invoice is in {version_m.currency}; bill them separately"
            )
        kind = "usage" if usage_month == month else "adjustment"
        for tt in TOKEN_TYPES:
            qty = sum(q.get(tt, 0) for q in shares.values())
            if not qty:
                continue
            found = version.rate(model, tt)
            assert found is not None
            rate = found[1]
            prior = q_before.get(tt, 0)
            amount = round_money(rate.cost(prior + qty)) - round_money(rate.cost(prior))
            detail = _detail(version, model, tt, prior + qty)
            if prior:
                detail = f"after {prior} tokens billed earlier; month total {detail}"
            line = InvoiceLine(account, kind, model, tt, usage_month, qty, amount, detail)
            lines[account].extend(_split(line, shares) if by_tenant else [line])
    if missing:
        listed = "; ".join(
            f"{m} (tenants: {', '.join(sorted(t))})" for m, t in sorted(missing.items())
        )
        raise PricingError(
            f"usage of models missing from price book version(s) for {month:%Y-%m}: {listed};"
            " add their prices to the price book (nothing is billed at zero)",
            details={"models": sorted(missing)},
        )
    invoiced = set(lines)
    for a in version_m.tenant_minimums:
        if selected is None or a == selected:
            invoiced.add(a)
    provisional = (now or datetime.now(UTC)) < month_closes_at(month, grace_days)
    invoices = []
    for account in sorted(invoiced):
        al = lines.get(account, [])
        usage_subtotal = sum((ln.amount for ln in al if ln.kind == "usage"), Decimal(0))
        minimum = version_m.minimum_for(account)
        if usage_subtotal < minimum:
            # An account charge: never split over tenants (it is not anyone's usage).
            al = [
                *al,
                InvoiceLine(
                    account,
                    "minimum",
                    "",
                    "",
                    month,
                    0,
                    round_money(minimum - usage_subtotal),
                    f"minimum monthly fee {minimum} - usage {usage_subtotal}",
                ),
            ]
        invoices.append(
            Invoice(
                account,
                month,
                version_m.currency,
                version_m.id,
                tuple(al),
                provisional,
                tuple(sorted(members.get(account, ()))),
                by_tenant,
            )
        )
    return invoices


def _split(line: InvoiceLine, shares: dict[str, dict[str, int]]) -> list[InvoiceLine]:
    """The account line per tenant, by tokens, largest remainder to the cent (sums exactly)."""
    tenants = sorted(t for t, q in shares.items() if q.get(line.token_type, 0))
    weights = [shares[t][line.token_type] for t in tenants]
    parts = allocate_cents(line.amount, weights)
    return [
        InvoiceLine(
            line.account_id,
            line.kind,
            line.model,
            line.token_type,
            line.usage_month,
            n,
            part,
            f"{n} of {line.quantity} tokens of the account line ({line.detail})",
            tenant,
        )
        for tenant, n, part in zip(tenants, weights, parts, strict=True)
    ]
