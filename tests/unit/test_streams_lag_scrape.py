"""Runtime questions asked before or beside the consumer: never building it, sole ownership.

`app.consumer` builds the consumer on first use, bound to the calling
thread's event loop. The metrics endpoint asks `Runtime.lag()` from its own
HTTP thread; had that built the consumer, the worker's start would then
await a future of another loop and crash (a CI failure of round 15).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

from faust.types import TP

from tokenpulse.streams.app import Runtime, create_faust_app
from tokenpulse.streams.settings import WorkerSettings

ENV = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CLICKHOUSE_URL": "http://127.0.0.1:1/db"}


def _runtime(tmp_path: Path) -> tuple[Runtime, Any]:
    settings = WorkerSettings.from_env(ENV).with_(data_dir=tmp_path)
    app = create_faust_app(settings)
    return Runtime(settings=settings, app=app, sink=cast(Any, None)), app


def test_lag_from_another_thread_before_the_consumer_exists_builds_nothing(
    tmp_path: Path,
) -> None:
    runtime, app = _runtime(tmp_path)
    runtime.processor = cast(Any, object())  # started: the metrics endpoint serves
    got: list[dict[tuple[str, int], int]] = []
    scrape = threading.Thread(target=lambda: got.append(runtime.lag()))
    scrape.start()
    scrape.join(10)
    assert got == [{}]
    assert app._consumer is None  # still the worker's to build, on its own loop


class _Consumer:
    """Faust's consumer as sole_owner() asks it: the topic's partitions, the assignment."""

    def __init__(self, partitions: int | None, assigned: list[TP]) -> None:
        self.partitions = partitions
        self.assigned = assigned

    def topic_partitions(self, topic: str) -> int | None:
        return self.partitions

    def assignment(self) -> set[TP]:
        return set(self.assigned)


def test_sole_owner_is_the_generation_only_while_every_usage_partition_is_assigned(
    tmp_path: Path,
) -> None:
    runtime, app = _runtime(tmp_path)
    usage = runtime.settings.topics.usage
    assert runtime.sole_owner() is None  # no consumer yet: never built by this call
    assert app._consumer is None
    app.consumer_generation_id = 7
    app.rebalancing = False
    every = [TP(usage, p) for p in range(3)]
    cases = [
        (_Consumer(3, [*every, TP("other", 5)]), 7),
        (_Consumer(3, every[:2]), None),  # another worker has partition 2
        (_Consumer(None, every), None),  # the topic's size is not known yet
        (_Consumer(4, every), None),  # a partition was added
    ]
    for consumer, expected in cases:
        app._consumer = cast(Any, consumer)
        assert runtime.sole_owner() == expected
        assert runtime.generation() == 7  # some usage partitions: the generation
    app._consumer = cast(Any, _Consumer(3, [TP("other", 5)]))
    assert runtime.sole_owner() is None
    assert runtime.generation() is None  # no usage partition: nothing to trust
    app._consumer = cast(Any, _Consumer(3, every))
    app.rebalancing = True
    assert runtime.sole_owner() is None  # mid-rebalance: not known to be alone
    assert runtime.generation() is None
