"""Fault: ClickHouse unreachable for N s (30 s full, 8 s short) under load.

The worker reaches the session ClickHouse through a TCP proxy; closing the
proxy refuses new connections and resets open ones, as a dead server would.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.harness import (
    MODE,
    Env,
    Load,
    Worker,
    assert_exact,
    expected_for,
    fleet_config,
    group_members,
    put_quota,
    quota_for,
    start_worker,
    wait_finished,
    wait_until,
)
from tests.faults.proxy import clickhouse_proxy, through

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(600)]


def test_clickhouse_unreachable_then_back_exact(
    env: Env, workers: list[Worker], services: Any
) -> None:
    config = fleet_config(seed=19)
    expected = expected_for(config)
    put_quota(env, quota_for(expected))
    with clickhouse_proxy(services.clickhouse_url) as proxy:
        env.worker_clickhouse_url = through(proxy, env.clickhouse_url)
        start_worker(env, "w1", workers)
        load = Load(env, config, MODE.rate_eps / 2).start()
        wait_until(lambda: env.rows() > expected.events // 5, 180, "first rows", workers)
        proxy.close()
        outage_started = env.rows()
        time.sleep(MODE.outage_s)
        during = env.rows()
        proxy.open()
        sent = load.join()
        wait_finished(env, expected, workers, 300)
        # The proxy really cut the worker off: nothing was written during the outage
        # (a batch already past the proxy may still have landed at its start).
        assert during - outage_started <= 500
        assert_exact(env, expected, sent)
        assert workers[0].terminate() == 0


def test_outage_longer_than_the_max_poll_interval_keeps_the_worker_in_its_group(
    env: Env, workers: list[Worker], services: Any
) -> None:
    """A store outage longer than TOKENPULSE_MAX_POLL_INTERVAL_S (4 s here; default 1000 s).

    Fetching is paused during an outage, and Faust asks Kafka for no records
    then: aiokafka took the consumer out of its group after the max poll
    interval, Faust waited for an assignment before asking again, aiokafka
    waited for an ask before rejoining, and the worker consumed nothing ever
    after (alive, exit code none). The worker now stays in its group through
    the outage and meters everything exactly once afterwards.
    """
    config = fleet_config(seed=23)
    expected = expected_for(config)
    put_quota(env, quota_for(expected))
    with clickhouse_proxy(services.clickhouse_url) as proxy:
        env.worker_clickhouse_url = through(proxy, env.clickhouse_url)
        start_worker(env, "w1", workers, TOKENPULSE_MAX_POLL_INTERVAL_S="4")
        load = Load(env, config, MODE.rate_eps / 2).start()
        wait_until(lambda: env.rows() > expected.events // 5, 180, "first rows", workers)
        proxy.close()
        time.sleep(max(MODE.outage_s, 12.0))  # three max poll intervals and more
        members = group_members(env)
        proxy.open()
        assert members == 1, f"the worker left its group during the outage\n{workers[0].tail()}"
        sent = load.join()
        wait_finished(env, expected, workers, 300)
        assert "fetching paused" in workers[0].log.read_text(errors="replace")
        assert_exact(env, expected, sent)
        assert workers[0].terminate() == 0
