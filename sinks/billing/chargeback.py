"""Chargeback: usage and cost at every level of the tenant hierarchy, with growth.

A tenant id such as `acme/research/agent-7` rolls up into `acme`,
`acme/research` and itself. Cost is the price book's cost of the month
with tiers over the billing account's tokens (as on the invoice; minimum
fees and late adjustments excluded: this is what the period's usage cost,
not what was invoiced), split over the account's tenants and regions in
proportion to each token type's tokens, then summed upwards in exact
Decimal and rounded to cents only for display.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from tokenpulse.sinks.billing.invoice import (
    PricingError,
    _as_dt,
    _to_date,
    add_months,
    priced_quantities,
)
from tokenpulse.sinks.billing.pricebook import TOKEN_TYPES, PriceBook, round_money
from tokenpulse.sinks.migrations.ddl import check_identifier

ALL = "*"
SEPARATOR = "/"


@dataclass(frozen=True)
class ChargebackRow:
    node: str  # a tenant id or one of its prefixes
    depth: int  # 1 for `acme`, 3 for `acme/research/agent-7`
    model: str  # ALL for every model
    region: str  # ALL for every region
    tokens: int
    cost: Decimal
    prev_tokens: int
    prev_cost: Decimal

    @staticmethod
    def _growth(cur: Decimal, prev: Decimal) -> Decimal | None:
        if not prev:
            return None
        return ((cur - prev) * 100 / prev).quantize(Decimal("0.1"))

    @property
    def tokens_growth_pct(self) -> Decimal | None:
        return self._growth(Decimal(self.tokens), Decimal(self.prev_tokens))

    @property
    def cost_growth_pct(self) -> Decimal | None:
        return self._growth(self.cost, self.prev_cost)

    def to_dict(self) -> dict[str, Any]:
        tg, cg = self.tokens_growth_pct, self.cost_growth_pct
        return {
            "node": self.node,
            "depth": self.depth,
            "model": self.model,
            "region": self.region,
            "tokens": self.tokens,
            "cost": str(round_money(self.cost)),
            "prev_tokens": self.prev_tokens,
            "prev_cost": str(round_money(self.prev_cost)),
            "tokens_growth_pct": None if tg is None else str(tg),
            "cost_growth_pct": None if cg is None else str(cg),
        }


def ancestors(tenant_id: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`, `a/b/c`]."""
    parts = tenant_id.split(SEPARATOR)
    return [SEPARATOR.join(parts[: i + 1]) for i in range(len(parts))]


def fetch_hierarchy_usage(
    client: Any, database: str, month: date, tenant_prefix: str | None = None
) -> list[tuple[str, str, str, date, dict[str, int]]]:
    """(tenant, model, region, usage month, tokens by type) for `month` and the one before."""
    db = check_identifier(database, "database")
    where = (
        " AND (tenant_id = {tenant:String} OR startsWith(tenant_id, {prefix:String}))"
        if tenant_prefix
        else ""
    )
    sql = f"""
SELECT tenant_id, model, region, toStartOfMonth(hour) AS month,
       sum(input_tokens) - sum(cached_input_tokens) AS input,
       sum(cached_input_tokens) AS cached_input,
       sum(output_tokens) - sum(reasoning_tokens) AS output,
       sum(reasoning_tokens) AS reasoning
FROM {db}.usage_by_hour
WHERE hour >= {{from:DateTime('UTC')}} AND hour < {{to:DateTime('UTC')}}{where}
GROUP BY tenant_id, model, region, month
"""
    params = {
        "from": _as_dt(add_months(month, -1)),
        "to": _as_dt(add_months(month, 1)),
        "tenant": tenant_prefix,
        "prefix": f"{tenant_prefix}{SEPARATOR}",
    }
    rows = client.query(sql, parameters=params).result_rows
    return [
        (
            str(r[0]),
            str(r[1]),
            str(r[2]),
            _to_date(r[3]),
            dict(zip(TOKEN_TYPES, map(int, r[4:8]), strict=True)),
        )
        for r in rows
    ]


def compute_chargeback(
    rows: list[tuple[str, str, str, date, dict[str, int]]],
    pricebook: PriceBook,
    month: date,
    *,
    tenant_prefix: str | None = None,
) -> list[ChargebackRow]:
    """Roll leaf usage and cost up the hierarchy, by model and by region.

    Tiers run over each billing account's tokens, so `rows` must hold every
    tenant of the accounts shown; `tenant_prefix` keeps only the rows of that
    node and its descendants in the result.
    """
    # (tenant, model, month) -> region -> priced quantities
    leaves: dict[tuple[str, str, date], dict[str, dict[str, int]]] = defaultdict(dict)
    missing: set[str] = set()
    for tenant, model, region, m, tokens in rows:
        q = priced_quantities(pricebook.version_for(m), model, tokens)
        if q is None:
            missing.add(model)
            continue
        leaves[(tenant, model, m)][region] = q
    if missing:
        raise PricingError(
            f"usage of models missing from the price book: {', '.join(sorted(missing))};"
            " add their prices (nothing is costed at zero)",
            details={"models": sorted(missing)},
        )
    prev = add_months(month, -1)
    # (account, model, month) -> token type -> tokens: what the tiers run over.
    totals: dict[tuple[str, str, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (tenant, model, m), by_region in leaves.items():
        account = pricebook.accounts.account_for(tenant)
        for q in by_region.values():
            for tt, n in q.items():
                totals[(account, model, m)][tt] += n
    type_cost: dict[tuple[str, str, date, str], Decimal] = {}
    for (account, model, m), by_type in totals.items():
        for tt, n in by_type.items():
            found = pricebook.version_for(m).rate(model, tt)
            assert found is not None
            type_cost[(account, model, m, tt)] = found[1].cost(n)
    # (node, model, region) -> [tokens, cost, prev_tokens, prev_cost]
    acc: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0), 0, Decimal(0)])
    for (tenant, model, m), by_region in leaves.items():
        slot = 0 if m == month else 2 if m == prev else None
        if slot is None:
            continue
        account = pricebook.accounts.account_for(tenant)
        account_tokens = totals[(account, model, m)]
        for region, q in by_region.items():
            n_tokens = sum(q.values())
            cost = sum(
                (
                    type_cost[(account, model, m, tt)] * n / account_tokens[tt]
                    for tt, n in q.items()
                    if n
                ),
                Decimal(0),
            )
            for node in ancestors(tenant):
                if tenant_prefix and not (
                    node == tenant_prefix or node.startswith(tenant_prefix + SEPARATOR)
                ):
                    continue
                for key in ((node, ALL, ALL), (node, model, ALL), (node, ALL, region)):
                    acc[key][slot] += n_tokens
                    acc[key][slot + 1] += cost
    out = [
        ChargebackRow(node, node.count(SEPARATOR) + 1, model, region, v[0], v[1], v[2], v[3])
        for (node, model, region), v in acc.items()
    ]
    out.sort(key=lambda r: (r.node, r.model != ALL, r.model, r.region != ALL, r.region))
    return out
