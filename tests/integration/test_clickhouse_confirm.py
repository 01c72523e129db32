"""ClickHouseSink.existing_events on the real engine: exact pairs, bound params, chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks import clickhouse as ch
from tokenpulse.sinks._retry import RetryPolicy
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)
NASTY = ("x' OR 1=1 --\"; DROP TABLE usage_events", "o'brien", "back\\slash", "plain")


@pytest.fixture
async def sink(
    services: Any, clickhouse_client: Any, clickhouse_database: str
) -> AsyncIterator[ClickHouseSink]:
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    async with ClickHouseSink(
        services.clickhouse_url, database=clickhouse_database, retry=FAST
    ) as s:
        yield s


def _ev(tenant: str, event_id: str, occurred_at: datetime) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        tenant_id=tenant,
        occurred_at=occurred_at,
        model="m",
        input_tokens=1,
        output_tokens=1,
    )


async def _write(sink: ClickHouseSink, events: list[UsageEvent]) -> None:
    acc = [AcceptedEvent(e, "t", 0, i, T0) for i, e in enumerate(events)]
    await sink.write(SinkBatch("t", 0, 0, len(acc) - 1, acc))


async def test_one_lookup_answers_exact_pairs_across_quoted_tenants(sink: ClickHouseSink) -> None:
    # Millisecond timestamps with sub-millisecond parts in the candidates: the
    # stored value is truncated, the lookup range must still contain it.
    stored = [
        _ev(t, f"id-'{i}", T0 + timedelta(minutes=i, microseconds=123_456))
        for i, t in enumerate(NASTY)
    ]
    await _write(sink, stored)
    since = T0 - timedelta(days=1)
    cands = [(e.tenant_id, e.event_id, e.occurred_at) for e in stored]
    # The same ids under another tenant are not duplicates; unknown ids neither.
    cands += [(NASTY[(i + 1) % 4], f"id-'{i}", T0 + timedelta(minutes=i)) for i in range(4)]
    cands += [("plain", "nope", T0)]
    found = await sink.existing_events(cands, since)
    assert found == {(e.tenant_id, e.event_id) for e in stored}
    assert await sink.existing_events(cands, T0 + timedelta(days=1)) == set()
    assert await sink.existing_events([], since) == set()


async def test_large_lookups_go_in_bounded_chunks_and_find_everything(
    sink: ClickHouseSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = [
        _ev(f"tenant-{i % 50}", f"{i:08d}-{'q' * 30}'", T0 + timedelta(seconds=i))
        for i in range(3_000)
    ]
    await _write(sink, stored)
    cands = [(e.tenant_id, e.event_id, e.occurred_at) for e in stored]
    cands += [(f"tenant-{i % 50}", f"missing-{i}", T0) for i in range(500)]
    want = {(e.tenant_id, e.event_id) for e in stored}
    # Default limit: ~150 KB of ids in two form-encoded chunks.
    assert await sink.existing_events(cands, T0 - timedelta(days=1)) == want
    # Many small chunks (URL-encoded parameters): the same answer.
    monkeypatch.setattr(ch, "CONFIRM_PARAM_BYTES", 4_000)
    assert await sink.existing_events(cands, T0 - timedelta(days=1)) == want


async def test_recent_event_ids_lists_each_small_partition_and_leaves_big_ones_out(
    sink: ClickHouseSink,
) -> None:
    ingested = T0 + timedelta(hours=1, milliseconds=250)

    async def write(partition: int, ids: list[str], first_offset: int = 0) -> None:
        acc = [
            AcceptedEvent(_ev("acme", e, T0), "usage", partition, first_offset + i, ingested)
            for i, e in enumerate(ids)
        ]
        await sink.write(
            SinkBatch("usage", partition, first_offset, first_offset + len(acc) - 1, acc)
        )

    await write(0, [f"p0-{i}'" for i in range(3)])
    await write(1, [f"p1-{i}" for i in range(7)])
    # Same partition number on another topic: not ours.
    acc = [AcceptedEvent(_ev("acme", "other-topic", T0), "other", 0, 0, ingested)]
    await sink.write(SinkBatch("other", 0, 0, 0, acc))
    since = T0
    got = await sink.recent_event_ids("usage", [0, 1, 2], since, max_ids=5)
    assert sorted(got) == [0, 2]  # partition 1 holds 7 > 5 ids: left out, it starts cold
    assert sorted(e for e, _, _ in got[0]) == ["p0-0'", "p0-1'", "p0-2'"]
    assert {s for _, s, _ in got[0]} == {ingested.timestamp()}  # milliseconds kept
    # Each id's event time, for its time key in the filter.
    assert {o for _, _, o in got[0]} == {T0.timestamp()}
    assert got[2] == []  # never written: warm and empty
    # Ids ingested before `since` are outside the horizon.
    later = await sink.recent_event_ids("usage", [0], ingested + timedelta(seconds=1), 5)
    assert later == {0: []}
    assert await sink.recent_event_ids("usage", [], since, 5) == {}
