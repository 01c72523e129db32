"""How the worker fetches and how often it writes: settings, and where they land."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokenpulse.errors import ConfigError
from tokenpulse.sinks.clickhouse import INSERT_MAX_ROWS
from tokenpulse.streams.app import create_faust_app
from tokenpulse.streams.settings import WorkerSettings
from tokenpulse.streams.transport import BatchTransport

ENV = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "CLICKHOUSE_URL": "http://h:8123/db"}


def test_defaults_and_environment() -> None:
    s = WorkerSettings.from_env(ENV)
    assert (s.fetch_min_bytes, s.fetch_max_wait_ms, s.write_min_interval_ms) == (262144, 100, 200)
    assert s.flush_interval_ms == 0  # what arrived is prepared at once (early quota checks)
    assert s.quota_check_interval_s == 5.0
    assert s.quota_max_reads_per_check == 200
    assert s.quota_reread_s == 60.0
    assert s.quota_quiet_reread_s == 5.0
    assert s.write_max_interval_ms == 1000  # only while the worker is behind
    assert s.insert_max_rows == 60_000  # a write of SDK envelopes: two parallel inserts
    assert s.insert_max_rows == INSERT_MAX_ROWS  # the sink's own default, the same
    assert WorkerSettings.from_env({**ENV, "TOKENPULSE_INSERT_MAX_ROWS": "0"}).insert_max_rows == 0
    s = WorkerSettings.from_env(
        {
            **ENV,
            "TOKENPULSE_FETCH_MIN_BYTES": "1",
            "TOKENPULSE_FETCH_MAX_WAIT_MS": "0",
            "TOKENPULSE_WRITE_MIN_INTERVAL_MS": "0",
            "TOKENPULSE_FLUSH_INTERVAL_MS": "500",
            "TOKENPULSE_QUOTA_CHECK_INTERVAL_S": "0.5",
            "TOKENPULSE_QUOTA_MAX_READS_PER_CHECK": "7",
            "TOKENPULSE_QUOTA_REREAD_S": "0",
            "TOKENPULSE_QUOTA_QUIET_REREAD_S": "0.5",
        }
    )
    assert s.quota_max_reads_per_check == 7
    assert s.quota_reread_s == 0.0
    assert s.quota_quiet_reread_s == 0.5
    assert (s.fetch_min_bytes, s.fetch_max_wait_ms, s.write_min_interval_ms) == (1, 0, 0)
    assert s.flush_interval_ms == 500
    assert s.quota_check_interval_s == 0.5
    assert s.write_max_interval_ms == 1000
    # A longer minimum alone takes the maximum with it; a maximum below the
    # minimum is an error that names both.
    s = WorkerSettings.from_env({**ENV, "TOKENPULSE_WRITE_MIN_INTERVAL_MS": "25000"})
    assert (s.write_min_interval_ms, s.write_max_interval_ms) == (25000, 25000)
    expected = "TOKENPULSE_WRITE_MAX_INTERVAL_MS must be within TOKENPULSE_WRITE_MIN_INTERVAL_MS"
    with pytest.raises(ConfigError, match=re.escape(expected + " (300)..60000, got 200")):
        WorkerSettings.from_env({**ENV, "TOKENPULSE_WRITE_MIN_INTERVAL_MS": "300",
                                 "TOKENPULSE_WRITE_MAX_INTERVAL_MS": "200"})  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENPULSE_FETCH_MIN_BYTES", "0"),
        ("TOKENPULSE_FETCH_MAX_WAIT_MS", "-1"),
        ("TOKENPULSE_FETCH_MAX_WAIT_MS", "60000"),
        ("TOKENPULSE_WRITE_MIN_INTERVAL_MS", "-5"),
        ("TOKENPULSE_WRITE_MAX_INTERVAL_MS", "60001"),
        ("TOKENPULSE_INSERT_MAX_ROWS", "-1"),
        ("TOKENPULSE_QUOTA_CHECK_INTERVAL_S", "0"),
        ("TOKENPULSE_QUOTA_MAX_READS_PER_CHECK", "0"),
        ("TOKENPULSE_QUOTA_MAX_READS_PER_CHECK", "many"),
        ("TOKENPULSE_QUOTA_REREAD_S", "-1"),
        ("TOKENPULSE_QUOTA_REREAD_S", "86401"),
        ("TOKENPULSE_QUOTA_QUIET_REREAD_S", "-0.1"),
        ("TOKENPULSE_QUOTA_QUIET_REREAD_S", "86401"),
    ],
)
def test_out_of_range_is_refused_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as err:
        WorkerSettings.from_env({**ENV, name: value})
    assert err.value.details["setting"] == name


def test_the_app_hands_the_fetch_settings_to_its_consumer_transport(tmp_path: Path) -> None:
    settings = WorkerSettings.from_env(
        {**ENV, "TOKENPULSE_FETCH_MIN_BYTES": "4096", "TOKENPULSE_FETCH_MAX_WAIT_MS": "25"}
    ).with_(data_dir=tmp_path)
    transport = create_faust_app(settings).transport
    assert isinstance(transport, BatchTransport)
    assert (transport.fetch_min_bytes, transport.fetch_max_wait_ms) == (4096, 25)
