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
