"""Done-when: `tokenpulse bill` matches an independent Decimal computation to the cent.

Tens of thousands of events go through the ClickHouseSink (some of them late,
after October closed); the expected invoices are computed here from the raw
events with a deliberately plain implementation that shares no code with
tokenpulse.sinks.billing: once per leaf tenant (account level 0), once per
billing account (level 1 with an explicit mapping), with the per-tenant split.
"""

from __future__ import annotations

import json
import tomllib
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.billing_plain import (
    MODELS,
    NOV,
    Key,
    cents,
    expected_invoices,
    load,
    priced_parts,
    waves,
)
from tokenpulse.cli import main
from tokenpulse.sinks.migrations import RenderOptions, migrate

pytestmark = pytest.mark.integration

PRICEBOOK = """
currency = "EUR"
[[versions]]
id = "2026-q4"
effective_from = 2026-10-01
minimum_monthly_fee = "1.00"
[versions.tenant_minimums]
"initech" = "25000.00"
[versions.models."research-xl"]
input = "150.00"
cached_input = "15.00"
output = "150.00"
[versions.models."frontier-large"]
cached_input = "1.337"
output = "75.00"
reasoning = "80.00"
[versions.models."frontier-large".input]
mode = "graduated"
tiers = [{ up_to = 10_000_000, price = "15.00" }, { up_to = 30_000_000, price = "12.50" },
         { price = "9.99" }]
[versions.models."small-fast"]
output = "0.60"
[versions.models."small-fast".input]
mode = "volume"
tiers = [{ up_to = 20_000_000, price = "0.15" }, { price = "0.11" }]
"""

TENANTS = ("acme/research", "acme/research/agent-7", "acme/ops", "globex", "initech")


async def test_bill_matches_an_independent_computation_to_the_cent(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = clickhouse_database
    migrate(clickhouse_client, RenderOptions(database=db))
    book_path = tmp_path / "pricebook.toml"
    book_path.write_text(PRICEBOOK, encoding="utf-8")
    loaded = waves(TENANTS)
    all_events = await load(services.clickhouse_url, db, loaded)
    assert sum(len(w[0]) for w in loaded) == 33_700

    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url)
    argv = ["bill", "--month", "2026-11", "--format", "json", "--pricebook", str(book_path)]
    assert main([*argv, "--database", db, "--write"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["account_level"] == 0
    got = {
        inv["account_id"]: {
            (ln["kind"], ln["model"], ln["token_type"], ln["usage_month"]): Decimal(ln["amount"])
            for ln in inv["lines"]
        }
        for inv in doc["invoices"]
    }
    expected = expected_invoices(all_events, tomllib.loads(PRICEBOOK))
    assert got == expected
    for inv in doc["invoices"]:
        assert inv["currency"] == "EUR"
        assert Decimal(inv["total"]) == sum(Decimal(ln["amount"]) for ln in inv["lines"])
    # The data exercises every path: tiers crossed, adjustments, a minimum true-up.
    kinds = {k[0] for lines in got.values() for k in lines}
    assert kinds == {"usage", "adjustment", "minimum"}

    # --write stored exactly these lines; the view shows the latest run.
    stored = clickhouse_client.query(
        f"SELECT account_id, sum(amount) FROM {db}.invoice_lines_current"
        " WHERE invoice_month = '2026-11-01' GROUP BY account_id"
    ).result_rows
    assert {t: Decimal(a) for t, a in stored} == {
        inv["account_id"]: Decimal(inv["total"]) for inv in doc["invoices"]
    }

    # One tenant alone, as CSV, has the same lines.
    assert (
        main(
            [
                *argv[:3],
                "--format",
                "csv",
                "--pricebook",
                str(book_path),
                "--database",
                db,
                "--tenant",
                "globex",
            ]
        )
        == 0
    )
    csv_lines = capsys.readouterr().out.strip().splitlines()
    assert len(csv_lines) == 1 + len(expected["globex"])


ACCOUNT_TENANTS = (
    "acme/research/agent-1",
    "acme/research/agent-7",
    "acme/ops/agent-3",
    "globex/research/agent-2",
    "globex/ops/agent-5",
    "globex/ops/agent-6",
    "initech/lab/agent-9",
    "initech/lab/agent-8",
)
# acme/research is its own customer; everyone else is billed per org.
EXPLICIT = {"acme/research": "acme-research"}
ACCOUNT_BOOK = """
currency = "EUR"
account_level = 1
[accounts]
"acme/research" = "acme-research"
[[versions]]
id = "2026-q4"
effective_from = 2026-10-01
minimum_monthly_fee = "0.00"
[versions.tenant_minimums]
{minimums}
[versions.models."research-xl"]
input = "150.00"
cached_input = "15.00"
output = "150.00"
[versions.models."frontier-large"]
cached_input = "1.337"
output = "75.00"
reasoning = "80.00"
[versions.models."frontier-large".input]
mode = "graduated"
tiers = [{{ up_to = {threshold}, price = "15.00" }}, {{ price = "9.99" }}]
[versions.models."small-fast"]
output = "0.60"
input = "0.15"
"""


def _account_of(tenant: str) -> str:
    """Plain: an explicit prefix, else the first path component."""
    for prefix, account in EXPLICIT.items():
        if tenant == prefix or tenant.startswith(prefix + "/"):
            return account
    return tenant.split("/")[0]


def _usage_subtotals(lines: dict[str, dict[Key, Decimal]]) -> dict[str, Decimal]:
    return {
        who: sum((a for k, a in ls.items() if k[0] == "usage"), Decimal(0))
        for who, ls in lines.items()
    }


async def test_bill_per_account_matches_an_independent_computation_to_the_cent(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = clickhouse_database
    migrate(clickhouse_client, RenderOptions(database=db))
    all_events = await load(services.clickhouse_url, db, waves(ACCOUNT_TENANTS, scale=2))

    # The tier threshold sits between the largest November frontier-large input
    # of any one tenant and of any one account: only account totals cross it.
    every_type = dict.fromkeys(("input", "cached_input", "output", "reasoning"), "")
    _, now = priced_parts(all_events, dict.fromkeys(MODELS, every_type), _account_of)
    per_tenant: dict[str, int] = defaultdict(int)
    per_account: dict[str, int] = defaultdict(int)
    for (acct, model, usage_m, ttype, tenant), n in now.items():
        if (model, usage_m, ttype) == ("frontier-large", NOV, "input"):
            per_tenant[tenant] += n
            per_account[acct] += n
    top_tenant, top_account = max(per_tenant.values()), max(per_account.values())
    assert top_tenant < top_account
    threshold = (top_tenant + top_account) // 2

    # Minimums per account: initech's is above its usage (a minimum line, once
    # for the account); globex's is above what any one globex tenant would pay
    # alone but below the org's usage (no minimum line).
    def book_text(minimums: dict[str, str]) -> str:
        rows = "\n".join(f'"{a}" = "{m}"' for a, m in minimums.items())
        return ACCOUNT_BOOK.format(minimums=rows, threshold=threshold)

    draft = tomllib.loads(book_text({}))
    per_account_usage = _usage_subtotals(expected_invoices(all_events, draft, _account_of))
    alone = _usage_subtotals(expected_invoices(all_events, draft))
    globex_alone = max(v for t, v in alone.items() if t.startswith("globex/"))
    globex_min = cents((globex_alone + per_account_usage["globex"]) / 2)
    assert globex_alone < globex_min < per_account_usage["globex"]
    minimums = {
        "initech": str(cents(per_account_usage["initech"] + 1000)),
        "globex": str(globex_min),
        "hooli": "99.00",  # an account without usage still pays its minimum
    }
    text = book_text(minimums)
    book_path = tmp_path / "pricebook.toml"
    book_path.write_text(text, encoding="utf-8")
    split: dict[str, dict[tuple[Key, str], Decimal]] = {}
    expected = expected_invoices(all_events, tomllib.loads(text), _account_of, split)
    assert set(expected) == {"acme", "acme-research", "globex", "initech", "hooli"}

    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url)
    argv = ["bill", "--month", "2026-11", "--format", "json", "--pricebook", str(book_path)]
    assert main([*argv, "--database", db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["account_level"] == 1
    got = {
        inv["account_id"]: {
            (ln["kind"], ln["model"], ln["token_type"], ln["usage_month"]): Decimal(ln["amount"])
            for ln in inv["lines"]
        }
        for inv in doc["invoices"]
    }
    assert got == expected
    # The account's frontier-large input crossed the tier no tenant reaches.
    crossed = [
        ln
        for inv in doc["invoices"]
        for ln in inv["lines"]
        if (ln["model"], ln["token_type"], ln["kind"]) == ("frontier-large", "input", "usage")
        and ln["quantity"] > threshold
    ]
    assert crossed
    assert all("9.99/M" in ln["detail"] for ln in crossed)
    minimum_lines = {a: k for a, ls in got.items() for k in ls if k[0] == "minimum"}
    assert set(minimum_lines) == {"initech", "hooli"}
    assert {k[0] for ls in got.values() for k in ls} == {"usage", "adjustment", "minimum"}
    invoices = {inv["account_id"]: inv for inv in doc["invoices"]}
    assert set(invoices["globex"]["tenants"]) == {t for t in ACCOUNT_TENANTS if "globex" in t}

    # --by-tenant: per-tenant lines equal to the plain largest-remainder split,
    # adding up exactly to each account line and to the same totals.
    assert main([*argv, "--database", db, "--by-tenant", "--write"]) == 0
    by_tenant = json.loads(capsys.readouterr().out)
    got_split = {
        inv["account_id"]: {
            (
                (ln["kind"], ln["model"], ln["token_type"], ln["usage_month"]),
                ln["tenant_id"],
            ): Decimal(ln["amount"])
            for ln in inv["lines"]
        }
        for inv in by_tenant["invoices"]
    }
    assert got_split == split
    for account, lines in got_split.items():
        summed: dict[Key, Decimal] = defaultdict(Decimal)
        for (key, tenant), amount in lines.items():
            assert tenant == account or _account_of(tenant) == account
            summed[key] += amount
        assert summed == expected[account]
    assert {inv["account_id"]: inv["total"] for inv in by_tenant["invoices"]} == {
        inv["account_id"]: inv["total"] for inv in doc["invoices"]
    }

    # Stored: per account the invoice total, per tenant its share.
    stored = clickhouse_client.query(
        f"SELECT account_id, tenant_id, sum(amount) FROM {db}.invoice_lines_current"
        " WHERE invoice_month = '2026-11-01' GROUP BY account_id, tenant_id"
    ).result_rows
    per_stored: dict[str, Decimal] = defaultdict(Decimal)
    for account, tenant, amount in stored:
        per_stored[account] += Decimal(amount)
        assert sum(v for (_, t), v in split[account].items() if t == tenant) == Decimal(amount)
    assert per_stored == {a: Decimal(inv["total"]) for a, inv in invoices.items()}

    # One account, picked by one of its tenants, as CSV.
    csv_argv = [*argv[:3], "--format", "csv", "--pricebook", str(book_path), "--database", db]
    assert main([*csv_argv, "--tenant", "globex/ops/agent-5"]) == 0
    csv_lines = capsys.readouterr().out.strip().splitlines()
    assert csv_lines[0].startswith("account_id,currency,kind,")
    assert len(csv_lines) == 1 + len(expected["globex"])
    # At level 0 the same usage is one invoice per leaf tenant again.
    assert main([*csv_argv, "--account-level", "0", "--tenant", "globex/ops/agent-5"]) == 0
    leaf = capsys.readouterr().out.strip().splitlines()
    assert {line.split(",")[0] for line in leaf[1:]} == {"globex/ops/agent-5"}
