"""Shared fixtures: the real services for integration tests, unique names.

Where the services come from, in order:
1. KAFKA_BOOTSTRAP_SERVERS / CLICKHOUSE_URL, when set (a running stack);
2. testcontainers with the official images, when a Docker daemon answers;
3. the local stack (real Kafka from Maven Central jars, the real ClickHouse
   engine behind the embedded HTTP endpoint), started in a temporary home.
If none can be had, every integration test fails loudly: never a skip.
"""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    clickhouse_url: str  # without a database path: tests pick their own database
    origin: str


def _docker_answers() -> bool:
    """Whether a Docker daemon answers (for testcontainers); False without one."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    # The docker client leaks its socket when the daemon is absent; collect it
    # here, with its ResourceWarning ignored, so no test inherits the warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # type: ignore[import-untyped]

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()
    return True


def _strip_database(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/"))


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    env_ch = os.environ.get("CLICKHOUSE_URL")
    if env_kafka and env_ch:
        yield Services(env_kafka, _strip_database(env_ch), "environment")
        return
    if not (env_kafka or env_ch) and _docker_answers():
        from testcontainers.clickhouse import ClickHouseContainer  # type: ignore[import-untyped]
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer().with_kraft() as kafka, ClickHouseContainer() as ch:
            url = f"http://{ch.username}:{ch.password}@{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}/"
            yield Services(kafka.get_bootstrap_server(), url, "testcontainers")
        return
    from tokenpulse.errors import TokenpulseError
    from tokenpulse.local.stack import LocalStack

    home: Path = tmp_path_factory.mktemp("tokenpulse-home")
    stack = LocalStack.for_tests(home)
    try:
        stack.up()
    except TokenpulseError as exc:
        pytest.fail(f"integration services unavailable: {exc.message}", pytrace=False)
    try:
        yield Services(
            env_kafka or stack.kafka_bootstrap,
            _strip_database(env_ch) if env_ch else stack.clickhouse_url,
            "local stack",
        )
    finally:
        stack.down()


@pytest.fixture
def kafka_bootstrap(services: Services) -> str:
    return services.kafka_bootstrap


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clickhouse_client(services: Services) -> Iterator[Any]:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=services.clickhouse_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def clickhouse_database(clickhouse_client: Any, unique_name: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    clickhouse_client.command(f"CREATE DATABASE {unique_name}")
    try:
        yield unique_name
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {unique_name}")
