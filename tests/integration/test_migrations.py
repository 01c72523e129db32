"""`db migrate` on the real engine: creates the schema, is idempotent, refuses edits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tokenpulse.cli import main
from tokenpulse.sinks.migrations import (
    MIGRATIONS,
    Migration,
    MigrationError,
    RenderOptions,
    migrate,
    plan,
)
from tokenpulse.sinks.migrations.ddl import TableSettings, View

pytestmark = pytest.mark.integration


def _schema(client: Any, db: str) -> list[tuple[str, str]]:
    rows = client.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String}"
        " ORDER BY name",
        parameters={"db": db},
    ).result_rows
    return [(str(n), str(q)) for n, q in rows]


def test_migrate_creates_everything_and_twice_changes_nothing(
    clickhouse_client: Any, unique_name: str
) -> None:
    opts = RenderOptions(database=unique_name)
    try:
        first = migrate(clickhouse_client, opts)
        assert first.applied == tuple(m.version for m in MIGRATIONS)
        before = _schema(clickhouse_client, unique_name)
        names = {n for n, _ in before}
        assert {
            "usage_events",
            "usage_by_minute",
            "usage_by_minute_totals",
            "usage_by_hour",
            "demand_by_minute",
            "invoice_lines",
            "schema_migrations",
        } <= names
        second = migrate(clickhouse_client, opts)
        assert second.applied == ()
        assert second.already_applied == first.applied
        assert _schema(clickhouse_client, unique_name) == before
        count = clickhouse_client.command(f"SELECT count() FROM {unique_name}.schema_migrations")
        assert int(count) == len(MIGRATIONS)
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {unique_name}")


def test_an_edited_applied_migration_is_refused(clickhouse_client: Any, unique_name: str) -> None:
    opts = RenderOptions(database=unique_name)
    try:
        migrate(clickhouse_client, opts)
        first = MIGRATIONS[0]
        edited = Migration(
            first.version, first.name, (*first.objects, View("extra", "SELECT 1 AS x"))
        )
        with pytest.raises(MigrationError, match=r"migration 1 .* changed after it was applied"):
            migrate(clickhouse_client, opts, (edited, *MIGRATIONS[1:]))
        # A new version is how a schema changes: it applies cleanly.
        nxt = Migration(MIGRATIONS[-1].version + 1, "extra view", (View("extra", "SELECT 1 AS x"),))
        assert migrate(clickhouse_client, opts, (*MIGRATIONS, nxt)).applied == (nxt.version,)
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {unique_name}")


def test_merge_settings_apply_and_unknown_ones_are_skipped(
    clickhouse_client: Any, unique_name: str
) -> None:
    opts = RenderOptions(database=unique_name)
    try:
        migrate(clickhouse_client, opts)
        created = dict(_schema(clickhouse_client, unique_name))
        assert "merge_selector_base = 10" in created["usage_events"]
        assert "merge_selector_base" not in created["usage_by_minute"]
        # A server that does not know a setting (an older ClickHouse) applies
        # the rest of the migration and records it.
        nxt = Migration(
            MIGRATIONS[-1].version + 1,
            "a setting of a future server",
            (TableSettings("usage_events", (("no_such_merge_tree_setting", "1"),)),),
        )
        assert migrate(clickhouse_client, opts, (*MIGRATIONS, nxt)).applied == (nxt.version,)
        after = dict(_schema(clickhouse_client, unique_name))
        assert after["usage_events"] == created["usage_events"]
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {unique_name}")


def test_cli_db_migrate_and_status(
    services: Any,
    clickhouse_client: Any,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url.rstrip("/") + f"/{unique_name}")
    try:
        assert main(["db", "migrate", "--retention-days", "400"]) == 0
        assert "applied 1, 2" in capsys.readouterr().out
        assert main(["db", "migrate"]) == 0
        assert "applied none" in capsys.readouterr().out
        assert main(["db", "status"]) == 0
        out = capsys.readouterr().out
        assert out.count("applied") == len(MIGRATIONS)
        assert "MISSING" not in out
        ddl = dict(_schema(clickhouse_client, unique_name))["usage_events"]
        assert "TTL" in ddl
        assert "400" in ddl
        # A view dropped by hand is named, with where to read what to do.
        clickhouse_client.command(f"DROP VIEW {unique_name}.usage_by_hour_mv")
        assert main(["db", "status"]) == 0
        assert "MISSING: usage_by_hour_mv (dropped by hand?)" in capsys.readouterr().out
        assert main(["db", "status", "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["missing"] == ["usage_by_hour_mv"]
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {unique_name}")


def test_cli_prints_cluster_ddl_without_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "migrate", "--cluster", "prod", "--print-sql"]) == 0
    out = capsys.readouterr().out
    assert "ON CLUSTER 'prod'" in out
    assert "ReplicatedSummingMergeTree" in out


def test_a_dropped_view_is_restored_as_docs_operations_says(
    clickhouse_client: Any, clickhouse_database: str
) -> None:
    """docs/operations.md, "A dropped view": re-create it, refill the months of the gap."""
    db = clickhouse_database
    opts = RenderOptions(database=db)
    migrate(clickhouse_client, opts)
    cols = ["event_id", "tenant_id", "occurred_at", "model", "input_tokens", "output_tokens"]

    def insert(prefix: str, month: int) -> None:
        rows = [[f"{prefix}{i}", f"t{i % 3}", datetime(2026, month, 1 + i % 20, tzinfo=UTC),
                 "m", 10 + i, 1] for i in range(60)]  # fmt: skip
        clickhouse_client.insert(f"{db}.usage_events", rows, column_names=cols)

    def minute_totals() -> tuple[int, int]:
        row = clickhouse_client.query(
            f"SELECT sum(events), sum(input_tokens) FROM {db}.usage_by_minute_totals"
        ).result_rows[0]
        return int(row[0]), int(row[1])

    def events() -> tuple[int, int]:
        row = clickhouse_client.query(
            f"SELECT count(), sum(input_tokens) FROM {db}.usage_events"
        ).result_rows[0]
        return int(row[0]), int(row[1])

    insert("a", 11)
    clickhouse_client.command(f"DROP VIEW {db}.usage_by_minute_mv")
    insert("b", 12)  # the gap: usage_events only
    assert minute_totals() != events()
    # 1. The view's statement, as `tokenpulse db migrate --print-sql` prints it.
    (create,) = [s for _, s in plan(opts) if f"{db}.usage_by_minute_mv " in s]
    clickhouse_client.command(create)
    # 2. The months of the gap, refilled with the view's own SELECT.
    select = create.split("\nAS ", 1)[1]
    clickhouse_client.command(f"ALTER TABLE {db}.usage_by_minute DROP PARTITION 202612")
    where = " WHERE toYYYYMM(occurred_at) = 202612 GROUP BY"
    clickhouse_client.command(
        f"INSERT INTO {db}.usage_by_minute {select.replace(' GROUP BY', where, 1)}"
    )
    # 3. The totals equal the events again, and the view counts new inserts.
    assert minute_totals() == events()
    insert("c", 12)
    assert minute_totals() == events()
