"""Fixtures of the fault tests: a fresh Env on the session services, worker cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Env, Worker, make_env


@pytest.fixture
def env(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    unique_name: str,
    tmp_path: Path,
) -> Env:
    return make_env(
        bootstrap=services.kafka_bootstrap,
        clickhouse_url=services.clickhouse_url,
        client=clickhouse_client,
        database=clickhouse_database,
        name=unique_name,
        home=tmp_path,
        partitions=6,
    )


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()
