"""Gathers the report's data from ClickHouse with the billing and capacity code's own APIs.

Each optional part (quotas, costs, capacity) degrades to a visible note
when its input is missing (no Kafka, no price book, an unpriced model), so
one missing piece never costs the whole report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tokenpulse.errors import TokenpulseError
from tokenpulse.report.model import DepartmentCost, ReportData, TokenSeries
from tokenpulse.report.quotas import burns
from tokenpulse.schemas.quota import QuotaDefinition
from tokenpulse.sinks.billing.chargeback import ALL, compute_chargeback, fetch_hierarchy_usage
from tokenpulse.sinks.billing.invoice import add_months
from tokenpulse.sinks.billing.pricebook import PriceBook
from tokenpulse.sinks.capacity import ServingTable, fetch_minute_demand, plan_capacity
from tokenpulse.sinks.migrations.ddl import check_identifier

CAPACITY_DAYS = 28
FORECAST_WEEKS = 8


@dataclass(frozen=True)
class Inputs:
    """What the report is asked for; None for a part means "omit it, with this note"."""

    database: str
    month: date
    now: datetime
    pricebook: PriceBook | None = None
    pricebook_note: str | None = None
    serving: ServingTable | None = None
    serving_note: str | None = None
    quotas: Sequence[QuotaDefinition] | None = None
    quota_note: str | None = None


def as_of(month: date, now: datetime) -> datetime:
    """The report's moment: now while the month runs, else the end of the month."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    nxt = add_months(month, 1)
    end = datetime(nxt.year, nxt.month, 1, tzinfo=UTC)
    return now if start <= now < end else end


def fetch_series(client: Any, database: str, month: date) -> tuple[list[TokenSeries], int]:
    """Tokens per (tenant, model, day) of the month, and the month's event count."""
    db = check_identifier(database, "database")
    nxt = add_months(month, 1)
    sql = (
        "SELECT tenant_id, model, toDate(hour) AS day,"
        " sum(input_tokens) + sum(output_tokens), sum(events)"
        f" FROM {db}.usage_by_hour"
        " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
        " GROUP BY tenant_id, model, day"
    )
    params = {
        "start": datetime(month.year, month.month, 1, tzinfo=UTC),
        "end": datetime(nxt.year, nxt.month, 1, tzinfo=UTC),
    }
    by_key: dict[tuple[str, str], dict[date, int]] = defaultdict(dict)
    events = 0
    for tenant, model, day, tokens, n in client.query(sql, parameters=params).result_rows:
        by_key[(str(tenant), str(model))][day] = int(tokens)
        events += int(n)
    series = [TokenSeries(t, m, days) for (t, m), days in by_key.items()]
    series.sort(key=lambda s: (-s.total, s.tenant_id, s.model))
    return series, events


def department_of(node: str) -> str:
    """`acme/research/agent-7` -> `acme/research`; a one-level tenant is its own department."""
    return "/".join(node.split("/")[:2])


def fetch_costs(
    client: Any, database: str, month: date, book: PriceBook
) -> tuple[list[DepartmentCost], str]:
    """Cost per department (first two tenant levels) from the chargeback roll-up."""
    rows = compute_chargeback(fetch_hierarchy_usage(client, database, month), book, month)
    currency = book.version_for(month).currency
    totals = [r for r in rows if r.model == ALL and r.region == ALL]
    by_node = {r.node: r for r in totals}
    out = [
        DepartmentCost(r.node, r.tokens, r.cost, r.prev_cost)
        for r in totals
        if r.depth == 2 or (r.depth == 1 and not any(k.startswith(r.node + "/") for k in by_node))
    ]
    # Usage booked on an organisation itself (`acme`, beside `acme/research`)
    # belongs to no department below it: shown as the organisation's own line.
    for r in totals:
        if r.depth != 1:
            continue
        children = [c for c in totals if c.depth == 2 and c.node.startswith(r.node + "/")]
        if not children:
            continue
        own_tokens = r.tokens - sum(c.tokens for c in children)
        own_cost = r.cost - sum((c.cost for c in children), Decimal(0))
        own_prev = r.prev_cost - sum((c.prev_cost for c in children), Decimal(0))
        if own_tokens or own_cost or own_prev:
            out.append(DepartmentCost(f"{r.node} (direct)", own_tokens, own_cost, own_prev))
    out.sort(key=lambda d: (-d.cost, d.department))
    return out, currency


def gather(client: Any, inputs: Inputs) -> ReportData:
    """Everything the page shows, for `inputs.month` of `inputs.database`."""
    moment = as_of(inputs.month, inputs.now)
    series, events = fetch_series(client, inputs.database, inputs.month)
    nxt = add_months(inputs.month, 1)
    n_days = (nxt - inputs.month).days
    days = tuple(inputs.month + timedelta(days=i) for i in range(n_days))
    notes: list[str] = []

    quota_burns: list[Any] = []
    quota_note = inputs.quota_note
    if inputs.quotas is not None:
        quota_burns, skipped = burns(client, inputs.database, inputs.quotas, moment)
        notes += skipped
        if not inputs.quotas:
            quota_note = "no quota definitions on the quotas topic"

    costs: list[DepartmentCost] = []
    currency = ""
    cost_note = inputs.pricebook_note
    if inputs.pricebook is not None:
        try:
            costs, currency = fetch_costs(client, inputs.database, inputs.month, inputs.pricebook)
        except TokenpulseError as exc:
            cost_note = f"costs omitted: {exc.message}"

    plans: list[Any] = []
    window = None
    cap_note = inputs.serving_note
    if inputs.serving is not None:
        end = moment.replace(second=0, microsecond=0)
        start = end - timedelta(days=CAPACITY_DAYS)
        window = (start, end)
        demand = fetch_minute_demand(client, inputs.database, start, end)
        plans = plan_capacity(demand, inputs.serving, start, end, FORECAST_WEEKS)
        if not plans:
            cap_note = f"no demand in the {CAPACITY_DAYS} days before {end:%Y-%m-%d %H:%M} UTC"

    return ReportData(
        month=inputs.month,
        database=inputs.database,
        generated_at=inputs.now,
        as_of=moment,
        days=days,
        series=tuple(series),
        events=events,
        quotas=tuple(quota_burns),
        quota_note=quota_note,
        costs=tuple(costs),
        currency=currency,
        cost_note=cost_note,
        capacity=tuple(plans),
        capacity_window=window,
        capacity_headroom=inputs.serving.headroom if inputs.serving else 0.0,
        capacity_sizing=inputs.serving.sizing if inputs.serving else "p99",
        capacity_note=cap_note,
        notes=tuple(notes),
    )
