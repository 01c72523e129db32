"""The worker when ClickHouse goes away, and when the store says no for good.

A small TCP proxy in front of the real ClickHouse endpoint makes the store
unreachable on demand (connections reset, new ones refused by an immediate
RST) while the worker keeps running; afterwards the totals must be exact and
nothing may have been committed during the outage. A database without the
tables makes the sink fail non-retriably: the worker must exit non-zero with
a clear log line instead of idling as a zombie.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.test_worker import (
    Env,
    Worker,
    event,
    produce,
    record,
    wait_until,
)
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.app import EXIT_FATAL
from tokenpulse.streams.settings import TopicNames, WorkerSettings
from tokenpulse.streams.topics import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class CuttableProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` resets and refuses until `restore()`.

    It keeps its listening socket while cut (and answers connects with a
    reset), so the port can never be taken by someone else meanwhile.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.down = False
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            if self.down:
                self.refused += 1
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                for s in (src, dst):
                    if s in self._open:
                        self._open.discard(s)
                        self._reset(s)

    def cut(self) -> None:
        self.down = True
        with self._lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            self._reset(s)

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


@pytest.fixture
def env(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    unique_name: str,
    tmp_path: Path,
) -> Env:
    topics = TopicNames.with_affixes(prefix=f"{unique_name}.")
    settings = WorkerSettings(
        kafka_bootstrap_servers=services.kafka_bootstrap,
        clickhouse_url=services.clickhouse_url + clickhouse_database,
        topics=topics,
        partitions=4,
    )
    asyncio.run(ensure_topics(settings))
    return Env(
        services.kafka_bootstrap,
        services.clickhouse_url,
        clickhouse_database,
        topics,
        f"{unique_name}-group",
        tmp_path,
        clickhouse_client,
    )


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def committed(env: Env) -> int:
    """Sum of the group's committed offsets on the usage topic (= records committed)."""

    async def read() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(env.group)
        finally:
            await admin.close()
        return sum(m.offset for tp, m in offsets.items() if tp.topic == env.topics.usage)

    return asyncio.run(read())


def test_clickhouse_outage_pauses_without_commit_then_totals_exact(
    env: Env, workers: list[Worker]
) -> None:
    migrate(env.client, RenderOptions(database=env.database))
    ch = urlsplit(env.clickhouse_url)
    proxy = CuttableProxy(ch.hostname or "127.0.0.1", ch.port or 8123)
    try:
        via_proxy = urlunsplit(
            ch._replace(
                netloc=ch.netloc.replace(f"{ch.hostname}:{ch.port}", f"127.0.0.1:{proxy.port}")
            )
        )
        worker = Worker(env, "w1", CLICKHOUSE_URL=via_proxy + env.database)
        workers.append(worker)
        first = [event(f"acme/t{i % 3}", i) for i in range(600)]
        produce(env.bootstrap, env.topics.usage, [record(e) for e in first])
        wait_until(lambda: env.totals()[0] == len(first), 120, "first rows", workers)
        wait_until(lambda: committed(env) == len(first), 60, "first commit", workers)

        proxy.cut()
        second = [event(f"beta/t{i % 4}", i) for i in range(2000)]
        records = [record(e) for e in second] + [record(e) for e in second[::10]]
        produce(env.bootstrap, env.topics.usage, records)
        wait_until(lambda: "fetching paused" in worker.tail(), 90, "the pause", workers)
        wait_until(lambda: proxy.refused >= 3, 60, "several retries", workers)
        assert worker.proc.poll() is None, worker.tail()
        assert committed(env) == len(first)  # nothing committed while the store is away

        proxy.restore()
        everything = first + second
        want = (
            len(everything),
            len(everything),
            sum(e.input_tokens for e in everything),
            sum(e.output_tokens for e in everything),
        )
        wait_until(lambda: env.totals() == want, 150, "exact totals after the outage", workers)
        wait_until(lambda: committed(env) == len(first) + len(records), 60, "final commit", workers)
        assert "fetching resumed" in worker.tail()
        assert worker.terminate() == 0
    finally:
        proxy.close()


def test_an_unmigrated_database_stops_the_start_with_a_clear_line(
    env: Env, workers: list[Worker]
) -> None:
    # The database exists but `db migrate` never ran: refused before any record.
    worker = Worker(env, "w1")
    workers.append(worker)
    produce(env.bootstrap, env.topics.usage, [record(event("acme", 1))])
    deadline = time.monotonic() + 120
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    log = worker.log.read_text(errors="replace")
    assert worker.proc.returncode not in (None, 0), log[-4000:]
    assert f"database {env.database} has no usage_events" in log
    assert "run `tokenpulse db migrate` for it before starting the worker" in log
    assert "resuming after durable offset" not in log  # never took a partition


def test_non_retriable_sink_error_exits_nonzero_with_a_clear_line(
    env: Env, workers: list[Worker]
) -> None:
    # usage_events dropped under a running worker: every insert fails with
    # UNKNOWN_TABLE, which no retry can fix.
    migrate(env.client, RenderOptions(database=env.database))
    worker = Worker(env, "w1")
    workers.append(worker)
    produce(env.bootstrap, env.topics.usage, [record(event("acme", 1))])
    wait_until(lambda: committed(env) == 1, 120, "the first record committed", workers)
    env.client.command(f"DROP TABLE {env.database}.usage_events")
    produce(env.bootstrap, env.topics.usage, [record(event("acme", 2))])
    deadline = time.monotonic() + 120
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    log = worker.log.read_text(errors="replace")
    assert worker.proc.returncode == EXIT_FATAL, log[-4000:]
    assert "worker stopping" in log
    assert "SinkWriteError" in log
    assert f"exiting with code {EXIT_FATAL}" in log
    assert committed(env) == 1
