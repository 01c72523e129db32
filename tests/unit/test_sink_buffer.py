"""SinkBuffer: per-partition batching by size and age, offset order, backpressure."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime

import pytest

from tokenpulse.errors import ServiceUnavailable, SinkBackpressure
from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch, UsageSink
from tokenpulse.sinks.buffer import OffsetOrderError, SinkBuffer

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _acc(partition: int, offset: int, topic: str = "u") -> AcceptedEvent:
    ev = UsageEvent(
        event_id=f"e{partition}-{offset}",
        tenant_id="acme",
        occurred_at=T0,
        model="m",
        input_tokens=1,
        output_tokens=2,
    )
    return AcceptedEvent(event=ev, topic=topic, partition=partition, offset=offset, ingested_at=T0)


class _RecordingSink(UsageSink):
    def __init__(self, fail_times: int = 0) -> None:
        self.written: list[SinkBatch] = []
        self.fail_times = fail_times

    async def write(self, batch: SinkBatch) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ServiceUnavailable("down")
        self.written.append(batch)

    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        return {}

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        return set()


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


async def test_full_batches_are_sealed_at_max_rows_and_written_in_offset_order() -> None:
    buf = SinkBuffer(max_rows=3, max_age_ms=10_000, max_pending_rows=100, clock=_Clock())
    for off in range(7):
        buf.add(_acc(0, off))
    sink = _RecordingSink()
    written = await buf.flush(sink)
    assert [b.token for b in written] == ["u/0/0-2", "u/0/3-5"]
    assert buf.pending_rows == 1
    written = await buf.flush(sink, force=True)
    assert [b.token for b in written] == ["u/0/6-6"]
    assert buf.pending_rows == 0


async def test_age_seals_open_batches_and_skipped_offsets_extend_the_range() -> None:
    clock = _Clock()
    buf = SinkBuffer(max_rows=100, max_age_ms=1000, max_pending_rows=1000, clock=clock)
    buf.add(_acc(1, 10))
    buf.skip("u", 1, 11)  # a rejected record: its offset is covered by the batch
    buf.add(_acc(2, 5))
    sink = _RecordingSink()
    assert await buf.flush(sink) == []
    assert buf.next_due_in_s() == pytest.approx(1.0)
    clock.now_s += 1.0
    written = await buf.flush(sink)
    assert sorted(b.token for b in written) == ["u/1/10-11", "u/2/5-5"]


async def test_failed_write_keeps_the_batch_for_the_next_flush_with_the_same_token() -> None:
    buf = SinkBuffer(max_rows=2, max_age_ms=0, max_pending_rows=10, clock=_Clock())
    for off in range(4):
        buf.add(_acc(0, off))
    sink = _RecordingSink(fail_times=1)
    with pytest.raises(ServiceUnavailable):
        await buf.flush(sink)
    assert buf.pending_rows == 4
    written = await buf.flush(sink)
    assert [b.token for b in written] == ["u/0/0-1", "u/0/2-3"]
    assert buf.pending_rows == 0


def test_backpressure_when_pending_rows_reach_the_bound() -> None:
    buf = SinkBuffer(max_rows=2, max_age_ms=500, max_pending_rows=4, clock=_Clock())
    for off in range(4):
        buf.add(_acc(0, off))
    with pytest.raises(SinkBackpressure) as info:
        buf.add(_acc(0, 4))
    assert info.value.retry_after_s == pytest.approx(0.5)
    assert info.value.retriable


def test_offsets_must_increase_per_partition() -> None:
    buf = SinkBuffer(clock=_Clock())
    buf.add(_acc(0, 5))
    buf.add(_acc(1, 1))  # another partition is independent
    with pytest.raises(OffsetOrderError, match="offset order"):
        buf.add(_acc(0, 5))
