"""The usage agent and the worker's wiring of Faust callbacks.

One agent, concurrency=1: each worker processes its partitions' batches
strictly one after another, so a batch's offsets are committed only after
everything before them in the same partition is durable.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from tokenpulse.sinks.base import UsageSink
from tokenpulse.streams.app import Runtime, create_faust_app
from tokenpulse.streams.processor import InRecord
from tokenpulse.streams.settings import WorkerSettings

log = logging.getLogger("tokenpulse.streams.agents")

TICK_INTERVAL_S = 5.0


def _headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, dict) else raw
    return tuple((str(k), None if v is None else bytes(v)) for k, v in items)


def _record(event: Any) -> InRecord:
    m = event.message
    # The generation stamps the fetch: a record fetched before a revocation is
    # fenced by the processor even if Faust's take buffer still hands it over.
    return InRecord(
        m.topic,
        m.partition,
        m.offset,
        m.key,
        m.value,
        _headers(m.headers),
        getattr(m, "generation_id", None),
    )


def build_worker(
    settings: WorkerSettings, sink: UsageSink | None = None
) -> tuple[faust.App, Runtime]:
    """The Faust app with its agent, and the runtime to start before it runs."""
    app = create_faust_app(settings)
    if sink is None:
        from tokenpulse.sinks.clickhouse import ClickHouseSink

        sink = ClickHouseSink(settings.clickhouse_target())
    runtime = Runtime(settings=settings, app=app, sink=sink)
    # acks=False: Faust never commits this topic on its own (see app.py).
    usage_topic = app.topic(
        settings.topics.usage, key_serializer="raw", value_serializer="raw", acks=False
    )
    within_s = settings.flush_interval_ms / 1000.0

    async def usage(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max_events, within=within_s):
            assert runtime.processor is not None, "Runtime.start() must run before the worker"
            try:
                await runtime.processor.process([_record(e) for e in events])
            except Exception as exc:
                runtime.fatal(exc, "a usage batch")
                # Never return or raise: Faust would restart the agent on the
                # next records and commit past this batch. Wait to be stopped.
                await asyncio.Event().wait()

    app.agent(usage_topic, name="tokenpulse.usage", concurrency=1)(usage)

    async def tick() -> None:
        if runtime.processor is not None and runtime.exit_code is None:
            try:
                await runtime.processor.tick()
            except Exception as exc:
                runtime.fatal(exc, "the quota timer")

    app.timer(TICK_INTERVAL_S)(tick)

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
