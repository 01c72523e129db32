"""Fault: the group grows from 1 to 3 workers and shrinks back to 1 under load."""

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
    group_members,
    put_quota,
    quota_for,
    start_worker,
    wait_finished,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(600)]


def test_rebalance_one_to_three_and_back_exact(env: Env, workers: list[Worker]) -> None:
    config = fleet_config(MODE.events * 2, seed=13)
    expected = expected_for(config)
    put_quota(env, quota_for(expected))
    start_worker(env, "a", workers)
    # Slower pacing than the other faults: the load must outlast two rebalances.
    load = Load(env, config, MODE.rate_eps / 4).start()
    wait_until(lambda: env.rows() > expected.events // 10, 180, "first rows", workers)
    workers.append(Worker(env, "b"))
    workers.append(Worker(env, "c"))
    wait_until(lambda: group_members(env) == 3, 180, "three members in the group", workers)
    at_three = env.rows()
    wait_until(lambda: env.rows() > at_three, 180, "progress with three workers", workers)
    assert workers[1].terminate() == 0
    assert workers[2].terminate() == 0
    sent = load.join()
    wait_finished(env, expected, workers, 240)
    assert_exact(env, expected, sent)
    assert workers[0].terminate() == 0
