"""A partition is written by at most one worker: revocation and stop fence the old owner.

Deterministic reproductions of the double count seen in the 1 -> 3 -> 1
rebalance fault test: records Faust fetched before a revocation still sit in
its take buffer and reach the old owner's processor after the new owner
already read `last_offsets` and confirmed its ids; and a stop or revocation
waiting on a store that is down.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from tests.unit.test_streams_processor import MemorySink, Sent, _ev
from tokenpulse.schemas import QuotaDefinition
from tokenpulse.schemas.quota import quota_state_key
from tokenpulse.sinks.base import SinkBatch, UsageSink
from tokenpulse.streams.processor import InRecord, UsageProcessor
from tokenpulse.streams.quotas import QuotaEngine
from tokenpulse.streams.retry import RetryAbandoned

T = "usage"


class GatedSink(UsageSink):
    """The shared store, seen by one worker whose writes wait for `gate`."""

    def __init__(self, inner: MemorySink) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = asyncio.Event()  # set once a write waits at the gate

    async def write(self, batch: SinkBatch) -> None:
        self.writing.set()
        await self.gate.wait()
        await self.inner.write(batch)

    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        return await self.inner.last_offsets(topic, partitions)

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        return await self.inner.existing_event_ids(tenant_id, event_ids, since)


class DownSink(MemorySink):
    """A store that refuses every write (connection errors: retriable)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0
        self.failed_twice = asyncio.Event()

    async def write(self, batch: SinkBatch) -> None:
        self.attempts += 1
        if self.attempts >= 2:
            self.failed_twice.set()
        raise ConnectionError("store down")


def _worker(
    sink: UsageSink, generation: list[int], commits: list[Mapping[int, int]]
) -> UsageProcessor:
    async def commit(topic: str, offsets: Mapping[int, int]) -> bool:
        commits.append(dict(offsets))
        return True

    p = UsageProcessor(
        sink=sink,
        producer=Sent(),
        committer=commit,
        dlq_topic="dlq",
        keyring=None,
        sink_retry_max_s=0.01,
    )
    p.current_generation = lambda: generation[0]
    return p


def _recs(ids: range, generation: int, partition: int = 0) -> list[InRecord]:
    return [InRecord(T, partition, i, b"acme", _ev(i), (), generation) for i in ids]


def _counts(sink: MemorySink) -> Counter[str]:
    return Counter(r.event.event_id for r in sink.rows)


async def test_records_buffered_before_a_revocation_are_never_written_by_the_old_owner() -> None:
    store = MemorySink()
    gen_a, gen_b = [1], [2]
    a = _worker(store, gen_a, [])
    await a.process(_recs(range(0, 2), generation=1))
    # Rebalance: A's partition 0 goes to B. Faust's take buffer of A still
    # holds offsets 2..4, fetched in generation 1.
    await a.on_revoked([(T, 0)], generation=1)
    b_sink = GatedSink(store)
    b_sink.gate.clear()
    b = _worker(b_sink, gen_b, [])
    # B resumes after durable offset 1, confirms ids 2..5 as new, and writes.
    b_batch = asyncio.create_task(b.process(_recs(range(2, 6), generation=2)))
    await b_sink.writing.wait()
    # A's next batch is its stale buffer; A's own generation has not moved yet
    # (its assignment callback comes later).
    await a.process(_recs(range(2, 5), generation=1))
    b_sink.gate.set()
    await b_batch
    counts = _counts(store)
    assert sorted(counts) == [f"e{i}" for i in range(6)]
    assert max(counts.values()) == 1, f"counted twice: {counts}"
    assert a.counters.fenced_dropped == 3


async def test_records_of_an_older_generation_are_dropped_after_reassignment() -> None:
    store, commits = MemorySink(), list[Mapping[int, int]]()
    gen = [1]
    a = _worker(store, gen, commits)
    await a.process(_recs(range(0, 2), generation=1))
    gen[0] = 3  # reassigned without our revocation hook having seen gen 1 fenced
    # A stale offset 5 (gen 1) must not be written: Faust seeks to the commit
    # and hands offsets 2.. over again, in generation 3.
    await a.process(_recs(range(5, 6), generation=1))
    assert sorted(_counts(store)) == ["e0", "e1"]
    await a.process(_recs(range(2, 6), generation=3))
    assert sorted(_counts(store)) == [f"e{i}" for i in range(6)]
    assert commits == [{0: 2}, {0: 6}]


async def test_stop_waits_for_the_in_flight_write_and_drops_later_batches() -> None:
    store, commits = MemorySink(), list[Mapping[int, int]]()
    sink = GatedSink(store)
    sink.gate.clear()
    p = _worker(sink, [1], commits)
    batch = asyncio.create_task(p.process(_recs(range(0, 3), generation=1)))
    await sink.writing.wait()
    closing = asyncio.create_task(p.close(wait_s=60.0))
    await asyncio.sleep(0)
    assert not closing.done()  # still writing: the worker must not leave the group yet
    sink.gate.set()
    await batch
    assert await closing is True
    await p.process(_recs(range(3, 6), generation=1))  # the take buffer, after close()
    assert sorted(_counts(store)) == ["e0", "e1", "e2"]
    assert commits == [{0: 3}]
    assert p.counters.fenced_dropped == 3


async def test_revocation_while_the_store_is_down_abandons_the_batch_between_attempts() -> None:
    store, commits = DownSink(), list[Mapping[int, int]]()
    p = _worker(store, [1], commits)
    batch = asyncio.create_task(p.process(_recs(range(0, 3), generation=1)))
    await store.failed_twice.wait()
    # Before the fix the revocation waited for a write retried forever, so
    # the group evicted the worker and its write landed after the new owner's.
    await asyncio.wait_for(p.on_revoked([(T, 0)], generation=1), 5.0)
    await asyncio.wait_for(batch, 5.0)
    assert store.rows == []
    assert commits == []
    assert p.failed is None  # not a failure: the next owner replays the batch


async def test_a_duplicate_of_the_batch_being_written_is_dropped_by_the_next_prepare() -> None:
    # Pipelining: batch 2 is prepared while batch 1 is still being written.
    # Its duplicate of a batch-1 id is neither in the store nor remembered by
    # the filter yet; pending_ids must catch it.
    store, commits = MemorySink(), list[Mapping[int, int]]()
    sink = GatedSink(store)
    sink.gate.clear()
    p = _worker(sink, [1], commits)
    first = await p.prepare(_recs(range(0, 3), generation=1))
    assert first is not None
    writing = asyncio.create_task(p.complete([first]))
    await sink.writing.wait()
    dup = InRecord(T, 0, 3, b"acme", _ev(1), (), 1)  # event e1 again, at offset 3
    second = await p.prepare([dup, *_recs(range(4, 5), generation=1)])
    assert second is not None
    sink.gate.set()
    await writing
    await p.complete([second])
    counts = _counts(store)
    assert sorted(counts) == ["e0", "e1", "e2", "e4"]
    assert max(counts.values()) == 1
    assert p.counters.duplicates == 1
    assert commits == [{0: 3}, {0: 5}]


async def test_a_revocation_between_prepare_and_complete_drops_the_prepared_batch() -> None:
    store, commits = MemorySink(), list[Mapping[int, int]]()
    gen = [1]
    p = _worker(store, gen, commits)
    prepared = await p.prepare(_recs(range(0, 3), generation=1))
    assert prepared is not None
    await p.on_revoked([(T, 0)], generation=1)
    gen[0] = 2
    await p.complete([prepared])
    assert store.rows == []
    assert commits == []
    assert p.counters.fenced_dropped == 3
    # Reassigned to us: the same offsets come again and count once; the
    # dropped batch's ids did not linger as "pending" duplicates. The filter
    # remembered them at the dropped batch's lookup: a "maybe seen" that
    # the store does not confirm.
    confirmations = p.counters.confirmations
    await p.process(_recs(range(0, 3), generation=2))
    assert sorted(_counts(store)) == ["e0", "e1", "e2"]
    assert p.counters.duplicates == 0
    assert p.counters.confirmations == confirmations + 1


class CountingSink(MemorySink):
    """Counts write_many calls: a group must be one write."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[list[str]] = []

    async def write_many(self, batches: Sequence[SinkBatch]) -> None:
        self.groups.append([b.token for b in batches])
        await super().write_many(batches)


async def test_a_group_of_prepared_batches_is_one_write_and_one_commit() -> None:
    sink, commits = CountingSink(), list[Mapping[int, int]]()
    p = _worker(sink, [1], commits)
    a = await p.prepare(_recs(range(0, 3), generation=1))
    b = await p.prepare(
        [*_recs(range(3, 5), generation=1), *_recs(range(100, 102), generation=1, partition=1)]
    )
    c = await p.prepare(_recs(range(5, 6), generation=1))
    assert a is not None
    assert b is not None
    assert c is not None
    await p.complete([a, b, c])
    assert sink.groups == [["usage/0/0-2", "usage/0/3-4", "usage/1/100-101", "usage/0/5-5"]]
    assert commits == [{0: 6, 1: 102}]
    assert sorted(_counts(sink)) == ["e0", "e1", "e100", "e101", "e2", "e3", "e4", "e5"]
    assert p.processed_upto(T, 0) == 5
    assert p.processed_upto(T, 1) == 101


async def test_a_stale_batch_of_a_group_is_dropped_and_the_owned_rest_written() -> None:
    sink, commits = CountingSink(), list[Mapping[int, int]]()
    gen = [1]
    p = _worker(sink, gen, commits)
    old = await p.prepare(_recs(range(0, 3), generation=1))
    assert old is not None
    await p.on_revoked([(T, 0)], generation=1)
    gen[0] = 2
    # Reassigned in generation 2: Kafka delivers the same offsets again.
    new = await p.prepare(_recs(range(0, 3), generation=2))
    assert new is not None
    await p.complete([old, new])
    assert sink.groups == [["usage/0/0-2"]]
    assert _counts(sink) == Counter({"e0": 1, "e1": 1, "e2": 1})
    assert commits == [{0: 3}]
    assert p.counters.fenced_dropped == 3


class AbandoningReader:
    """A usage reader whose store is away and whose retry loop was told to give up."""

    async def usage_many(self, requests: Sequence[Any]) -> list[Any]:
        raise RetryAbandoned("usage query abandoned while the store is away (refused)")

    async def usage_by_model_many(self, requests: Sequence[Any]) -> list[Any]:
        raise RetryAbandoned("usage query abandoned while the store is away (refused)")


async def test_a_quota_check_that_gives_way_leaves_the_batch_uncommitted_not_failed() -> None:
    store, commits = MemorySink(), list[Mapping[int, int]]()

    async def commit(topic: str, offsets: Mapping[int, int]) -> bool:
        commits.append(dict(offsets))
        return True

    engine = QuotaEngine(AbandoningReader(), alerts_topic="alerts", state_topic="state")  # type: ignore[arg-type]
    engine.apply_definition(
        quota_state_key("acme", "q"),
        QuotaDefinition(quota_id="q", tenant_id="acme", metric="input", period="day", limit=10**6),
    )
    p = UsageProcessor(
        sink=store, producer=Sent(), committer=commit, dlq_topic="dlq", keyring=None,
        quotas=engine, sink_retry_max_s=0.01,
    )  # fmt: skip
    await p.process(_recs(range(0, 3), generation=None))  # type: ignore[arg-type]
    assert sorted(_counts(store)) == ["e0", "e1", "e2"]  # durable; re-verified on replay
    assert commits == []
    assert p.failed is None
    await p.tick()  # the timer gives way too, and the worker keeps running
    assert p.failed is None
