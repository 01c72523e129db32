"""Schema objects as data, rendered to DDL for one server or for a cluster.

The migrations are defined once (tables, materialized views, views) and
rendered two ways from the same definitions:

- single node: `CREATE TABLE db.t ... ENGINE = MergeTree ...`;
- cluster: every statement `ON CLUSTER`, storage tables become
  `db.t_local` with `Replicated*` engines, `db.t` becomes a `Distributed`
  table over them, materialized views read and write the local tables (each
  shard aggregates its own rows), plain views read the Distributed tables.

SELECT texts use two placeholders: `{db}` (the database) and `{local}`
(empty on one node, `_local` on a cluster) so that a materialized view's
source and target resolve to the shard-local tables.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from tokenpulse.errors import ConfigError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_identifier(value: str, what: str) -> str:
    """Database/cluster names are spliced into DDL, so only plain identifiers pass."""
    if not _IDENTIFIER.match(value):
        raise ConfigError(
            f"{what} {value!r} is not a plain identifier; use letters, digits and underscores",
            details={what: value},
        )
    return value


@dataclass(frozen=True)
class RenderOptions:
    """How to render: target database, optional cluster, retention of raw events."""

    database: str = "tokenpulse"
    cluster: str | None = None
    retention_days: int | None = None  # TTL on usage_events; None keeps events forever
    # ZooKeeper/Keeper path template of Replicated* tables (cluster mode only).
    zk_path_prefix: str = "/clickhouse/tables/{shard}"
    replica_macro: str = "{replica}"

    def __post_init__(self) -> None:
        check_identifier(self.database, "database")
        if self.cluster is not None:
            check_identifier(self.cluster, "cluster")
        if self.retention_days is not None and self.retention_days <= 0:
            raise ConfigError(
                f"retention_days must be positive, got {self.retention_days}; "
                "omit it to keep events forever"
            )

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER '{self.cluster}'" if self.cluster else ""

    @property
    def local(self) -> str:
        return "_local" if self.cluster else ""


@dataclass(frozen=True)
class Table:
    """A storage table. `engine` is the non-replicated family name (MergeTree, ...)."""

    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: str
    engine: str = "MergeTree"
    engine_args: str = ""
    partition_by: str | None = None
    # TTL expression applied when RenderOptions.retention_days is set.
    ttl_column: str | None = None
    indexes: tuple[str, ...] = ()
    projections: tuple[str, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()
    shard_key: str = "rand()"

    def _body(self, opts: RenderOptions) -> str:
        parts = [f"    {name} {ctype}" for name, ctype in self.columns]
        parts += [f"    INDEX {ix}" for ix in self.indexes]
        parts += [f"    PROJECTION {p}" for p in self.projections]
        return "(\n" + ",\n".join(parts) + "\n)"

    def _engine(self, opts: RenderOptions) -> str:
        if not opts.cluster:
            return f"{self.engine}({self.engine_args})" if self.engine_args else self.engine
        path = f"'{opts.zk_path_prefix}/{opts.database}/{self.name}_local'"
        args = [path, f"'{opts.replica_macro}'"]
        if self.engine_args:
            args.append(self.engine_args)
        return f"Replicated{self.engine}({', '.join(args)})"

    def render(self, opts: RenderOptions) -> list[str]:
        target = f"{opts.database}.{self.name}{opts.local}"
        clauses = [f"ENGINE = {self._engine(opts)}"]
        if self.partition_by:
            clauses.append(f"PARTITION BY {self.partition_by}")
        clauses.append(f"ORDER BY {self.order_by}")
        if self.ttl_column and opts.retention_days:
            days = opts.retention_days
            clauses.append(f"TTL toDateTime({self.ttl_column}) + INTERVAL {days} DAY")
        settings = [
            (k, v)
            for k, v in self.settings
            # Replicated tables deduplicate through Keeper (replicated_deduplication_window).
            if not (opts.cluster and k == "non_replicated_deduplication_window")
        ]
        if settings:
            clauses.append("SETTINGS " + ", ".join(f"{k} = {v}" for k, v in settings))
        create = (
            f"CREATE TABLE IF NOT EXISTS {target}{opts.on_cluster}\n"
            + self._body(opts)
            + "\n"
            + "\n".join(clauses)
        )
        out = [create]
        if opts.cluster:
            out.append(
                f"CREATE TABLE IF NOT EXISTS {opts.database}.{self.name}{opts.on_cluster}"
                f" AS {target}\nENGINE = Distributed('{opts.cluster}', '{opts.database}',"
                f" '{self.name}_local', {self.shard_key})"
            )
        return out


@dataclass(frozen=True)
class MaterializedView:
    """An insert trigger: `select` runs on every block inserted into its source."""

    name: str
    to_table: str
    select: str

    def render(self, opts: RenderOptions) -> list[str]:
        select = self.select.format(db=opts.database, local=opts.local)
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {opts.database}.{self.name}{opts.on_cluster}"
            f" TO {opts.database}.{self.to_table}{opts.local}\nAS {select}"
        ]


@dataclass(frozen=True)
class View:
    """A plain view; on a cluster it reads the Distributed tables (`{local}` is empty)."""

    name: str
    select: str

    def render(self, opts: RenderOptions) -> list[str]:
        select = self.select.format(db=opts.database, local="")
        return [f"CREATE OR REPLACE VIEW {opts.database}.{self.name}{opts.on_cluster}\nAS {select}"]


@dataclass(frozen=True)
class AddColumn:
    """A column added to an existing table (idempotent); on a cluster, to both layers."""

    table: str
    column: str
    ctype: str  # type and optional DEFAULT expression
    after: str | None = None

    def render(self, opts: RenderOptions) -> list[str]:
        where = f" AFTER {self.after}" if self.after else ""
        clause = f"ADD COLUMN IF NOT EXISTS {self.column} {self.ctype}{where}"
        # The Distributed table keeps its own column list, so it is altered too.
        targets = [f"{self.table}_local", self.table] if opts.cluster else [self.table]
        return [f"ALTER TABLE {opts.database}.{t}{opts.on_cluster} {clause}" for t in targets]


@dataclass(frozen=True)
class TableSettings:
    """MergeTree settings changed on an existing table; on a cluster, on its local tables.

    Only for settings that tune how the server stores parts, never what a
    query returns: a server too old to know one skips it (`known`), so the
    schema stays the same everywhere.
    """

    table: str
    settings: tuple[tuple[str, str], ...]

    def render(self, opts: RenderOptions, known: Collection[str] | None = None) -> list[str]:
        """The ALTER; `known`: the server's MergeTree setting names (None: all of them)."""
        settings = [(k, v) for k, v in self.settings if known is None or k in known]
        if not settings:
            return []
        assignments = ", ".join(f"{k} = {v}" for k, v in settings)
        return [
            f"ALTER TABLE {opts.database}.{self.table}{opts.local}{opts.on_cluster}"
            f" MODIFY SETTING {assignments}"
        ]


SchemaObject = Table | MaterializedView | View | AddColumn | TableSettings


@dataclass(frozen=True)
class Migration:
    """One schema version; never edit an applied one, add the next version instead."""

    version: int
    name: str
    objects: tuple[SchemaObject, ...] = field(default_factory=tuple)

    def statements(
        self, opts: RenderOptions, known_settings: Collection[str] | None = None
    ) -> list[str]:
        """The DDL; `known_settings`: the server's MergeTree setting names (None: all)."""
        out: list[str] = []
        for obj in self.objects:
            if isinstance(obj, TableSettings):
                out.extend(obj.render(opts, known_settings))
            else:
                out.extend(obj.render(opts))
        return out

    @property
    def checksum(self) -> str:
        """Stable over database, cluster and retention: only the definition counts."""
        canonical = RenderOptions(database="tokenpulse")
        text = "\n;\n".join(self.statements(canonical))
        return hashlib.sha256(f"{self.version}:{self.name}\n{text}".encode()).hexdigest()
