"""The usage agent and the worker's wiring of Faust callbacks.

No Faust agent on the usage topic: the BatchConsumer (transport.py) hands
each fetch to a RecordBatcher, whose one task prepares the next batch while
the previous one completes, and completes batches strictly one after
another, so a batch's offsets are committed only after everything before
them in the same partition is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust

from tokenpulse.sinks.base import UsageSink
from tokenpulse.streams.app import Runtime, create_faust_app
from tokenpulse.streams.batcher import RecordBatcher
from tokenpulse.streams.processor import InRecord, Prepared, UsageProcessor
from tokenpulse.streams.settings import WorkerSettings
from tokenpulse.streams.transport import BatchTransport

log = logging.getLogger("tokenpulse.streams.agents")


def build_worker(
    settings: WorkerSettings, sink: UsageSink | None = None
) -> tuple[faust.App, Runtime]:
    """The Faust app with its agent, and the runtime to start before it runs."""
    app = create_faust_app(settings)
    if sink is None:
        from tokenpulse.sinks.clickhouse import ClickHouseSink

        sink = ClickHouseSink(
            settings.clickhouse_target(), insert_max_rows=settings.insert_max_rows
        )
    runtime = Runtime(settings=settings, app=app, sink=sink)
    # acks=False: Faust never commits this topic on its own (see app.py).
    usage_topic = app.topic(
        settings.topics.usage, key_serializer="raw", value_serializer="raw", acks=False
    )
    # Subscribed without a Faust agent: the BatchConsumer hands each fetch of
    # this topic to the batcher, never through Faust's per-record streams.
    app.topics.add(usage_topic)

    def processor() -> UsageProcessor:
        assert runtime.processor is not None, "Runtime.start() must run before the worker"
        return runtime.processor

    async def prepare(records: Sequence[InRecord]) -> Prepared | None:
        return await processor().prepare(records)

    async def complete(group: list[Prepared]) -> None:
        await processor().complete(group)

    batcher: RecordBatcher[Prepared] = RecordBatcher(
        prepare,
        complete,
        max_records=settings.batch_max_events,
        max_bytes=settings.batch_max_bytes,
        flush_interval_s=settings.flush_interval_ms / 1000.0,
        max_group_records=settings.write_max_records,
        max_group_bytes=settings.write_max_bytes,
        min_write_interval_s=settings.write_min_interval_ms / 1000.0,
        max_write_interval_s=settings.write_max_interval_ms / 1000.0,
        records_behind=lambda: sum(runtime.lag().values()),
    )
    transport = app.transport
    assert isinstance(transport, BatchTransport), "create_faust_app installs BatchTransport"
    transport.batch_handlers[settings.topics.usage] = batcher.offer

    async def usage() -> None:
        try:
            await batcher.run()
        except Exception as exc:
            runtime.fatal(exc, "a usage batch")
            # Never return: no later batch may run (its commit would move past
            # this batch's offsets). Stay until the worker is stopped; the
            # full batcher stops the consumer from fetching meanwhile.
            await asyncio.Event().wait()

    app.task(usage)

    async def tick() -> None:
        await runtime.quota_tick()

    # Once at start, then every quota_check_interval_s (and at once after a
    # definition changes: Runtime._definitions_changed). The first run reads
    # every quota's period from the store: the early check has no base before
    # a quota was read, so without it a crossing in the first seconds after a
    # start waited for its write and the durable check (Faust's timer first
    # fires one interval after the start).
    app.task(tick)
    app.timer(settings.quota_check_interval_s)(tick)

    if settings.verify_signatures and settings.keyring_reload_s > 0:

        async def reload_keyring() -> None:
            runtime.reload_keyring()

        app.timer(settings.keyring_reload_s)(reload_keyring)

    async def watch_loop() -> None:
        await runtime.watch_loop()

    app.task(watch_loop)

    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        # Awaited by Faust before the worker rejoins: the new owners of these
        # partitions only start after the in-flight batch and the fence.
        if runtime.processor is not None:
            await runtime.processor.on_revoked(
                [(tp.topic, tp.partition) for tp in revoked], app.consumer_generation_id
            )

    async def on_shutdown(sender: Any, **_: Any) -> None:
        await runtime.stop()

    # mode's Signal types want a `signal=` keyword parameter; ours take **_.
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]
    return app, runtime
