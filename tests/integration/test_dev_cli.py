"""`tokenpulse dev up|status|down` end to end, as a user runs it (subprocesses).

One temporary TOKENPULSE_HOME on free ports (env overrides); the jar cache is
the user's, so only the first run on a machine downloads. Order matters: the
module walks through up, status, refusals, down and a warm up again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tokenpulse.config import Settings, read_connection_file
from tokenpulse.errors import LocalStackError
from tokenpulse.local._kafka_wire import broker_ready
from tokenpulse.local._process import pick_free_port, port_is_free
from tokenpulse.local.clickhouse import ClickHouseNode, ClickHouseNodeConfig, ping

pytestmark = pytest.mark.integration


def _env(home: Path, kafka: int, controller: int, clickhouse: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL")
    }
    env.update(
        TOKENPULSE_HOME=str(home),
        TOKENPULSE_KAFKA_PORT=str(kafka),
        TOKENPULSE_KAFKA_CONTROLLER_PORT=str(controller),
        TOKENPULSE_CLICKHOUSE_PORT=str(clickhouse),
    )
    return env


def _dev(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenpulse", "dev", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


class Stack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.ports = (pick_free_port(), pick_free_port(), pick_free_port())
        self.env = _env(home, *self.ports)
        self.first_up: subprocess.CompletedProcess[str] | None = None

    def status(self) -> dict[str, dict[str, object]]:
        done = _dev(self.env, "status", "--format", "json")
        assert done.returncode == 0, done.stderr
        result: dict[str, dict[str, object]] = json.loads(done.stdout)
        return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("dev-home"))
    s.first_up = _dev(s.env, "up")
    try:
        yield s
    finally:
        _dev(s.env, "down")


def test_up_writes_the_connection_file(stack: Stack) -> None:
    assert stack.first_up is not None
    assert stack.first_up.returncode == 0, stack.first_up.stderr
    kafka, _, clickhouse = stack.ports
    expected = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "CLICKHOUSE_URL": f"http://default:@127.0.0.1:{clickhouse}/tokenpulse",
    }
    assert read_connection_file(stack.home / "dev" / "connection.env") == expected
    assert stack.first_up.stdout.splitlines() == [f"export {k}={v}" for k, v in expected.items()]
    assert "local stack up in" in stack.first_up.stderr
    settings = Settings.from_env(stack.env)
    assert settings.kafka_bootstrap_servers == expected["KAFKA_BOOTSTRAP_SERVERS"]


def test_both_services_answer(stack: Stack) -> None:
    kafka, _, clickhouse = stack.ports
    assert broker_ready("127.0.0.1", kafka)
    assert ping("127.0.0.1", clickhouse)
    status = stack.status()
    assert status["kafka"]["running"] is True
    assert status["clickhouse"]["running"] is True


def test_status_env_prints_export_lines(stack: Stack) -> None:
    done = _dev(stack.env, "status", "--format", "env")
    assert done.returncode == 0
    assert (
        done.stdout.splitlines()[0] == f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{stack.ports[0]}"
    )
    assert done.stdout.splitlines()[1].startswith(
        "export CLICKHOUSE_URL=http://default:@127.0.0.1:"
    )


def test_up_again_is_a_no_op(stack: Stack) -> None:
    before = stack.status()
    done = _dev(stack.env, "up")
    assert done.returncode == 0, done.stderr
    after = stack.status()
    assert after["kafka"]["pid"] == before["kafka"]["pid"]
    assert after["clickhouse"]["pid"] == before["clickhouse"]["pid"]


def test_a_taken_port_is_refused_in_one_line(stack: Stack, tmp_path: Path) -> None:
    other = _env(tmp_path / "other", stack.ports[0], pick_free_port(), pick_free_port())
    done = _dev(other, "up")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "already taken" in done.stderr
    assert "TOKENPULSE_KAFKA_PORT" in done.stderr
    assert not (tmp_path / "other" / "kafka" / "kafka.pid").exists()


def test_clickhouse_data_dir_owned_by_another_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "ch"
    data_dir.mkdir()
    owner_port = pick_free_port()
    owner = subprocess.Popen(
        [
            *(sys.executable, "-m", "tokenpulse.local.clickhouse_http"),
            *("--data-dir", str(data_dir), "--host", "127.0.0.1"),
            *("--port", str(owner_port), "--user", "default"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ping("127.0.0.1", owner_port) and time.monotonic() < deadline:
            assert owner.poll() is None, "the owning endpoint exited"
            time.sleep(0.2)
        # A database makes the engine write metadata/: the dir is then
        # recognisably ClickHouse's, so the only objection left is its owner.
        _clickhouse(f"http://default:@127.0.0.1:{owner_port}/").command("CREATE DATABASE owned")
        node = ClickHouseNode(ClickHouseNodeConfig(data_dir, port=pick_free_port()))
        with pytest.raises(LocalStackError, match="owned by another process"):
            node.start()
        assert not node.is_running()
        assert ping("127.0.0.1", owner_port)  # the owner is untouched
    finally:
        owner.terminate()
        owner.wait(timeout=30)


async def _topics(bootstrap: str, create: str | None = None) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if create:
            await admin.create_topics([NewTopic(create, 1, 1)])
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _clickhouse(url: str) -> Any:
    import clickhouse_connect

    return clickhouse_connect.get_client(dsn=url)


def test_down_stops_and_up_keeps_the_data(stack: Stack, unique_name: str) -> None:
    bootstrap = f"127.0.0.1:{stack.ports[0]}"
    ch_url = f"http://default:@127.0.0.1:{stack.ports[2]}/"
    assert unique_name in asyncio.run(_topics(bootstrap, create=unique_name))
    _clickhouse(ch_url).command(f"CREATE DATABASE {unique_name}")
    done = _dev(stack.env, "down")
    assert done.returncode == 0, done.stderr
    status = stack.status()
    assert status["kafka"]["running"] is False
    assert status["clickhouse"]["running"] is False
    assert not (stack.home / "dev" / "connection.env").exists()
    assert all(port_is_free("127.0.0.1", p) for p in stack.ports)
    done = _dev(stack.env, "up")  # warm: jars cached, storage formatted
    assert done.returncode == 0, done.stderr
    assert unique_name in asyncio.run(_topics(bootstrap))
    databases = _clickhouse(ch_url).query("SELECT name FROM system.databases").result_rows
    assert (unique_name,) in databases
