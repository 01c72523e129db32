"""Outage handling without a broker: retriable waits paused, anything else stops the worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from tokenpulse.errors import ServiceUnavailable, SinkBackpressure
from tokenpulse.schemas import UsageEvent
from tokenpulse.schemas.usage import encode_usage_event
from tokenpulse.sinks._retry import SinkWriteError
from tokenpulse.sinks.base import SinkBatch, UsageSink
from tokenpulse.streams.app import EXIT_FATAL, Runtime
from tokenpulse.streams.processor import InRecord, UsageProcessor
from tokenpulse.streams.retry import FlowControl, SinkRetrier, is_retriable
from tokenpulse.streams.settings import WorkerSettings


class FlakySink(UsageSink):
    """Fails the next writes with the given errors, then stores (idempotent per token)."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.rows: list[Any] = []
        self.tokens: set[str] = set()

    async def write(self, batch: SinkBatch) -> None:
        if self.errors:
            raise self.errors.pop(0)
        if batch.token not in self.tokens:
            self.tokens.add(batch.token)
            self.rows += batch.events

    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        return {}

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        return set()


class Flow(FlowControl):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def pause(self) -> None:
        self.log.append("pause")

    def resume(self) -> None:
        self.log.append("resume")


class Sent:
    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _proc(sink: UsageSink, events: list[str]) -> UsageProcessor:
    async def commit(topic: str, offsets: Mapping[int, int]) -> bool:
        events.append(f"commit {dict(offsets)}")
        return True

    return UsageProcessor(
        sink=sink,
        producer=Sent(),
        committer=commit,
        dlq_topic="dlq",
        keyring=None,
        sink_retry_max_s=0.01,
        flow=Flow(events),
    )


def _recs(n: int, start: int = 0) -> list[InRecord]:
    now = datetime.now(UTC)
    return [
        InRecord(
            "usage",
            0,
            start + i,
            b"acme",
            encode_usage_event(
                UsageEvent(
                    event_id=f"e{start + i}",
                    tenant_id="acme",
                    occurred_at=now,
                    model="m",
                    input_tokens=10,
                    output_tokens=1,
                )
            ),
        )
        for i in range(n)
    ]


async def test_outage_pauses_fetching_retries_and_commits_only_after_the_write() -> None:
    sink = FlakySink(
        ServiceUnavailable("ClickHouse down"),
        SinkBackpressure("full", retry_after_s=0.01),
        ConnectionRefusedError("refused"),
    )
    events: list[str] = []
    p = _proc(sink, events)
    await p.process(_recs(3))
    assert events == ["pause", "resume", "commit {0: 3}"]
    assert p.counters.sink_retries == 3
    assert len(sink.rows) == 3
    await p.process(_recs(2, start=3))  # healthy again: no pause, next commit
    assert events[3:] == ["commit {0: 5}"]


async def test_non_retriable_error_propagates_uncommitted_and_blocks_later_batches() -> None:
    sink = FlakySink(SinkWriteError("table usage_events does not exist"))
    events: list[str] = []
    p = _proc(sink, events)
    with pytest.raises(SinkWriteError):
        await p.process(_recs(3))
    assert events == []  # nothing committed, nothing paused
    # A later batch must not commit past the failed one, even though the sink works now.
    with pytest.raises(RuntimeError, match="restart the worker"):
        await p.process(_recs(2, start=3))
    assert events == []
    assert sink.rows == []


async def test_a_bug_in_the_sink_is_not_retried() -> None:
    sink = FlakySink(KeyError("oops"))
    p = _proc(sink, [])
    with pytest.raises(KeyError):
        await p.process(_recs(1))
    assert p.counters.sink_retries == 0


def test_retriable_classification() -> None:
    assert is_retriable(ServiceUnavailable("x"))
    assert is_retriable(SinkBackpressure("x", retry_after_s=1))
    assert is_retriable(ConnectionResetError())
    assert is_retriable(TimeoutError())
    assert not is_retriable(SinkWriteError("x"))
    assert not is_retriable(ValueError("x"))


async def test_backpressure_waits_at_least_retry_after() -> None:
    retrier = SinkRetrier(max_backoff_s=0.001, initial_backoff_s=0.001)
    assert retrier._delay_s(0, SinkBackpressure("x", retry_after_s=0.5)) >= 0.5
    assert retrier._delay_s(40, ServiceUnavailable("x")) <= 0.001


def test_fatal_sets_exit_code_logs_and_stops_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    settings = WorkerSettings(
        kafka_bootstrap_servers="127.0.0.1:1", clickhouse_url="http://127.0.0.1:1/x"
    )
    runtime = Runtime(settings=settings, app=cast(Any, None), sink=FlakySink())
    stops: list[int | None] = []
    runtime.on_fatal = lambda: stops.append(runtime.exit_code)
    with caplog.at_level(logging.CRITICAL, logger="tokenpulse.streams.app"):
        runtime.fatal(SinkWriteError("no table"), "a usage batch")
        runtime.fatal(RuntimeError("again"), "a usage batch")
    assert runtime.exit_code == EXIT_FATAL
    assert stops == [EXIT_FATAL]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert "SinkWriteError" in critical[0].getMessage()
    assert f"exiting with code {EXIT_FATAL}" in critical[0].getMessage()


def test_failure_during_a_clean_stop_is_not_fatal() -> None:
    settings = WorkerSettings(
        kafka_bootstrap_servers="127.0.0.1:1", clickhouse_url="http://127.0.0.1:1/x"
    )
    runtime = Runtime(settings=settings, app=cast(Any, None), sink=FlakySink())
    stops: list[int | None] = []
    runtime.on_fatal = lambda: stops.append(runtime.exit_code)
    runtime.stopping = True  # the sink closed under a batch during SIGTERM handling
    runtime.fatal(RuntimeError("sink closed"), "a usage batch")
    assert runtime.exit_code is None
    assert stops == []
