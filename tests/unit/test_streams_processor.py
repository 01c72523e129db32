"""The batch pipeline without a broker: DLQ reasons, dedup, restart, commit order."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenpulse.schemas import UsageEvent, decode_dlq_record, usage
from tokenpulse.schemas.usage import encode_usage_event
from tokenpulse.sinks.base import SinkBatch, UsageSink
from tokenpulse.streams.processor import InRecord, UsageProcessor

T = "usage"


class MemorySink(UsageSink):
    """An exact in-memory store with the sink contract (idempotent per token)."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.tokens: set[str] = set()
        self.fail_next = 0

    async def write(self, batch: SinkBatch) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("store down")
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
        ids = set(event_ids)
        return {
            r.event.event_id
            for r in self.rows
            if r.event.tenant_id == tenant_id and r.event.event_id in ids
        }


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        self.messages.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _proc(sink: MemorySink, sent: Sent, commits: list[Mapping[int, int]]) -> UsageProcessor:
    async def commit(topic: str, offsets: Mapping[int, int]) -> bool:
        commits.append(dict(offsets))
        return True

    return UsageProcessor(
        sink=sink,
        producer=sent,
        committer=commit,
        dlq_topic="dlq",
        keyring=None,
        sink_retry_max_s=0.01,
    )


def _ev(i: int, tenant: str = "acme") -> bytes:
    return encode_usage_event(
        UsageEvent(
            event_id=f"e{i}",
            tenant_id=tenant,
            occurred_at=datetime.now(UTC),
            model="m",
            input_tokens=10,
            output_tokens=1,
        )
    )


def _recs(values: list[bytes | None], start: int = 0, partition: int = 0) -> list[InRecord]:
    return [InRecord(T, partition, start + n, b"acme", v) for n, v in enumerate(values)]


async def test_bad_records_go_to_dlq_and_the_rest_is_written() -> None:
    sink, sent, commits = MemorySink(), Sent(), []
    p = _proc(sink, sent, commits)
    await p.process(_recs([_ev(1), b"{bad", None, b'{"event_id":"x"}', _ev(2)]))
    assert sorted(r.event.event_id for r in sink.rows) == ["e1", "e2"]
    reasons = sorted(decode_dlq_record(v).reason for t, _, v in sent.messages if t == "dlq")
    assert reasons == ["malformed_json", "malformed_json", "missing_field"]
    assert commits == [{0: 5}]


async def test_duplicates_in_batch_across_batches_and_after_restart_count_once() -> None:
    sink, sent, commits = MemorySink(), Sent(), []
    p = _proc(sink, sent, commits)
    await p.process(_recs([_ev(1), _ev(1), _ev(2)]))
    await p.process(_recs([_ev(2), _ev(3)], start=3))
    # a restart: new processor, same durable store; the replay and a late duplicate
    p2 = _proc(sink, sent, commits)
    await p2.process(_recs([_ev(1), _ev(1), _ev(2), _ev(2), _ev(3), _ev(1)]))
    assert sorted(r.event.event_id for r in sink.rows) == ["e1", "e2", "e3"]
    # Offsets 0-4 were durable before the restart: processed again (a write
    # may have landed in part), and each of their events found in the store.
    assert p2.counters.reverified == 5
    assert p2.counters.replayed_skipped == 0
    assert p2.counters.duplicates == 6


async def test_a_batch_of_two_fetches_interleaving_partitions_is_taken_per_partition() -> None:
    sink, sent, commits = MemorySink(), Sent(), []
    p = _proc(sink, sent, commits)
    # Fetch 1: p0 0-1, p1 0-1; fetch 2 (same batch): p0 2, p1 2-3, then a
    # re-fetch of p0 that came in ahead of its order.
    batch = [
        *_recs([_ev(1), _ev(2)], partition=0),
        *_recs([_ev(10), _ev(11)], partition=1),
        *_recs([_ev(4)], start=3, partition=0),
        *_recs([_ev(12), _ev(13)], start=2, partition=1),
        *_recs([_ev(3)], start=2, partition=0),
    ]
    await p.process(batch)
    assert sorted((r.partition, r.offset, r.event.event_id) for r in sink.rows) == [
        (0, 0, "e1"),
        (0, 1, "e2"),
        (0, 2, "e3"),
        (0, 3, "e4"),
        (1, 0, "e10"),
        (1, 1, "e11"),
        (1, 2, "e12"),
        (1, 3, "e13"),
    ]
    assert commits == [{0: 4, 1: 4}]


async def test_commit_only_after_the_write_succeeded() -> None:
    sink, sent, commits = MemorySink(), Sent(), []
    sink.fail_next = 3
    p = _proc(sink, sent, commits)
    await p.process(_recs([_ev(1), _ev(2)]))
    assert p.counters.sink_retries == 3
    assert [r.event.event_id for r in sink.rows] == ["e1", "e2"]
    assert commits == [{0: 2}]


async def test_revoked_partition_is_rebuilt_from_the_store() -> None:
    sink, sent, commits = MemorySink(), Sent(), []
    p = _proc(sink, sent, commits)
    await p.process(_recs([_ev(1)], partition=1))
    await p.on_revoked([(T, 1)])
    # meanwhile another worker wrote offset 1 of partition 1
    other = _proc(sink, sent, [])
    await other.process(_recs([_ev(1), _ev(2)], partition=1))
    await p.process(_recs([_ev(1), _ev(2), _ev(3)], partition=1))
    assert sorted(r.event.event_id for r in sink.rows) == ["e1", "e2", "e3"]


class CrashMidInsert(Exception):
    """kill -9 while the server stored some parts of an insert and not others."""


class MonthPartsSink(MemorySink):
    """Lands a write's rows one month (one ClickHouse part) at a time.

    With `crash_after_parts`, the next write_many stores that many month
    parts, remembers its token as the server would, and "crashes".
    """

    def __init__(self) -> None:
        super().__init__()
        self.crash_after_parts: int | None = None

    async def write_many(self, batches: Sequence[SinkBatch]) -> None:
        if self.crash_after_parts is None:
            await super().write_many(batches)
            return
        rows = [e for b in batches for e in b.events]
        months = sorted({(a.event.occurred_at.year, a.event.occurred_at.month) for a in rows})
        landed = set(months[: self.crash_after_parts])
        self.crash_after_parts = None
        self.tokens.update(b.token for b in batches)
        self.rows += [
            a for a in rows if (a.event.occurred_at.year, a.event.occurred_at.month) in landed
        ]
        raise CrashMidInsert("killed between the parts of one insert")


def _ev_at(i: int, occurred_at: datetime) -> bytes:
    return encode_usage_event(
        UsageEvent(
            event_id=f"e{i}",
            tenant_id="acme",
            occurred_at=occurred_at,
            model="m",
            input_tokens=10,
            output_tokens=1,
        )
    )


async def test_an_insert_that_landed_in_part_is_completed_after_a_restart() -> None:
    # A batch spanning two months is two parts of one insert. A crash after
    # the part holding the highest offset landed leaves "durable up to the
    # highest offset" true of the store, yet rows below it never landed.
    now = datetime.now(UTC)
    last_month = now.replace(day=1) - timedelta(days=1)
    # Offsets 1 and 3 are this month; 0, 2, 4 and 5 (the highest) last month.
    values = [_ev_at(i, now if i in (1, 3) else last_month) for i in range(6)]
    sink, sent, commits = MonthPartsSink(), Sent(), []
    sink.crash_after_parts = 1  # last month's part lands, this month's does not
    p = _proc(sink, sent, commits)
    with pytest.raises(CrashMidInsert):
        await p.process(_recs(values))
    assert commits == []
    assert sorted(r.event.event_id for r in sink.rows) == ["e0", "e2", "e4", "e5"]
    assert max(r.offset for r in sink.rows) == 5
    # Restart: Kafka delivers again from the last commit (offset 0).
    p2 = _proc(sink, sent, commits)
    await p2.process(_recs(values))
    counts = Counter(r.event.event_id for r in sink.rows)
    assert sorted(counts) == [f"e{i}" for i in range(6)]
    assert max(counts.values()) == 1
    assert commits == [{0: 6}]
    assert p2.counters.reverified == 6
    assert p2.counters.duplicates == 4
    # The re-write did not reuse the partly landed insert's token (a server
    # would have skipped it as a retry of that insert).
    assert any("@r" in t for t in sink.tokens)


async def test_envelopes_single_events_and_bad_records_mixed_and_each_envelope_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hot loop tries one event first; an envelope that fails that is
    # handed on with its error and must not be decoded as an event again.

    decoded: list[int] = []
    real = usage._decode_envelope

    def counting(data: bytes) -> Any:
        decoded.append(len(data))
        return real(data)

    monkeypatch.setattr(usage, "_decode_envelope", counting)
    envelope = usage.join_batch([_ev(10), _ev(11), b'{"event_id":"bad"}'])
    too_large = b" " * (usage.MAX_RECORD_BYTES + 1)
    sink, sent, commits = MemorySink(), Sent(), []
    p = _proc(sink, sent, commits)
    await p.process(_recs([_ev(1), envelope, b"[1]", too_large, _ev(2)]))
    assert sorted(r.event.event_id for r in sink.rows) == ["e1", "e10", "e11", "e2"]
    assert decoded == [len(envelope)]
    reasons = sorted(decode_dlq_record(v).reason for t, _, v in sent.messages if t == "dlq")
    assert reasons == ["missing_field", "not_an_object", "record_too_large"]
    assert p.counters.records == 5
    assert p.counters.rejected == 3
