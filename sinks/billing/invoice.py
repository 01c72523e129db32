"""Monthly invoices: exact token sums from ClickHouse, tiers and money in Decimal.

Token types billed (cached and reasoning tokens are subsets, per the contract):
  input        = input_tokens - cached_input_tokens   (uncached input)
  cached_input = cached_input_tokens                  (at the cached rate only)
  output       = output_tokens - reasoning_tokens
  reasoning    = reasoning_tokens
A model without a cached_input (reasoning) price bills those tokens as input
(output), so no token is billed twice or at zero.

Which invoice an event lands on: its usage month, unless it was ingested
after that month closed (month end + grace); then it goes on the invoice of
the month in which it arrived (minus grace), as an adjustment line for its
usage month. Adjustment amount = cost(all usage of that month billed so far
+ the late tokens) - cost(usage billed so far), both rounded, so the tiers
stay right and every usage month's invoices add up to its true cost.

Rounding: each line is rounded half-up to cents; an invoice total is the
sum of its lines; a minimum monthly fee adds a `minimum` line for the gap.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tokenpulse.errors import TokenpulseError
from tokenpulse.sinks.billing.pricebook import (
    TOKEN_TYPES,
    PriceBook,
    PriceBookVersion,
    round_money,
)
from tokenpulse.sinks.migrations.ddl import check_identifier

DEFAULT_GRACE_DAYS = 3
DEFAULT_LOOKBACK_MONTHS = 12


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
    tenant_id: str
    kind: str  # usage | adjustment | minimum
    model: str
    token_type: str
    usage_month: date
    quantity: int
    amount: Decimal
    detail: str = ""  # tier breakdown, human readable

    def to_dict(self) -> dict[str, Any]:
        return {
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
    tenant_id: str
    month: date
    currency: str
    pricebook_version: str
    lines: tuple[InvoiceLine, ...]
    provisional: bool = False
    total: Decimal = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum((ln.amount for ln in self.lines), Decimal("0.00")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "month": f"{self.month:%Y-%m}",
            "currency": self.currency,
            "pricebook_version": self.pricebook_version,
            "provisional": self.provisional,
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


def fetch_usage(
    client: Any,
    database: str,
    month: date,
    *,
    tenant_id: str | None = None,
    grace_days: int = DEFAULT_GRACE_DAYS,
    lookback_months: int = DEFAULT_LOOKBACK_MONTHS,
) -> list[UsageRow]:
    """Exact sums per (tenant, model, usage month, bill month) for usage months <= month."""
    db = check_identifier(database, "database")
    tenant_filter = " AND tenant_id = {tenant:String}" if tenant_id is not None else ""
    sql = f"""
SELECT tenant_id, model,
       toStartOfMonth(occurred_at) AS usage_month,
       greatest(usage_month,
                toStartOfMonth(ingested_at - toIntervalSecond({{grace_s:UInt32}}))) AS bill_month,
       sum(input_tokens - least(cached_input_tokens, input_tokens)) AS input,
       sum(cached_input_tokens) AS cached_input,
       sum(output_tokens - least(reasoning_tokens, output_tokens)) AS output,
       sum(reasoning_tokens) AS reasoning
FROM {db}.usage_events
WHERE occurred_at >= {{from:DateTime64(3, 'UTC')}} AND occurred_at < {{to:DateTime64(3, 'UTC')}}
  {tenant_filter}
GROUP BY tenant_id, model, usage_month, bill_month
HAVING bill_month <= {{month:Date}}
"""
    params = {
        "grace_s": grace_days * 86400,
        "from": _as_dt(add_months(month, -lookback_months)),
        "to": _as_dt(add_months(month, 1)),
        "month": month,
        "tenant": tenant_id,
    }
    rows = client.query(sql, parameters=params).result_rows
    return [
        UsageRow(
            tenant_id=str(r[0]),
            model=str(r[1]),
            usage_month=_to_date(r[2]),
            bill_month=_to_date(r[3]),
            tokens={tt: int(v) for tt, v in zip(TOKEN_TYPES, r[4:8], strict=True)},
        )
        for r in rows
    ]


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
    tenant_id: str | None = None,
    now: datetime | None = None,
    grace_days: int = DEFAULT_GRACE_DAYS,
) -> list[Invoice]:
    """The invoices of `month`, one per tenant, from the rows of fetch_usage."""
    # (tenant, model, usage_month) -> tokens billed before `month` / on `month`
    before: dict[tuple[str, str, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    now_q: dict[tuple[str, str, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        target = now_q if r.bill_month == month else before
        for tt, n in r.tokens.items():
            target[(r.tenant_id, r.model, r.usage_month)][tt] += n
    version_m = pricebook.version_for(month)
    missing: dict[str, set[str]] = defaultdict(set)
    lines: dict[str, list[InvoiceLine]] = defaultdict(list)
    for key in sorted(now_q):
        tenant, model, usage_month = key
        version = pricebook.version_for(usage_month)
        q_now = priced_quantities(version, model, now_q[key])
        q_before = priced_quantities(version, model, before.get(key, {}))
        if q_now is None or q_before is None:
            missing[model].add(tenant)
            continue
        if version.currency != version_m.currency:
            raise PricingError(
                f"usage of {usage_month:%Y-%m} is priced in {version.currency} but the"
                f" {month:%Y-%m} invoice is in {version_m.currency}; bill them separately"
            )
        kind = "usage" if usage_month == month else "adjustment"
        for tt in TOKEN_TYPES:
            qty = q_now.get(tt, 0)
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
            lines[tenant].append(
                InvoiceLine(tenant, kind, model, tt, usage_month, qty, amount, detail)
            )
    if missing:
        listed = "; ".join(
            f"{m} (tenants: {', '.join(sorted(t))})" for m, t in sorted(missing.items())
        )
        raise PricingError(
            f"usage of models missing from price book version(s) for {month:%Y-%m}: {listed};"
            " add their prices to the price book (nothing is billed at zero)",
            details={"models": sorted(missing)},
        )
    tenants = set(lines)
    for t in version_m.tenant_minimums:
        if tenant_id is None or t == tenant_id:
            tenants.add(t)
    provisional = (now or datetime.now(UTC)) < month_closes_at(month, grace_days)
    invoices = []
    for tenant in sorted(tenants):
        tl = lines.get(tenant, [])
        usage_subtotal = sum((ln.amount for ln in tl if ln.kind == "usage"), Decimal(0))
        minimum = version_m.minimum_for(tenant)
        if usage_subtotal < minimum:
            tl = [
                *tl,
                InvoiceLine(
                    tenant,
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
            Invoice(tenant, month, version_m.currency, version_m.id, tuple(tl), provisional)
        )
    return invoices


def write_invoices(client: Any, database: str, invoices: Sequence[Invoice]) -> int:
    """Append the lines to `invoice_lines`; `invoice_lines_current` shows the latest run."""
    db = check_identifier(database, "database")
    computed_at = datetime.now(UTC)
    rows = []
    for inv in invoices:
        for i, ln in enumerate(inv.lines, start=1):
            rows.append(
                [
                    inv.month,
                    inv.tenant_id,
                    i,
                    ln.kind,
                    ln.model,
                    ln.token_type,
                    ln.usage_month,
                    ln.quantity,
                    ln.amount,
                    inv.currency,
                    inv.pricebook_version,
                    json.dumps({"detail": ln.detail}),
                    computed_at,
                ]
            )
    if rows:
        client.insert(
            f"{db}.invoice_lines",
            rows,
            column_names=[
                "invoice_month",
                "tenant_id",
                "line_no",
                "kind",
                "model",
                "token_type",
                "usage_month",
                "quantity",
                "amount",
                "currency",
                "pricebook_version",
                "detail",
                "computed_at",
            ],
            column_type_names=[
                "Date",
                "String",
                "UInt32",
                "LowCardinality(String)",
                "LowCardinality(String)",
                "LowCardinality(String)",
                "Date",
                "UInt64",
                "Decimal(38, 2)",
                "LowCardinality(String)",
                "String",
                "String",
                "DateTime64(3, 'UTC')",
            ],
        )
    return len(rows)
