"""A changed quota definition starts a quota check at once (Runtime._definitions_changed)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tests.unit.test_streams_retry import FlakySink
from tokenpulse.streams.app import Runtime
from tokenpulse.streams.settings import WorkerSettings


class CountingProcessor:
    """Counts quota ticks; `during` runs inside the first one."""

    def __init__(self) -> None:
        self.ticks = 0
        self.during: Any = None

    async def tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1 and self.during is not None:
            self.during()
        await asyncio.sleep(0.01)

    async def close(self, wait_s: float) -> bool:
        return True


def _runtime() -> tuple[Runtime, CountingProcessor]:
    settings = WorkerSettings(
        kafka_bootstrap_servers="127.0.0.1:1", clickhouse_url="http://127.0.0.1:1/x"
    )
    runtime = Runtime(settings=settings, app=cast(Any, None), sink=FlakySink())
    processor = CountingProcessor()
    runtime.processor = cast(Any, processor)
    return runtime, processor


async def test_a_burst_of_changes_is_checked_once() -> None:
    runtime, processor = _runtime()
    for _ in range(100):  # a file of definitions
        runtime._definitions_changed()
    await asyncio.sleep(0.3)
    assert processor.ticks == 1


async def test_a_change_during_a_check_is_checked_again() -> None:
    runtime, processor = _runtime()
    processor.during = runtime._definitions_changed
    runtime._definitions_changed()
    await asyncio.sleep(0.3)
    assert processor.ticks == 2


async def test_no_check_starts_once_the_worker_stops() -> None:
    runtime, processor = _runtime()
    runtime._definitions_changed()
    await runtime.stop()
    await asyncio.sleep(0.2)
    assert processor.ticks == 0
