"""`tokenpulse bill`: monthly invoices (or chargeback) from ClickHouse and the price book."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from tokenpulse.cli._common import add_format, add_parser
from tokenpulse.cli._progress import phase
from tokenpulse.config import Settings

DEFAULT_PRICEBOOK = Path("examples/pricebook.toml")


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "bill",
        help="a month's invoices or chargeback, from the price book",
        description=(
            "Invoices per tenant for a month: exact token sums from ClickHouse, tiers and"
            " money in decimal, each line rounded half-up to cents; usage that arrived after"
            " a month closed goes on the next invoice as an adjustment. --chargeback rolls"
            " usage and cost up the tenant hierarchy (acme, acme/research, ...)."
            " See docs/billing.md."
        ),
        example_lines=(
            "tokenpulse bill --month 2026-11",
            "tokenpulse bill --month 2026-11 --format json",
            "tokenpulse bill --month 2026-11 --tenant acme/research --format csv",
            "tokenpulse bill --month 2026-11 --chargeback --format json",
            "tokenpulse bill --month 2026-11 --pricebook examples/pricebook.toml --write",
        ),
    )
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--tenant", help="one tenant (chargeback: a tenant and its descendants)")
    add_format(p, ("table", "csv", "json"))
    p.add_argument(
        "--pricebook",
        type=Path,
        default=None,
        help="price book TOML (default: $TOKENPULSE_PRICEBOOK, else examples/pricebook.toml)",
    )
    p.add_argument("--database", help="database (default: from CLICKHOUSE_URL)")
    p.add_argument(
        "--grace-days",
        type=int,
        default=3,
        help="days after month end before it closes; later events go on the next invoice",
    )
    p.add_argument("--write", action="store_true", help="also store the lines in invoice_lines")
    p.add_argument(
        "--chargeback",
        action="store_true",
        help="usage and cost per tenant-hierarchy level, model and region, with growth",
    )
    p.set_defaults(func=run)


def _pricebook_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("TOKENPULSE_PRICEBOOK")
    return Path(env) if env else DEFAULT_PRICEBOOK


def run(args: argparse.Namespace) -> int:
    from tokenpulse.sinks._client import sync_client
    from tokenpulse.sinks.billing import (
        compute_invoices,
        fetch_usage,
        load_pricebook,
        parse_month,
        write_invoices,
    )
    from tokenpulse.sinks.billing.chargeback import compute_chargeback, fetch_hierarchy_usage

    month = parse_month(args.month)
    book = load_pricebook(_pricebook_path(args.pricebook))
    settings = Settings.from_env()
    database = args.database or settings.clickhouse.database
    client = sync_client(settings.clickhouse)
    try:
        if args.chargeback:
            with phase(f"reading {args.month} usage by tenant hierarchy from {database}"):
                rows = fetch_hierarchy_usage(client, database, month, args.tenant)
            chargeback = [r.to_dict() for r in compute_chargeback(rows, book, month)]
            _emit(args.format, {"month": args.month, "chargeback": chargeback}, chargeback)
            return 0
        with phase(f"reading {args.month} usage from {database}"):
            usage = fetch_usage(
                client, database, month, tenant_id=args.tenant, grace_days=args.grace_days
            )
        with phase(f"pricing {len({u.tenant_id for u in usage}):,} tenants"):
            invoices = compute_invoices(
                usage, book, month, tenant_id=args.tenant, grace_days=args.grace_days
            )
        if args.write:
            with phase(f"writing {len(invoices):,} invoices to {database}.invoice_lines"):
                write_invoices(client, database, invoices)
    finally:
        client.close()
    flat = [
        {"tenant_id": inv.tenant_id, "currency": inv.currency, **ln.to_dict()}
        for inv in invoices
        for ln in inv.lines
    ]
    doc = {
        "month": args.month,
        "provisional": any(inv.provisional for inv in invoices),
        "invoices": [inv.to_dict() for inv in invoices],
    }
    _emit(args.format, doc, flat, totals={inv.tenant_id: str(inv.total) for inv in invoices})
    if doc["provisional"] and args.format == "table":
        sys.stdout.write(
            f"note: {args.month} is not closed yet (month end + {args.grace_days} days);"
            " these invoices are provisional\n"
        )
    return 0


def _emit(
    fmt: str,
    doc: dict[str, Any],
    rows: list[dict[str, Any]],
    totals: dict[str, str] | None = None,
) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if not rows:
        if fmt == "table":
            sys.stdout.write("no usage\n")
        return
    columns = [c for c in rows[0] if c != "detail"] + (["detail"] if "detail" in rows[0] else [])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return
    table = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in table]
    for tenant, total in (totals or {}).items():
        out.append(f"TOTAL {tenant}: {total}")
    sys.stdout.write("\n".join(out) + "\n")
