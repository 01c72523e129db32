"""Batched dedup confirmation: one lookup per batch slice, exact per (tenant, event_id)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenpulse.schemas import UsageEvent
from tokenpulse.schemas.usage import encode_usage_event
from tokenpulse.sinks.base import SinkBatch, UsageSink
from tokenpulse.sinks.clickhouse import _quoted_len, confirmation_chunks, occurred_bounds
from tokenpulse.streams.processor import InRecord, UsageProcessor

T = "usage"
T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
# Tenant ids are restricted to [A-Za-z0-9._:/-] by the schema; event ids are
# free text, so quotes go there (the sink's integration test binds quoted tenants).
TENANTS = ("acme", "acme/research", "a.b:c", "x-y_z", "plain")
QUOTED = ("x' OR 1=1 --", 'say "hi"', "back\\slash", "o'brien", "plain")


class CountingSink(UsageSink):
    """In-memory store that counts lookups; answers through the base class default."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.tokens: set[str] = set()
        self.batched_calls: list[int] = []
        self.per_tenant_calls = 0

    async def write(self, batch: SinkBatch) -> None:
        if batch.token not in self.tokens:
            self.tokens.add(batch.token)
            self.rows += batch.events

    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        out: dict[int, int] = {}
        for r in self.rows:
            if r.topic == topic and r.partition in partitions:
                out[r.partition] = max(out.get(r.partition, -1), r.offset)
        return out

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        self.per_tenant_calls += 1
        ids = set(event_ids)
        return {
            r.event.event_id
            for r in self.rows
            if r.event.tenant_id == tenant_id and r.event.event_id in ids
        }

    async def existing_events(
        self, candidates: Collection[tuple[str, str, datetime]], since: datetime
    ) -> set[tuple[str, str]]:
        self.batched_calls.append(len(candidates))
        return await super().existing_events(candidates, since)


class Sent:
    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _proc(sink: UsageSink) -> UsageProcessor:
    async def commit(topic: str, offsets: Mapping[int, int]) -> bool:
        return True

    return UsageProcessor(
        sink=sink, producer=Sent(), committer=commit, dlq_topic="dlq", keyring=None
    )


def _rec(
    offset: int, tenant: str, event_id: str, partition: int = 0, occurred_s: int | None = None
) -> InRecord:
    """An event at `offset`, occurred `occurred_s` (default: `offset`) seconds after T0.

    A redelivery repeats its original's occurred_at (`occurred_s` = the
    original's offset): the dedup filters look an id up by its event time.
    """
    ev = UsageEvent(
        event_id=event_id,
        tenant_id=tenant,
        occurred_at=T0 + timedelta(seconds=offset if occurred_s is None else occurred_s),
        model="m",
        input_tokens=1,
        output_tokens=1,
    )
    return InRecord(T, partition, offset, tenant.encode(), encode_usage_event(ev))


async def test_a_cold_restart_confirms_each_slice_in_one_lookup_and_stays_exact() -> None:
    sink = CountingSink()
    first = [_rec(i, TENANTS[i % 5], f"e{i}{QUOTED[i % 5]}") for i in range(50)]
    await _proc(sink).process(first)
    # A new worker (cold filter) gets duplicates from every tenant, a new id,
    # then the same event ids under other tenants (not duplicates).
    p = _proc(sink)
    dups = [_rec(50 + i, TENANTS[i % 5], f"e{i}{QUOTED[i % 5]}") for i in range(50)]
    other_tenant = [_rec(101 + i, TENANTS[(i + 1) % 5], f"e{i}{QUOTED[i % 5]}") for i in range(5)]
    await p.process([*dups, _rec(100, "acme", "new'")])
    # (Within one batch ids are deduplicated by event_id alone, hence its own batch.)
    await p.process(other_tenant)
    assert sink.batched_calls == [50, 51, 5]  # one lookup per batch slice, all tenants
    assert p.counters.confirmations == 2
    assert p.counters.duplicates == 50
    keys = sorted((r.event.tenant_id, r.event.event_id) for r in sink.rows)
    assert len(keys) == len(set(keys)) == 56
    assert ("acme", "new'") in keys


async def test_all_partition_slices_of_a_batch_are_confirmed_in_one_lookup() -> None:
    sink = CountingSink()
    recs = [_rec(i, TENANTS[i % 5], f"p{i % 3}-{i}", partition=i % 3) for i in range(30)]
    p = _proc(sink)
    await p.process(recs)
    assert sink.batched_calls == [30]
    assert p.counters.confirmations == 1
    assert p.counters.accepted == 30


def test_chunks_keep_every_bound_array_under_the_limit_and_lose_nothing() -> None:
    cands = [(QUOTED[i % 5] * (1 + i % 7), f"id-'{i}\\", T0) for i in range(2_000)]
    limit = 2_048
    chunks = list(confirmation_chunks(cands, limit))
    assert len(chunks) > 1
    assert [c for chunk in chunks for c in chunk] == cands
    for chunk in chunks:
        assert sum(_quoted_len(t) for t in {t for t, _, _ in chunk}) <= limit
        assert sum(_quoted_len(e) for _, e, _ in chunk) <= limit


def test_a_candidate_larger_than_the_limit_still_gets_its_own_chunk() -> None:
    big = ("t" * 100, "e" * 100, T0)
    assert list(confirmation_chunks([big, big], 10)) == [[big], [big]]


def test_occurred_bounds_cover_millisecond_truncation_and_the_calendar_edges() -> None:
    lo, hi = occurred_bounds([T0 + timedelta(microseconds=999_999), T0 + timedelta(hours=1)])
    assert lo == T0 - timedelta(seconds=1)
    assert hi == T0 + timedelta(hours=1, seconds=1)
    edge_lo, edge_hi = occurred_bounds(
        [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)]
    )
    assert edge_lo == datetime(1, 1, 1, tzinfo=UTC)
    assert edge_hi == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


async def test_the_filter_remembers_a_batchs_distinct_ids_at_its_lookup() -> None:
    # Remembered in `prepare`, before the write: the duplicates the store
    # confirms as well (it holds them), each distinct id once.
    sink = CountingSink()
    await _proc(sink).process([_rec(i, "acme", f"old{i}") for i in range(0, 40, 2)])
    p = _proc(sink)  # cold: every id is confirmed
    mixed = [_rec(40 + i, "acme", f"old{i}" if i % 2 == 0 else f"new{i}") for i in range(40)]
    again = _rec(80, "acme", "new1")  # a repeat inside the batch: looked up once
    prepared = await p.prepare([*mixed, again])
    assert prepared is not None
    bloom = p.partitions.parts[(T, 0)].dedup.bloom
    assert bloom.filter_count == 1
    assert bloom.id_count == 40
    now = p.partitions.clock()
    assert all(bloom.might_contain_many([f"new{i}" for i in range(1, 40, 2)], now))
    assert all(bloom.might_contain_many([f"old{i}" for i in range(0, 40, 2)], now))
    await p.complete([prepared])
    assert p.counters.duplicates == 21
    assert sorted(r.event.event_id for r in sink.rows) == sorted(
        [f"old{i}" for i in range(0, 40, 2)] + [f"new{i}" for i in range(1, 40, 2)]
    )
