"""The schema's DDL text, single node and cluster, rendered from one definition."""

from __future__ import annotations

import pytest

from tokenpulse.errors import ConfigError
from tokenpulse.sinks.migrations import MIGRATIONS, Migration, RenderOptions, plan
from tokenpulse.sinks.migrations.ddl import TableSettings


def _all_sql(opts: RenderOptions) -> str:
    return ";\n".join(stmt for _, stmt in plan(opts))


def test_single_node_schema_has_the_contract_tables_and_types() -> None:
    sql = _all_sql(RenderOptions(database="tp"))
    assert "CREATE TABLE IF NOT EXISTS tp.usage_events\n" in sql
    for fragment in (
        "occurred_at DateTime64(3, 'UTC')",
        "model LowCardinality(String)",
        "region LowCardinality(String)",
        "input_tokens UInt64",
        "attributes Map(String, String)",
        "PARTITION BY toYYYYMM(occurred_at)",
        "ORDER BY (tenant_id, occurred_at, event_id)",
        "non_replicated_deduplication_window = 10000",
        "ENGINE = SummingMergeTree",
        "TO tp.usage_by_minute\n",
        "FROM tp.usage_events GROUP BY tenant_id, model, minute",
    ):
        assert fragment in sql, fragment
    assert "ON CLUSTER" not in sql
    assert "Replicated" not in sql
    assert "TTL" not in sql


def test_retention_adds_a_ttl_to_raw_events_only() -> None:
    sql = _all_sql(RenderOptions(database="tp", retention_days=400))
    assert sql.count("TTL toDateTime(occurred_at) + INTERVAL 400 DAY") == 1


def test_cluster_mode_renders_replicated_local_tables_and_distributed_fronts() -> None:
    sql = _all_sql(RenderOptions(database="tp", cluster="prod"))
    statements = [s for _, s in plan(RenderOptions(database="tp", cluster="prod"))]
    assert all(" ON CLUSTER 'prod'" in s for s in statements)
    assert (
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/tp/usage_events_local',"
        " '{replica}')" in sql
    )
    assert "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/tp/usage_by_minute_local'" in sql
    assert (
        "CREATE TABLE IF NOT EXISTS tp.usage_events ON CLUSTER 'prod' AS tp.usage_events_local\n"
        "ENGINE = Distributed('prod', 'tp', 'usage_events_local', cityHash64(tenant_id))" in sql
    )
    # Each shard aggregates its own rows: the MV reads and writes local tables.
    assert "TO tp.usage_by_minute_local\n" in sql
    assert "FROM tp.usage_events_local GROUP BY tenant_id, model, minute" in sql
    # Replicated tables deduplicate through Keeper, not the non-replicated window.
    assert "non_replicated_deduplication_window" not in sql
    # Views read the Distributed tables.
    assert "FROM tp.usage_by_minute GROUP BY" in sql


def test_checksums_do_not_depend_on_database_or_cluster() -> None:
    sums = [m.checksum for m in MIGRATIONS]
    assert len(set(sums)) == len(sums)
    assert all(len(s) == 64 for s in sums)
    assert [m.version for m in MIGRATIONS] == sorted({m.version for m in MIGRATIONS})


@pytest.mark.parametrize("bad", ["tp; DROP TABLE x", "a-b", "", "1abc", "x y"])
def test_database_and_cluster_names_must_be_plain_identifiers(bad: str) -> None:
    with pytest.raises(ConfigError, match="plain identifier"):
        RenderOptions(database=bad)
    with pytest.raises(ConfigError, match="plain identifier"):
        RenderOptions(database="tp", cluster=bad)


def test_retention_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="retention_days"):
        RenderOptions(retention_days=0)


def test_usage_events_merges_wider_on_one_node_and_on_each_shard() -> None:
    single = _all_sql(RenderOptions(database="tp"))
    assert "ALTER TABLE tp.usage_events MODIFY SETTING merge_selector_base = 10" in single
    cluster = _all_sql(RenderOptions(database="tp", cluster="prod"))
    # MergeTree settings live on the storage tables, not the Distributed front.
    assert (
        "ALTER TABLE tp.usage_events_local ON CLUSTER 'prod'"
        " MODIFY SETTING merge_selector_base = 10" in cluster
    )
    assert "ALTER TABLE tp.usage_events ON CLUSTER" not in cluster
    # The aggregate tables keep the server's default.
    assert "usage_by_minute MODIFY SETTING" not in single


def test_table_settings_the_server_does_not_know_are_skipped() -> None:
    opts = RenderOptions(database="tp")
    obj = TableSettings("t", (("a", "1"), ("b", "2")))
    assert obj.render(opts) == ["ALTER TABLE tp.t MODIFY SETTING a = 1, b = 2"]
    assert obj.render(opts, known={"b", "c"}) == ["ALTER TABLE tp.t MODIFY SETTING b = 2"]
    assert obj.render(opts, known=frozenset()) == []
    m = Migration(9, "settings", (obj,))
    assert m.statements(opts, frozenset()) == []
    # What the server knows never changes what was applied: the checksum renders all.
    assert m.checksum == Migration(9, "settings", (obj,)).checksum
