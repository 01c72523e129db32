"""Reading usage for invoices from ClickHouse and storing invoice lines in `invoice_lines`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from tokenpulse.sinks.billing.invoice import (
    DEFAULT_GRACE_DAYS,
    DEFAULT_LOOKBACK_MONTHS,
    Invoice,
    UsageRow,
    _as_dt,
    _to_date,
    add_months,
)
from tokenpulse.sinks.billing.pricebook import TOKEN_TYPES
from tokenpulse.sinks.migrations.ddl import check_identifier


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


def write_invoices(client: Any, database: str, invoices: Sequence[Invoice]) -> int:
    """Append the lines to `invoice_lines`; `invoice_lines_current` shows the latest run.

    `account_id` is the invoiced account; `tenant_id` is whose share the line
    is: the account itself, or one tenant on a `by_tenant` invoice. Either way
    the lines of an account add up to its invoice total.
    """
    db = check_identifier(database, "database")
    computed_at = datetime.now(UTC)
    rows = []
    for inv in invoices:
        for i, ln in enumerate(inv.lines, start=1):
            rows.append(
                [
                    inv.month,
                    inv.account_id,
                    ln.tenant_id,
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
                "account_id",
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
