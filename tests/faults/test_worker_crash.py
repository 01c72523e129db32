"""Fault: kill -9 of the worker in the middle of a loaded run, then a restart."""

from __future__ import annotations

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

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(600)]


def test_kill9_mid_batch_loses_nothing_and_counts_nothing_twice(
    env: Env, workers: list[Worker]
) -> None:
    config = fleet_config()
    expected = expected_for(config)
    put_quota(env, quota_for(expected))
    start_worker(env, "w1", workers)
    load = Load(env, config, MODE.rate_eps).start()
    wait_until(lambda: env.rows() > expected.events // 3, 180, "a third of the rows", workers)
    # Batches are in flight: the producer is still sending and the worker writing.
    workers[0].kill9()
    workers.append(Worker(env, "w2"))
    sent = load.join()
    wait_finished(env, expected, workers, 240)
    assert_exact(env, expected, sent)
    assert workers[1].terminate() == 0
