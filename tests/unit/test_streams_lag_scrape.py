"""A metrics scrape during the worker's start never builds Faust's consumer.

`app.consumer` builds the consumer on first use, bound to the calling
thread's event loop. The metrics endpoint asks `Runtime.lag()` from its own
HTTP thread; had that built the consumer, the worker's start would then
await a future of another loop and crash (a CI failure of round 15).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

from tokenpulse.streams.app import Runtime, create_faust_app
from tokenpulse.streams.settings import WorkerSettings

ENV = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CLICKHOUSE_URL": "http://127.0.0.1:1/db"}


def test_lag_from_another_thread_before_the_consumer_exists_builds_nothing(
    tmp_path: Path,
) -> None:
    settings = WorkerSettings.from_env(ENV).with_(data_dir=tmp_path)
    app = create_faust_app(settings)
    runtime = Runtime(settings=settings, app=app, sink=cast(Any, None))
    runtime.processor = cast(Any, object())  # started: the metrics endpoint serves
    got: list[dict[tuple[str, int], int]] = []
    scrape = threading.Thread(target=lambda: got.append(runtime.lag()))
    scrape.start()
    scrape.join(10)
    assert got == [{}]
    assert app._consumer is None  # still the worker's to build, on its own loop
