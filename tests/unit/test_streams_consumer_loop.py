"""Where the worker's Kafka consumer runs: on its event loop by default, on Faust's thread if told.

Starting and stopping either needs a broker (the integration tests: every
worker there runs the default, and the rebalance test puts one of each in a
group); here, what the settings build and how a call reaches the consumer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faust
import pytest

from tokenpulse.errors import ConfigError
from tokenpulse.streams.app import create_faust_app
from tokenpulse.streams.settings import WorkerSettings
from tokenpulse.streams.transport import BatchConsumerThread, InLoopConsumerThread

Apps = Callable[[dict[str, str]], faust.App]
ENV = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "CLICKHOUSE_URL": "http://h:8123/db"}


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    """Worker apps built (not started) from the environment, each on a loop of its own."""
    built: list[faust.App] = []

    def build(env: dict[str, str]) -> faust.App:
        settings = WorkerSettings.from_env({**ENV, **env})
        asyncio.set_event_loop(asyncio.new_event_loop())  # Faust takes the current loop
        built.append(create_faust_app(settings.with_(data_dir=tmp_path / str(len(built)))))
        return built[-1]

    yield build
    asyncio.set_event_loop(None)
    for app in built:
        thread = _consumer_thread(app)
        if thread.thread_loop is not app.loop:  # Faust's thread made a loop of its own
            thread.thread_loop.close()
        app.loop.close()


def _consumer_thread(app: faust.App) -> Any:
    # Faust builds the consumer (and its "thread") on first access; nothing connects.
    return app.consumer._thread  # type: ignore[attr-defined]


def test_the_setting_defaults_to_the_event_loop_and_is_refused_when_not_a_boolean() -> None:
    assert WorkerSettings.from_env(ENV).consumer_thread is False
    env = {**ENV, "TOKENPULSE_CONSUMER_THREAD": "true"}
    assert WorkerSettings.from_env(env).consumer_thread is True
    with pytest.raises(ConfigError, match="TOKENPULSE_CONSUMER_THREAD") as err:
        WorkerSettings.from_env({**ENV, "TOKENPULSE_CONSUMER_THREAD": "sometimes"})
    assert err.value.details["setting"] == "TOKENPULSE_CONSUMER_THREAD"


def test_by_default_the_consumer_runs_on_the_apps_own_loop(apps: Apps) -> None:
    app = apps({})
    thread = _consumer_thread(app)
    assert type(thread) is InLoopConsumerThread
    assert thread.thread_loop is app.loop
    assert thread.loop is app.loop  # the aiokafka consumer is created on thread.thread_loop


def test_told_to_the_consumer_gets_fausts_own_thread_and_loop(apps: Apps) -> None:
    app = apps({"TOKENPULSE_CONSUMER_THREAD": "1"})
    thread = _consumer_thread(app)
    assert type(thread) is BatchConsumerThread
    assert thread.thread_loop is not app.loop


def test_a_call_to_the_in_loop_consumer_is_an_await_on_the_callers_thread(apps: Apps) -> None:
    app = apps({})
    thread = _consumer_thread(app)
    caller = threading.get_ident()
    seen: list[tuple[str, int]] = []

    async def coroutine(x: int) -> int:
        seen.append(("coroutine", threading.get_ident()))
        return x + 1

    def plain(*, x: int) -> int:  # Faust passes aiokafka's subscribe, not a coroutine
        seen.append(("plain", threading.get_ident()))
        return x * 2

    async def calls() -> tuple[int, int]:
        return await thread.call_thread(coroutine, 1), await thread.call_thread(plain, x=4)

    # Faust's "thread" was never started: a call that went through its
    # method queue would wait forever, so a hang here is the failure.
    got = app.loop.run_until_complete(asyncio.wait_for(calls(), 5))
    assert got == (2, 8)
    assert seen == [("coroutine", caller), ("plain", caller)]


def test_an_error_of_the_call_reaches_the_caller(apps: Apps) -> None:
    app = apps({})
    thread = _consumer_thread(app)

    async def fails() -> None:
        raise RuntimeError("broker said no")

    with pytest.raises(RuntimeError, match="broker said no"):
        app.loop.run_until_complete(asyncio.wait_for(thread.call_thread(fails), 5))
