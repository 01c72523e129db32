"""ClickHouseSink on the real engine: idempotent batches, offsets, lookups, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenpulse.errors import ServiceUnavailable
from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks._retry import RetryPolicy, SinkWriteError
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch
from tokenpulse.sinks.buffer import SinkBuffer
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.sinks.synthetic import as_batches, random_events

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def migrated(clickhouse_client: Any, clickhouse_database: str) -> str:
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    return clickhouse_database


@pytest.fixture
async def sink(services: Any, migrated: str) -> AsyncIterator[ClickHouseSink]:
    async with ClickHouseSink(services.clickhouse_url, database=migrated, retry=FAST) as s:
        yield s


def _totals(client: Any, db: str) -> tuple[int, int, int]:
    sql = f"SELECT count(), sum(input_tokens) FROM {db}.usage_events"
    events, inp = client.query(sql).result_rows[0]
    minute = client.query(f"SELECT sum(input_tokens) FROM {db}.usage_by_minute").result_rows[0][0]
    return int(events), int(inp), int(minute)


def _events(n: int, prefix: str = "ev") -> list[UsageEvent]:
    return random_events(
        n,
        start=T0,
        span=timedelta(hours=2),
        tenants=("acme", "globex"),
        models=("m1", "m2"),
        prefix=prefix,
    )


async def test_writing_the_same_batches_twice_counts_each_event_once(
    sink: ClickHouseSink, clickhouse_client: Any, migrated: str
) -> None:
    events = _events(3_000)
    batches = list(as_batches(events, partitions=3, batch_rows=400))
    for batch in batches:
        await sink.write(batch)
    for batch in batches:  # a full replay after a crash
        await sink.write(batch)
    count, inp, minute_inp = _totals(clickhouse_client, migrated)
    assert count == 3_000
    assert inp == sum(e.input_tokens for e in events)
    assert minute_inp == inp  # the aggregate deduplicated the replay too
    by_minute = clickhouse_client.query(
        f"SELECT sum(events) FROM {migrated}.usage_by_minute_totals"
    ).result_rows[0][0]
    assert by_minute == 3_000
    offsets = await sink.last_offsets("tokenpulse.usage.v1", [0, 1, 2, 7])
    assert offsets == {0: 999, 1: 999, 2: 999}


class _AckDroppingProxy:
    """TCP proxy that, when armed, lets a request through but drops its response."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, back: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if back and self.armed:
                        # The server has executed the request; the client never hears so.
                        self.armed = False
                        self.dropped += 1
                        writer.transport.abort()
                        up_w.close()
                        return
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_lost_acknowledgement_is_retried_without_duplicates(
    services: Any, clickhouse_client: Any, migrated: str
) -> None:
    from urllib.parse import urlsplit

    proxy = _AckDroppingProxy(int(urlsplit(services.clickhouse_url).port or 8123))
    port = await proxy.start()
    url = f"http://default:@127.0.0.1:{port}/"
    events = _events(1_000, prefix="ack")
    (batch,) = as_batches(events, partitions=1, batch_rows=1_000)
    try:
        async with ClickHouseSink(url, database=migrated, retry=FAST) as s:
            proxy.armed = True
            await s.write(batch)  # first attempt lands, its ack is lost, the retry dedups
            assert proxy.dropped == 1
    finally:
        await proxy.stop()
    count, inp, minute_inp = _totals(clickhouse_client, migrated)
    assert count == 1_000
    assert minute_inp == inp == sum(e.input_tokens for e in events)


async def test_tenant_ids_and_event_ids_are_bound_parameters(sink: ClickHouseSink) -> None:
    nasty = "x' OR 1=1 --\"; DROP TABLE usage_events"
    evs = [
        UsageEvent(
            event_id=f"id-'{i}",
            tenant_id=nasty,
            occurred_at=T0,
            model="m",
            input_tokens=1,
            output_tokens=1,
        )
        for i in range(3)
    ]
    acc = [AcceptedEvent(e, "t", 0, i, T0) for i, e in enumerate(evs)]
    await sink.write(SinkBatch("t", 0, 0, 2, acc))
    found = await sink.existing_event_ids(
        nasty, ["id-'0", "id-'2", "nope"], since=T0 - timedelta(days=1)
    )
    assert found == {"id-'0", "id-'2"}
    assert await sink.existing_event_ids("x", ["id-'0"], since=T0) == set()
    assert await sink.existing_event_ids(nasty, ["id-'0"], since=T0 + timedelta(days=1)) == set()
    assert await sink.count_events(nasty) == 3
    assert await sink.count_events() == 3


async def test_buffer_feeds_the_sink_in_offset_order(
    sink: ClickHouseSink, clickhouse_client: Any, migrated: str
) -> None:
    buf = SinkBuffer(max_rows=250, max_age_ms=60_000, max_pending_rows=2_000)
    events = _events(1_000, prefix="buf")
    for batch in as_batches(events, partitions=2, batch_rows=10_000):
        for acc in batch.events:
            buf.add(acc)
    written = await buf.flush(sink, force=True)
    assert len(written) == 4
    assert _totals(clickhouse_client, migrated)[0] == 1_000
    assert await sink.last_offsets("tokenpulse.usage.v1", [0, 1]) == {0: 499, 1: 499}


async def test_unreachable_server_raises_service_unavailable_after_bounded_retries() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sink = ClickHouseSink(f"http://default:@127.0.0.1:{port}/x", retry=FAST)
    with pytest.raises(ServiceUnavailable, match="after 4 attempts"):
        await sink.start()


async def test_missing_table_is_a_clear_non_retriable_error(
    services: Any, clickhouse_database: str
) -> None:
    events = _events(5, prefix="nt")
    (batch,) = as_batches(events, partitions=1)
    url = services.clickhouse_url
    async with ClickHouseSink(url, database=clickhouse_database, retry=FAST) as s:
        with pytest.raises(SinkWriteError, match="db migrate"):
            await s.write(batch)
