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

from tokenpulse.cli._common import add_format, add_parser, example_file
from tokenpulse.cli._progress import phase
from tokenpulse.config import Settings

DEFAULT_PRICEBOOK = Path("examples/pricebook.toml")


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "bill",
        help="a month's invoices or chargeback, from the price book",
        description=(
            "Invoices per billing account for a month: a tenant such as"
            " globex/research/agent-2 is billed to its account (its ancestor at the price"
            " book's account_level, or an [accounts] mapping); tiers and minimums apply to"
            " the account's total. Exact token sums from ClickHouse, tiers and money in"
            " decimal, each line rounded half-up to cents; usage that arrived after a month"
            " closed goes on the next invoice as an adjustment. --by-tenant splits each line"
            " over the account's tenants (the parts add up exactly). --chargeback rolls usage"
            " and cost up the tenant hierarchy (acme, acme/research, ...)."
            " See docs/billing.md."
        ),
        example_lines=(
            "tokenpulse bill --month 2026-11",
            "tokenpulse bill --month 2026-11 --format json",
            "tokenpulse bill --month 2026-11 --account globex --by-tenant  # split per tenant",
            "tokenpulse bill --month 2026-11 --account-level 0 --format csv  # per leaf tenant",
            "tokenpulse bill --month 2026-11 --tenant acme/research --format csv",
            "tokenpulse bill --month 2026-11 --chargeback --format json",
            "tokenpulse bill --month 2026-11 --pricebook examples/pricebook.toml --write",
        ),
    )
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--account", help="only this billing account's invoice")
    p.add_argument(
        "--tenant",
        help="invoices: only the invoice of the account this tenant is billed to;"
        " chargeback: the tenant and its descendants",
    )
    p.add_argument(
        "--account-level",
        type=int,
        default=None,
        metavar="N",
        help="bill each tenant's ancestor with N path components (1: globex/research/agent-2"
        " -> globex; 0: each leaf tenant); default: the price book's account_level",
    )
    p.add_argument(
        "--by-tenant",
        action="store_true",
        help="split each account line per tenant in proportion to tokens (to the cent,"
        " largest remainder; the parts add up to the account line)",
    )
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
    return Path(env) if env else example_file(DEFAULT_PRICEBOOK.name)


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
    if args.account_level is not None:
        book = book.with_account_level(args.account_level)
    # Tiers run over whole accounts: a tenant filter cannot narrow the read
    # unless each tenant is its own account.
    per_tenant = book.accounts.level == 0 and not book.accounts.explicit
    settings = Settings.from_env()
    database = args.database or settings.clickhouse.database
    client = sync_client(settings.clickhouse)
    try:
        if args.chargeback:
            with phase(f"reading {args.month} usage by tenant hierarchy from {database}"):
                prefix = args.tenant if per_tenant else None
                rows = fetch_hierarchy_usage(client, database, month, prefix)
            chargeback = [
                r.to_dict()
                for r in compute_chargeback(rows, book, month, tenant_prefix=args.tenant)
            ]
            _emit(args.format, {"month": args.month, "chargeback": chargeback}, chargeback)
            return 0
        with phase(f"reading {args.month} usage from {database}"):
            tenant = args.tenant if per_tenant and args.account is None else None
            usage = fetch_usage(
                client, database, month, tenant_id=tenant, grace_days=args.grace_days
            )
        with phase(f"pricing {len({u.tenant_id for u in usage}):,} tenants"):
            invoices = compute_invoices(
                usage,
                book,
                month,
                account_id=args.account,
                tenant_id=args.tenant,
                by_tenant=args.by_tenant,
                grace_days=args.grace_days,
            )
        if args.write:
            with phase(f"writing {len(invoices):,} invoices to {database}.invoice_lines"):
                write_invoices(client, database, invoices)
    finally:
        client.close()
    flat = [
        {"account_id": inv.account_id, "currency": inv.currency, **ln.to_dict()}
        for inv in invoices
        for ln in inv.lines
    ]
    if not args.by_tenant:
        # Without the split every line's tenant is the account: a redundant column.
        for row in flat:
            del row["tenant_id"]
    doc = {
        "month": args.month,
        "account_level": book.accounts.level,
        "provisional": any(inv.provisional for inv in invoices),
        "invoices": [inv.to_dict() for inv in invoices],
    }
    _emit(args.format, doc, flat, totals={inv.account_id: str(inv.total) for inv in invoices})
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
