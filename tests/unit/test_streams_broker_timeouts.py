"""Consumer-group liveness settings: environment, Faust arguments, refused values."""

from __future__ import annotations

import pytest

from tokenpulse.errors import ConfigError
from tokenpulse.streams.settings import WorkerSettings

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "CLICKHOUSE_URL": "http://127.0.0.1:8123/"}


def test_defaults_ride_out_a_store_outage_without_eviction() -> None:
    # 30 s: shorter sessions evicted a worker stalled by a ClickHouse outage
    # (tests/faults/test_clickhouse_outage.py); 10 s stays one variable away.
    s = WorkerSettings.from_env(BASE)
    assert s.broker_timeouts() == {
        "broker_session_timeout": 30.0,
        "broker_heartbeat_interval": 3.0,
        "broker_request_timeout": 90.0,
    }


def test_environment_overrides_and_the_request_timeout_follows_a_long_session() -> None:
    env = {**BASE, "TOKENPULSE_SESSION_TIMEOUT_S": "120", "TOKENPULSE_HEARTBEAT_INTERVAL_S": "10"}
    s = WorkerSettings.from_env(env)
    assert s.session_timeout_s == 120.0
    assert s.broker_timeouts()["broker_request_timeout"] == 120.0


@pytest.mark.parametrize(
    ("session", "heartbeat", "setting"),
    [
        ("5", "1", "TOKENPULSE_SESSION_TIMEOUT_S"),  # below the broker's 6 s minimum
        ("2000", "3", "TOKENPULSE_SESSION_TIMEOUT_S"),  # above its 30 min maximum
        ("10", "4", "TOKENPULSE_HEARTBEAT_INTERVAL_S"),  # more than a third of the session
        ("10", "0", "TOKENPULSE_HEARTBEAT_INTERVAL_S"),
    ],
)
def test_values_the_group_protocol_rejects_are_refused_with_the_setting_named(
    session: str, heartbeat: str, setting: str
) -> None:
    env = {
        **BASE,
        "TOKENPULSE_SESSION_TIMEOUT_S": session,
        "TOKENPULSE_HEARTBEAT_INTERVAL_S": heartbeat,
    }
    with pytest.raises(ConfigError, match=setting) as info:
        WorkerSettings.from_env(env)
    assert info.value.details["setting"] == setting


def test_with_validates_too() -> None:
    s = WorkerSettings.from_env(BASE)
    with pytest.raises(ConfigError, match="TOKENPULSE_HEARTBEAT_INTERVAL_S"):
        s.with_(session_timeout_s=6.0, heartbeat_interval_s=3.0)


def test_max_poll_interval_default_override_and_refusal() -> None:
    assert WorkerSettings.from_env(BASE).max_poll_interval_s == 1000.0
    env = {**BASE, "TOKENPULSE_MAX_POLL_INTERVAL_S": "4"}
    assert WorkerSettings.from_env(env).max_poll_interval_s == 4.0
    with pytest.raises(ConfigError, match="TOKENPULSE_MAX_POLL_INTERVAL_S") as err:
        WorkerSettings.from_env({**BASE, "TOKENPULSE_MAX_POLL_INTERVAL_S": "0"})
    assert err.value.details["setting"] == "TOKENPULSE_MAX_POLL_INTERVAL_S"
