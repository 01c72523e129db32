"""Insert settings an older ClickHouse server does not know are renamed or left out, never sent."""

from __future__ import annotations

from tokenpulse.sinks._encode import PARSE_SETTINGS
from tokenpulse.sinks.clickhouse import INSERT_SETTINGS, usable_insert_settings

WANTED = {**INSERT_SETTINGS, **PARSE_SETTINGS}


def test_a_current_server_gets_every_setting_as_is() -> None:
    usable, warnings = usable_insert_settings(set(WANTED), WANTED)
    assert usable == WANTED
    assert warnings == []


def test_an_older_server_gets_the_old_name_and_loses_only_precise_float_parsing() -> None:
    # e.g. 23.8 LTS: insert_distributed_sync, no precise_float_parsing.
    known = (set(WANTED) - {"distributed_foreground_insert", "precise_float_parsing"}) | {
        "insert_distributed_sync"
    }
    usable, warnings = usable_insert_settings(known, WANTED)
    assert "precise_float_parsing" not in usable
    assert "distributed_foreground_insert" not in usable
    assert usable["insert_distributed_sync"] == 1
    assert usable["insert_deduplicate"] == 1
    assert usable["input_format_null_as_default"] == 0
    assert len(warnings) == 1
    assert "precise_float_parsing" in warnings[0]
    assert "gpu_seconds" in warnings[0]


def test_a_setting_without_a_fallback_is_sent_so_the_server_names_it() -> None:
    usable, warnings = usable_insert_settings(set(), {"insert_deduplicate": 1})
    assert usable == {"insert_deduplicate": 1}
    assert warnings == []
