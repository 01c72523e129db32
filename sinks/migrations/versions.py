"""The tokenpulse schema, version by version (append only; never edit an applied one)."""

from __future__ import annotations

from tokenpulse.sinks.migrations.ddl import (
    AddColumn,
    MaterializedView,
    Migration,
    Table,
    TableSettings,
    View,
)

# Deduplication window (blocks remembered per table) for insert_deduplication_token
# on non-replicated MergeTree tables; MV targets need it too, or a retried
# insert would be deduplicated in usage_events but counted twice downstream.
DEDUP_WINDOW = ("non_replicated_deduplication_window", "10000")

TOKEN_SUMS = (
    ("events", "UInt64"),
    ("input_tokens", "UInt64"),
    ("output_tokens", "UInt64"),
    ("cached_input_tokens", "UInt64"),
    ("reasoning_tokens", "UInt64"),
    ("gpu_seconds", "Float64"),
)

_SUM_SELECT = (
    "count() AS events, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
    "sum(cached_input_tokens) AS cached_input_tokens, sum(reasoning_tokens) AS reasoning_tokens, "
    "sum(ifNull(gpu_seconds, 0)) AS gpu_seconds"
)
_SUM_TOTALS = (
    "sum(events) AS events, sum(input_tokens) AS input_tokens, "
    "sum(output_tokens) AS output_tokens, "
    "sum(cached_input_tokens) AS cached_input_tokens, sum(reasoning_tokens) AS reasoning_tokens, "
    "sum(gpu_seconds) AS gpu_seconds"
)

USAGE_EVENTS = Table(
    name="usage_events",
    columns=(
        ("event_id", "String"),
        ("tenant_id", "String"),
        ("occurred_at", "DateTime64(3, 'UTC')"),
        ("model", "LowCardinality(String)"),
        ("input_tokens", "UInt64"),
        ("output_tokens", "UInt64"),
        ("cached_input_tokens", "UInt64 DEFAULT 0"),
        ("reasoning_tokens", "UInt64 DEFAULT 0"),
        ("agent_id", "String DEFAULT ''"),
        ("region", "LowCardinality(String) DEFAULT ''"),
        ("provider", "LowCardinality(String) DEFAULT ''"),
        ("operation", "LowCardinality(String) DEFAULT ''"),
        ("gpu_seconds", "Nullable(Float64)"),
        ("attributes", "Map(String, String)"),
        ("schema_version", "UInt16 DEFAULT 1"),
        ("kafka_topic", "LowCardinality(String)"),
        ("kafka_partition", "UInt32"),
        ("kafka_offset", "UInt64"),
        ("ingested_at", "DateTime64(3, 'UTC')"),
        ("late", "Bool DEFAULT false"),
    ),
    partition_by="toYYYYMM(occurred_at)",
    order_by="(tenant_id, occurred_at, event_id)",
    ttl_column="occurred_at",
    indexes=(
        # existing_event_ids() looks events up by id within a tenant.
        "idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4",
        "idx_ingested_at ingested_at TYPE minmax GRANULARITY 4",
    ),
    projections=(
        # last_offsets() reads this pre-aggregate, stored atomically with each part.
        "p_offsets (SELECT kafka_topic, kafka_partition, max(kafka_offset)"
        " GROUP BY kafka_topic, kafka_partition)",
    ),
    settings=(DEDUP_WINDOW,),
    shard_key="cityHash64(tenant_id)",
)

USAGE_BY_MINUTE = Table(
    name="usage_by_minute",
    columns=(
        ("tenant_id", "String"),
        ("model", "LowCardinality(String)"),
        ("minute", "DateTime('UTC')"),
        *TOKEN_SUMS,
    ),
    engine="SummingMergeTree",
    partition_by="toYYYYMM(minute)",
    order_by="(tenant_id, model, minute)",
    settings=(DEDUP_WINDOW,),
    shard_key="cityHash64(tenant_id)",
)

USAGE_BY_HOUR = Table(
    name="usage_by_hour",
    columns=(
        ("tenant_id", "String"),
        ("model", "LowCardinality(String)"),
        ("region", "LowCardinality(String)"),
        ("hour", "DateTime('UTC')"),
        *TOKEN_SUMS,
    ),
    engine="SummingMergeTree",
    partition_by="toYYYYMM(hour)",
    order_by="(tenant_id, model, region, hour)",
    settings=(DEDUP_WINDOW,),
    shard_key="cityHash64(tenant_id)",
)

DEMAND_BY_MINUTE = Table(
    name="demand_by_minute",
    columns=(
        ("model", "LowCardinality(String)"),
        ("region", "LowCardinality(String)"),
        ("minute", "DateTime('UTC')"),
        *TOKEN_SUMS,
    ),
    engine="SummingMergeTree",
    partition_by="toYYYYMM(minute)",
    order_by="(model, region, minute)",
    settings=(DEDUP_WINDOW,),
    shard_key="cityHash64(model, region)",
)


def _mv(name: str, target: str, keys: str, key_exprs: str) -> MaterializedView:
    return MaterializedView(
        name=name,
        to_table=target,
        select=(
            f"SELECT {key_exprs}, {_SUM_SELECT} FROM {{db}}.usage_events{{local}} GROUP BY {keys}"
        ),
    )


def _totals_view(name: str, source: str, keys: str) -> View:
    # SummingMergeTree collapses rows only when parts merge: these views give
    # exact totals at any moment by summing again.
    return View(
        name=name,
        select=f"SELECT {keys}, {_SUM_TOTALS} FROM {{db}}.{source} GROUP BY {keys}",
    )


INVOICE_LINES = Table(
    name="invoice_lines",
    columns=(
        ("invoice_month", "Date"),
        ("tenant_id", "String"),
        ("line_no", "UInt32"),
        ("kind", "LowCardinality(String)"),  # usage | adjustment | minimum
        ("model", "LowCardinality(String)"),
        ("token_type", "LowCardinality(String)"),
        ("usage_month", "Date"),
        ("quantity", "UInt64"),
        ("amount", "Decimal(38, 2)"),
        ("currency", "LowCardinality(String)"),
        ("pricebook_version", "String"),
        ("detail", "String"),
        ("computed_at", "DateTime64(3, 'UTC')"),
    ),
    partition_by="toYYYYMM(invoice_month)",
    order_by="(invoice_month, tenant_id, computed_at, line_no)",
    shard_key="cityHash64(tenant_id)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="usage events and minute/hour aggregates",
        objects=(
            USAGE_EVENTS,
            USAGE_BY_MINUTE,
            USAGE_BY_HOUR,
            DEMAND_BY_MINUTE,
            _mv(
                "usage_by_minute_mv",
                "usage_by_minute",
                "tenant_id, model, minute",
                "tenant_id, model, toStartOfMinute(occurred_at) AS minute",
            ),
            _mv(
                "usage_by_hour_mv",
                "usage_by_hour",
                "tenant_id, model, region, hour",
                "tenant_id, model, region, toStartOfHour(occurred_at) AS hour",
            ),
            _mv(
                "demand_by_minute_mv",
                "demand_by_minute",
                "model, region, minute",
                "model, region, toStartOfMinute(occurred_at) AS minute",
            ),
            _totals_view("usage_by_minute_totals", "usage_by_minute", "tenant_id, model, minute"),
            _totals_view("usage_by_hour_totals", "usage_by_hour", "tenant_id, model, region, hour"),
        ),
    ),
    Migration(
        version=2,
        name="invoice lines written by `tokenpulse bill --write`",
        objects=(
            INVOICE_LINES,
            View(
                name="invoice_lines_current",
                # Each `bill --write` run is a new computed_at; the latest run per
                # (month, tenant) is the invoice, older runs stay for audit.
                select=(
                    "SELECT * FROM {db}.invoice_lines WHERE (invoice_month, tenant_id, computed_at)"
                    " IN (SELECT invoice_month, tenant_id, max(computed_at)"
                    " FROM {db}.invoice_lines GROUP BY invoice_month, tenant_id)"
                ),
            ),
        ),
    ),
    Migration(
        version=3,
        name="invoice_lines: billing account per line",
        objects=(
            # Lines written before billing accounts were per leaf tenant, which
            # was then the account: the default makes them read as such.
            AddColumn("invoice_lines", "account_id", "String DEFAULT tenant_id", "invoice_month"),
            View(
                name="invoice_lines_current",
                # The invoice is per account now: the latest run per (month,
                # account); tenant_id is whose share a line is.
                select=(
                    "SELECT * FROM {db}.invoice_lines"
                    " WHERE (invoice_month, account_id, computed_at) IN"
                    " (SELECT invoice_month, account_id, max(computed_at)"
                    " FROM {db}.invoice_lines GROUP BY invoice_month, account_id)"
                ),
            ),
        ),
    ),
    Migration(
        version=4,
        name="usage_events: wider merges (each row rewritten fewer times)",
        objects=(
            # A range of parts is merged once its total is `base` times its
            # largest part: 10 instead of 5 rewrites each row fewer times on
            # its way to a big part. bench/endpoint_bench.py, 300 inserts of
            # 12,000 rows: the endpoint's CPU per inserted row 0.82x, 11
            # active parts left instead of 8, a 50-quota UNION ALL over
            # usage_events 1.22x (token quotas read the minute totals since).
            # 20 saved no more over that run but left 22 parts and made that
            # read 1.9x. The server lowers the base towards 2
            # as parts age and as a partition's part count grows, so old
            # parts still merge. The aggregate tables keep the default: their
            # rows are few and their reads many.
            TableSettings("usage_events", (("merge_selector_base", "10"),)),
        ),
    ),
)

# What the worker writes, and the views that fill what its quota checks and
# the reports read from each insert into usage_events: the sink refuses to
# start on a database that lacks any of them (a view dropped by hand would
# leave the quotas counting less than the events, silently).
WORKER_OBJECTS: tuple[str, ...] = tuple(
    o.name for o in MIGRATIONS[0].objects if isinstance(o, Table | MaterializedView)
)
