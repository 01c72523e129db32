"""The versioned ClickHouse schema of tokenpulse and the runner that applies it."""

from tokenpulse.sinks.migrations.ddl import Migration, RenderOptions, check_identifier
from tokenpulse.sinks.migrations.runner import (
    MigrateResult,
    MigrationError,
    applied_versions,
    migrate,
    plan,
)
from tokenpulse.sinks.migrations.versions import MIGRATIONS

__all__ = [
    "MIGRATIONS",
    "MigrateResult",
    "Migration",
    "MigrationError",
    "RenderOptions",
    "applied_versions",
    "check_identifier",
    "migrate",
    "plan",
]
