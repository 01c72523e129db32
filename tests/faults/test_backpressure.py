"""Fault: the sink cannot keep up (tiny batches into a slow ClickHouse).

TOKENPULSE_BATCH_MAX_EVENTS=10 and TOKENPULSE_FLUSH_INTERVAL_MS=10 make every
write tiny, and a proxy that holds each request back makes every write slow,
so the worker's buffer is always full and consumption is held back by the
sink (lag grows in Kafka, not in memory). Nothing may be lost or doubled.
"""

from __future__ import annotations

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
    group_lag,
    put_quota,
    quota_for,
    start_worker,
    wait_finished,
)
from tests.faults.proxy import clickhouse_proxy, through

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(600)]


def test_full_sink_buffer_backpressure_exact(
    env: Env, workers: list[Worker], services: Any
) -> None:
    config = fleet_config(1000 if MODE.name == "short" else 3000, seed=23)
    expected = expected_for(config)
    put_quota(env, quota_for(expected))
    with clickhouse_proxy(services.clickhouse_url, delay_s=0.01) as proxy:
        env.worker_clickhouse_url = through(proxy, env.clickhouse_url)
        start_worker(
            env,
            "w1",
            workers,
            TOKENPULSE_BATCH_MAX_EVENTS="10",
            TOKENPULSE_FLUSH_INTERVAL_MS="10",
        )
        sent = Load(env, config, None).start().join()
        # The producer is done long before the sink could have kept up: the
        # backlog sits in Kafka, uncommitted, while the worker works through it.
        lag_when_sent = group_lag(env)
        assert lag_when_sent > 0
        wait_finished(env, expected, workers, 400)
        assert_exact(env, expected, sent)
        assert workers[0].terminate() == 0
