"""Fault: the Kafka broker restarts while agents produce and the worker consumes.

The session broker is shared by every test, so this test starts its own
KafkaNode (temporary data dir, free ports) and restarts that one; ClickHouse
is the session's, with a fresh database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
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
    make_env,
    put_quota,
    quota_for,
    start_worker,
    wait_finished,
    wait_until,
)
from tokenpulse.local._process import pick_free_port
from tokenpulse.local.kafka import KafkaNode, KafkaNodeConfig

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(600)]


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaNode]:
    port = pick_free_port()
    controller = pick_free_port()
    while controller == port:
        controller = pick_free_port()
    node = KafkaNode(
        KafkaNodeConfig(data_dir=tmp_path / "kafka", port=port, controller_port=controller)
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_kafka_restart_under_load_exact(
    own_kafka: KafkaNode,
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    unique_name: str,
    tmp_path: Path,
    workers: list[Worker],
) -> None:
    env: Env = make_env(
        bootstrap=own_kafka.bootstrap,
        clickhouse_url=services.clickhouse_url,
        client=clickhouse_client,
        database=clickhouse_database,
        name=unique_name,
        home=tmp_path,
        partitions=6,
    )
    config = fleet_config(seed=17)
    expected = expected_for(config)
    put_quota(env, quota_for(expected))
    start_worker(env, "w1", workers)
    load = Load(env, config, MODE.rate_eps / 2).start()
    wait_until(lambda: env.rows() > expected.events // 5, 180, "first rows", workers)
    # A clean broker restart (SIGTERM, controlled shutdown) while both sides are busy;
    # the SDK buffers and re-sends, the worker reconnects and resumes from its commits.
    own_kafka.stop()
    time.sleep(2)
    own_kafka.start()
    sent = load.join()
    wait_finished(env, expected, workers, 300)
    assert_exact(env, expected, sent, dlq_exact=False)
    assert workers[0].terminate() == 0
