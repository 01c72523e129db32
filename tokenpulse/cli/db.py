"""`tokenpulse db migrate|status`: create or upgrade the ClickHouse schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, write_json
from tokenpulse.cli._progress import Progress
from tokenpulse.config import Settings


def register(subparsers: Any) -> None:
    db = add_parser(
        subparsers,
        "db",
        help="the ClickHouse schema: migrate (idempotent), status",
        description="Versioned, idempotent migrations of the tokenpulse schema (usage_events, "
        "per-minute and per-hour aggregates, demand, invoice lines) in the database "
        "CLICKHOUSE_URL names, or --database.",
        example_lines=(
            "tokenpulse db migrate",
            "tokenpulse db status --format json",
            "tokenpulse db migrate --print-sql --cluster analytics",
        ),
    )
    verbs = db.add_subparsers(dest="db_verb", metavar="ACTION", required=True)

    mig = add_parser(
        verbs,
        "migrate",
        help="apply pending schema migrations (idempotent)",
        description="Create or upgrade the tokenpulse schema. Running it twice changes nothing; "
        "a migration edited after it was applied is refused.",
        example_lines=(
            "tokenpulse db migrate",
            "tokenpulse db migrate --format json",
            "tokenpulse db migrate --print-sql --cluster analytics --retention-days 400",
        ),
    )
    _common(mig)
    mig.add_argument("--cluster", help="render ON CLUSTER / Replicated* / Distributed DDL")
    mig.add_argument(
        "--retention-days",
        type=int,
        default=None,
        help="TTL of raw usage_events when the table is created (default: keep forever)",
    )
    mig.add_argument("--print-sql", action="store_true", help="print the DDL instead of running it")
    add_format(mig)
    mig.set_defaults(func=_migrate)

    status = add_parser(
        verbs,
        "status",
        help="list applied and pending migrations",
        description="Each migration's version, state (applied, pending, CHANGED) and name.",
        example_lines=("tokenpulse db status", "tokenpulse db status --format json"),
    )
    _common(status)
    add_format(status)
    status.set_defaults(func=_status)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database", default=None, help="database (default: from CLICKHOUSE_URL, tokenpulse)"
    )


def _database(args: argparse.Namespace, settings: Settings) -> str:
    return str(args.database or settings.clickhouse.database)


def _migrate(args: argparse.Namespace) -> int:
    from tokenpulse.sinks._client import sync_client
    from tokenpulse.sinks.migrations import RenderOptions, migrate, plan

    settings = Settings.from_env()
    opts = RenderOptions(
        database=_database(args, settings),
        cluster=args.cluster,
        retention_days=args.retention_days,
    )
    if args.print_sql:
        for version, stmt in plan(opts):
            sys.stdout.write(f"-- version {version}\n{stmt};\n\n")
        return 0
    client = sync_client(settings.clickhouse)
    try:
        with Progress(f"migrating {opts.database}", unit="migrations") as bar:
            result = migrate(client, opts, progress=bar.update)
    finally:
        client.close()
    if args.format == "json":
        write_json(
            {
                "database": opts.database,
                "applied": list(result.applied),
                "already_applied": list(result.already_applied),
            }
        )
        return 0
    applied = ", ".join(map(str, result.applied)) or "none"
    sys.stdout.write(
        f"database {opts.database}: applied {applied};"
        f" already applied {len(result.already_applied)}\n"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from tokenpulse.sinks._client import sync_client
    from tokenpulse.sinks.migrations import MIGRATIONS, applied_versions, check_identifier
    from tokenpulse.sinks.migrations.ddl import MaterializedView, Table, View

    settings = Settings.from_env()
    database = check_identifier(_database(args, settings), "database")
    client = sync_client(settings.clickhouse)
    try:
        exists = client.query(
            "SELECT count() FROM system.tables"
            " WHERE database = {db:String} AND name = 'schema_migrations'",
            parameters={"db": database},
        ).result_rows[0][0]
        done = applied_versions(client, database) if int(exists) else {}
        present = {
            str(r[0])
            for r in client.query(
                "SELECT name FROM system.tables WHERE database = {db:String}",
                parameters={"db": database},
            ).result_rows
        }
    finally:
        client.close()
    rows = []
    for m in MIGRATIONS:
        state = "applied" if m.version in done else "pending"
        if m.version in done and done[m.version] != m.checksum:
            state = "CHANGED"
        rows.append({"version": m.version, "state": state, "name": m.name})
    # Tables and views of applied migrations that are gone (dropped by hand):
    # migrate does not re-create them, and the worker refuses to start.
    missing = sorted(
        {
            o.name
            for m in MIGRATIONS
            if m.version in done
            for o in m.objects
            if isinstance(o, Table | MaterializedView | View) and o.name not in present
        }
    )
    if args.format == "json":
        write_json({"database": database, "migrations": rows, "missing": missing})
        return 0
    for row in rows:
        sys.stdout.write(f"{row['version']:>4}  {row['state']:<8} {row['name']}\n")
    if missing:
        sys.stdout.write(
            f"MISSING: {', '.join(missing)} (dropped by hand?): see docs/operations.md,"
            ' "A dropped view"\n'
        )
    return 0
