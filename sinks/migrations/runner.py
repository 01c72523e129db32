"""Apply the versioned schema to a ClickHouse database, exactly once per version.

`schema_migrations` records (version, name, checksum) of every applied
migration. Running `migrate` twice changes nothing; a migration whose
definition changed after it was applied is an error (add a new version
instead of editing an old one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenpulse.errors import TokenpulseError
from tokenpulse.sinks.migrations.ddl import Migration, RenderOptions, TableSettings
from tokenpulse.sinks.migrations.versions import MIGRATIONS


class MigrationError(TokenpulseError):
    """The database's recorded schema disagrees with the code's migrations."""

    code = "migration_error"


@dataclass(frozen=True)
class MigrateResult:
    applied: tuple[int, ...]
    already_applied: tuple[int, ...]


def bootstrap_statements(opts: RenderOptions) -> list[str]:
    """The database and the bookkeeping table, before any migration."""
    engine = (
        f"ReplicatedMergeTree('{opts.zk_path_prefix}/{opts.database}/schema_migrations',"
        f" '{opts.replica_macro}')"
        if opts.cluster
        else "MergeTree"
    )
    return [
        f"CREATE DATABASE IF NOT EXISTS {opts.database}{opts.on_cluster}",
        f"CREATE TABLE IF NOT EXISTS {opts.database}.schema_migrations{opts.on_cluster}\n"
        "(\n    version UInt32,\n    name String,\n    checksum String,\n"
        "    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)\n)\n"
        f"ENGINE = {engine}\nORDER BY version",
    ]


def plan(
    opts: RenderOptions, migrations: Sequence[Migration] = MIGRATIONS
) -> list[tuple[int, str]]:
    """Every statement `migrate` would run on an empty database, with its version (0 = setup)."""
    out = [(0, s) for s in bootstrap_statements(opts)]
    for m in migrations:
        out.extend((m.version, s) for s in m.statements(opts))
    return out


def applied_versions(client: Any, database: str) -> dict[int, str]:
    rows = client.query(
        f"SELECT version, any(checksum) FROM {database}.schema_migrations GROUP BY version"
    ).result_rows
    return {int(v): str(c) for v, c in rows}


def merge_tree_setting_names(client: Any) -> frozenset[str]:
    """The MergeTree settings this server knows (a TableSettings skips the others)."""
    rows = client.query("SELECT name FROM system.merge_tree_settings").result_rows
    return frozenset(str(r[0]) for r in rows)


def migrate(
    client: Any,
    opts: RenderOptions,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> MigrateResult:
    """Bring `opts.database` up to the newest version with a clickhouse-connect client.

    `progress(done, total)` is called after each migration (applied or skipped).
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise MigrationError(f"migration versions must be unique and increasing, got {versions}")
    for stmt in bootstrap_statements(opts):
        client.command(stmt)
    done = applied_versions(client, opts.database)
    known = set(versions)
    unknown = sorted(v for v in done if v not in known)
    if unknown:
        raise MigrationError(
            f"database {opts.database} has migrations {unknown} this tokenpulse does not know;"
            " upgrade tokenpulse before migrating"
        )
    applied: list[int] = []
    skipped: list[int] = []
    known_settings: frozenset[str] | None = None  # read once, when a migration needs it
    for m in migrations:
        if m.version in done:
            if done[m.version] != m.checksum:
                raise MigrationError(
                    f"migration {m.version} ({m.name}) changed after it was applied to"
                    f" {opts.database}; restore it and add a new migration instead",
                    details={"version": m.version},
                )
            skipped.append(m.version)
            if progress is not None:
                progress(len(applied) + len(skipped), len(migrations))
            continue
        if known_settings is None and any(isinstance(o, TableSettings) for o in m.objects):
            known_settings = merge_tree_setting_names(client)
        # Every statement is IF NOT EXISTS / OR REPLACE (or sets a value), so a run
        # cut short between a statement and the bookkeeping insert can be re-run.
        for stmt in m.statements(opts, known_settings):
            client.command(stmt)
        client.insert(
            f"{opts.database}.schema_migrations",
            [[m.version, m.name, m.checksum]],
            column_names=["version", "name", "checksum"],
            column_type_names=["UInt32", "String", "String"],
        )
        applied.append(m.version)
        if progress is not None:
            progress(len(applied) + len(skipped), len(migrations))
    return MigrateResult(tuple(applied), tuple(skipped))
