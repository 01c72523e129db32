"""ClickHouseSink on the real engine: idempotent batches and groups, exact values, offsets,
lookups, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import clickhouse_connect
import msgspec
import pytest

from tokenpulse.errors import ConfigError, ServiceUnavailable
from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks._retry import RetryPolicy, SinkWriteError
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch
from tokenpulse.sinks.buffer import SinkBuffer
from tokenpulse.sinks.clickhouse import ClickHouseSink, insert_chunks
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


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NASTY = 'q\'uote "dq" back\\slash\nnew\rline\ttab \x00nul \u2028 日本語 😀'
EDGE_TIMES = (
    datetime(2026, 11, 3, 10, 0, 0, 123_999, tzinfo=UTC),  # microseconds: truncated to .123
    datetime(2100, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC),
    datetime(2299, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1900, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC),
)
EDGE_GPU = (None, 0.0, 0.1, 1 / 3, 1.7976931348623157e308, 5e-324, 123456.789e-7)


def _edge_batches() -> list[SinkBatch]:
    """3 partitions x 2 batches of events with every edge value the columns must keep."""
    batches = []
    n = 0
    for part in range(3):
        for first in (0, 7):
            accepted = []
            for offset in range(first, first + 7):
                attrs = (
                    {}
                    if n % 3 == 0
                    else {NASTY: NASTY, "": "", "k": str(n)}
                    if n % 3 == 1
                    else {"ключ": "значение"}
                )
                ev = UsageEvent(
                    event_id=f"edge-{n}-{NASTY}"[:128],
                    tenant_id=("acme", "globex/research")[n % 2],
                    occurred_at=EDGE_TIMES[n % len(EDGE_TIMES)],
                    model=("m'1", "frontier \\ large")[n % 2],
                    input_tokens=(0, 10**9, n)[n % 3],
                    output_tokens=(10**9, 0, n)[n % 3],
                    cached_input_tokens=(0, 10**9, 0)[n % 3],
                    reasoning_tokens=(10**9, 0, 0)[n % 3],
                    agent_id=None if n % 2 else f"agent {NASTY}"[:128],
                    region=None if n % 4 == 0 else "eu-west",
                    provider=None if n % 3 == 0 else "openai",
                    operation=None if n % 5 == 0 else "chat\ncompletion",
                    gpu_seconds=EDGE_GPU[n % len(EDGE_GPU)],
                    attributes=attrs,
                )
                ingested = T0 + timedelta(milliseconds=n * 1_001)
                accepted.append(
                    AcceptedEvent(
                        ev, "tokenpulse.usage.v1", part, offset, ingested, late=n % 2 == 1
                    )
                )
                n += 1
            batches.append(
                SinkBatch("tokenpulse.usage.v1", part, first, first + 6, tuple(accepted))
            )
    return batches


def _ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)  # exact floor, like the column


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "lz4"])
async def test_write_many_over_three_partitions_lands_every_value_exactly(
    sink: ClickHouseSink, clickhouse_client: Any, migrated: str, compressed: bool
) -> None:
    # The local server gets plain bodies; a remote one gets lz4: both exact.
    sink.compress_inserts = compressed
    batches = _edge_batches()
    await sink.write_many(batches)
    rows = clickhouse_client.query(
        "SELECT event_id, tenant_id, toUnixTimestamp64Milli(occurred_at), model, input_tokens,"
        " output_tokens, cached_input_tokens, reasoning_tokens, agent_id, region, provider,"
        " operation, gpu_seconds, attributes, schema_version, kafka_topic, kafka_partition,"
        f" kafka_offset, toUnixTimestamp64Milli(ingested_at), late FROM {migrated}.usage_events"
        " ORDER BY kafka_partition, kafka_offset"
    ).result_rows
    expected = [
        (
            a.event.event_id,
            a.event.tenant_id,
            _ms(a.event.occurred_at),
            a.event.model,
            a.event.input_tokens,
            a.event.output_tokens,
            a.event.cached_input_tokens,
            a.event.reasoning_tokens,
            a.event.agent_id or "",
            a.event.region or "",
            a.event.provider or "",
            a.event.operation or "",
            a.event.gpu_seconds,
            a.event.attributes,
            1,
            a.topic,
            a.partition,
            a.offset,
            _ms(a.ingested_at),
            a.late,
        )
        for b in batches
        for a in b.events
    ]
    assert len(rows) == len(expected) == 42
    for got, want in zip(rows, expected, strict=True):
        assert tuple(got) == want
    # The minute aggregate saw the same rows once.
    _, inp, minute_inp = _totals(clickhouse_client, migrated)
    assert minute_inp == inp == sum(w[4] for w in expected)
    offsets = await sink.last_offsets("tokenpulse.usage.v1", [0, 1, 2])
    assert offsets == {0: 13, 1: 13, 2: 13}


def _rounds(events: list[UsageEvent], partitions: int, batch_rows: int) -> list[list[SinkBatch]]:
    """Batches grouped as a worker's processing rounds: the k-th batch of every partition."""
    by_part: dict[int, list[SinkBatch]] = {}
    for b in as_batches(events, partitions=partitions, batch_rows=batch_rows):
        by_part.setdefault(b.partition, []).append(b)
    depth = max(len(v) for v in by_part.values())
    return [[v[k] for v in by_part.values() if k < len(v)] for k in range(depth)]


def _minute_events(client: Any, db: str) -> int:
    sql = f"SELECT sum(events) FROM {db}.usage_by_minute_totals"
    return int(client.query(sql).result_rows[0][0])


async def test_re_sending_the_same_write_many_changes_nothing(
    sink: ClickHouseSink, clickhouse_client: Any, migrated: str
) -> None:
    events = _events(2_400, prefix="many")
    rounds = _rounds(events, partitions=3, batch_rows=200)
    assert len(rounds) == 4
    assert all(len(r) == 3 for r in rounds)
    # No background merge may fold the parts counted below.
    clickhouse_client.command(f"SYSTEM STOP MERGES {migrated}.usage_events")
    for group in rounds:
        await sink.write_many(group)
    first = _totals(clickhouse_client, migrated)
    for group in rounds:  # every group again, as after lost acknowledgements
        await sink.write_many(group)
    await sink.write_many(rounds[1])
    assert _totals(clickhouse_client, migrated) == first
    count, inp, minute_inp = first
    assert count == 2_400
    assert minute_inp == inp == sum(e.input_tokens for e in events)
    assert _minute_events(clickhouse_client, migrated) == 2_400
    # One part per month touched per insert, not one per batch.
    parts = clickhouse_client.query(
        "SELECT count() FROM system.parts WHERE database = {db:String}"
        " AND table = 'usage_events' AND active",
        parameters={"db": migrated},
    ).result_rows[0][0]
    assert parts == len(rounds)


def _active_parts(client: Any, db: str) -> int:
    return int(
        client.query(
            "SELECT count() FROM system.parts WHERE database = {db:String}"
            " AND table = 'usage_events' AND active",
            parameters={"db": db},
        ).result_rows[0][0]
    )


async def test_a_write_over_the_row_limit_lands_as_parallel_inserts_exactly_once(
    services: Any, clickhouse_client: Any, migrated: str
) -> None:
    events = _events(2_400, prefix="split")
    group = [b for r in _rounds(events, partitions=4, batch_rows=200) for b in r]
    chunks = insert_chunks(group, 1_000)
    assert [sum(len(b.events) for b in c) for c in chunks] == [800, 800, 800]
    clickhouse_client.command(f"SYSTEM STOP MERGES {migrated}.usage_events")
    url = services.clickhouse_url
    async with (
        ClickHouseSink(url, database=migrated, retry=FAST, insert_max_rows=0) as whole,
        ClickHouseSink(url, database=migrated, retry=FAST, insert_max_rows=1_000) as split,
    ):
        # A crash after one of the write's inserts landed: the re-sent write
        # is cut the same way, and that insert's token makes it a no-op.
        await whole.write_many(chunks[1])
        await split.write_many(group)
        first = _totals(clickhouse_client, migrated)
        await split.write_many(group)  # a lost acknowledgement: all of it again
        assert _totals(clickhouse_client, migrated) == first
    count, inp, minute_inp = first
    assert count == 2_400
    assert minute_inp == inp == sum(e.input_tokens for e in events)
    assert _minute_events(clickhouse_client, migrated) == 2_400
    assert _active_parts(clickhouse_client, migrated) == len(chunks)  # one a run, none twice


async def test_a_failed_run_of_a_split_write_raises_after_the_others_landed(
    services: Any, clickhouse_client: Any, migrated: str
) -> None:
    events = _events(1_200, prefix="split-bad")
    group = list(as_batches(events, partitions=3, batch_rows=200))
    bad = group[-1]
    first, *rest = bad.events
    # A value the encoder refuses (beyond UInt64), in the last run only.
    bad_event = msgspec.structs.replace(first.event, input_tokens=2**64)
    group[-1] = SinkBatch(
        bad.topic, bad.partition, bad.first_offset, bad.last_offset,
        (first._replace(event=bad_event), *rest),
    )  # fmt: skip
    chunks = insert_chunks(group, 400)
    assert len(chunks) == 3
    async with ClickHouseSink(
        services.clickhouse_url, database=migrated, retry=FAST, insert_max_rows=400
    ) as split:
        with pytest.raises(SinkWriteError, match="cannot encode"):
            await split.write_many(group)
    # The other runs were awaited, not abandoned: their rows are all there.
    landed = sum(len(b.events) for c in chunks[:-1] for b in c)
    assert _totals(clickhouse_client, migrated)[0] == landed == 800


async def test_a_different_grouping_lands_the_same_rows(
    sink: ClickHouseSink, clickhouse_client: Any, migrated: str
) -> None:
    events = _events(1_800, prefix="regroup")
    rounds = _rounds(events, partitions=3, batch_rows=150)
    flat = [b for group in rounds for b in group]
    # The first round as one group, then a crash: recovery asks which offsets
    # are durable and writes only the rest, grouped differently (two
    # partitions' batches at a time, plus the empty batch of skipped offsets).
    await sink.write_many(rounds[0])
    durable = await sink.last_offsets("tokenpulse.usage.v1", [0, 1, 2])
    rest = [b for b in flat if b.last_offset > durable.get(b.partition, -1)]
    assert len(rest) == len(flat) - 3
    rest.sort(key=lambda b: (b.first_offset, b.partition))
    rest.append(SinkBatch("tokenpulse.usage.v1", 0, 600, 604, ()))
    for i in range(0, len(rest), 2):
        await sink.write_many(rest[i : i + 2])
    await sink.write_many(rest[-2:])  # the last group again: a no-op
    count, inp, minute_inp = _totals(clickhouse_client, migrated)
    assert count == 1_800
    assert minute_inp == inp == sum(e.input_tokens for e in events)
    assert _minute_events(clickhouse_client, migrated) == 1_800
    assert await sink.last_offsets("tokenpulse.usage.v1", [0, 1, 2]) == {0: 599, 1: 599, 2: 599}


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
    many = _events(900, prefix="ack-many")
    group = list(as_batches(many, partitions=3, batch_rows=1_000))
    try:
        async with ClickHouseSink(url, database=migrated, retry=FAST) as s:
            proxy.armed = True
            await s.write(batch)  # first attempt lands, its ack is lost, the retry dedups
            assert proxy.dropped == 1
            proxy.armed = True
            await s.write_many(group)  # the same for one insert of three partitions
            assert proxy.dropped == 2
    finally:
        await proxy.stop()
    count, inp, minute_inp = _totals(clickhouse_client, migrated)
    assert count == 1_900
    assert minute_inp == inp == sum(e.input_tokens for e in [*events, *many])


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
    # The sink refuses to start on a database that was never migrated...
    with pytest.raises(ConfigError, match=r"has no usage_events, .*: run `tokenpulse db migrate`"):
        async with ClickHouseSink(url, database=clickhouse_database, retry=FAST):
            pass
    # ... and a table gone while it runs is a clear non-retriable write error.
    client = clickhouse_connect.get_client(dsn=url)
    migrate(client, RenderOptions(database=clickhouse_database))
    async with ClickHouseSink(url, database=clickhouse_database, retry=FAST) as s:
        client.command(f"DROP TABLE {clickhouse_database}.usage_events")
        with pytest.raises(SinkWriteError, match="db migrate"):
            await s.write(batch)


async def test_a_dropped_view_stops_the_start_naming_it(
    services: Any, clickhouse_database: str
) -> None:
    # Quota checks read usage_by_minute: without its view they would count
    # less than usage_events, silently.
    url = services.clickhouse_url
    client = clickhouse_connect.get_client(dsn=url)
    migrate(client, RenderOptions(database=clickhouse_database))
    client.command(f"DROP VIEW {clickhouse_database}.usage_by_minute_mv")
    with pytest.raises(ConfigError, match=r"lacks usage_by_minute_mv .*A dropped view") as err:
        async with ClickHouseSink(url, database=clickhouse_database, retry=FAST):
            pass
    assert err.value.details["missing"] == ["usage_by_minute_mv"]
