"""`tokenpulse reconcile` on real Kafka and the real ClickHouse engine.

The rows are written with the real ClickHouseSink and the DLQ records with
the real codec at the offsets the broker acknowledged, so the clean run must
report nothing; then differences are planted on purpose and each must be
named with its tenant, partition and event id.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tokenpulse.cli.reconcile import main as reconcile_main
from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import (
    UsageEvent,
    decode_usage_record,
    dlq_record_for,
    encode_batch,
    encode_dlq_record,
    encode_usage_event,
)
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.settings import TopicNames, WorkerSettings
from tokenpulse.streams.topics import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TENANTS = ("acme", "globex", "initech")


@dataclass
class Stack:
    bootstrap: str
    clickhouse_url: str
    database: str
    topics: TopicNames
    client: Any
    started: datetime
    written: list[AcceptedEvent] = field(default_factory=list)

    def run(self, *extra: str) -> tuple[int, dict[str, Any]]:
        """Run the CLI the way an operator does; returns (exit code, parsed JSON)."""
        return _run_cli(self, *extra)


_CAPTURED: dict[str, Any] = {}


def _run_cli(stack: Stack, *extra: str) -> tuple[int, dict[str, Any]]:
    capsys = _CAPTURED["capsys"]
    mp = _CAPTURED["monkeypatch"]
    mp.setenv("KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap)
    mp.setenv("CLICKHOUSE_URL", stack.clickhouse_url + stack.database)
    mp.delenv("TOKENPULSE_KEYRING_FILE", raising=False)
    since = (stack.started - timedelta(minutes=1)).isoformat()
    capsys.readouterr()
    rc = reconcile_main(
        ["--since", since, "--topic", stack.topics.usage, "--format", "json", *extra]
    )
    captured = capsys.readouterr()
    assert captured.out, f"reconcile printed no report (exit {rc}): {captured.err}"
    return rc, json.loads(captured.out)


@pytest.fixture
def stack(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Stack:
    _CAPTURED.update(capsys=capsys, monkeypatch=monkeypatch)
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    topics = TopicNames.with_affixes(prefix=f"{unique_name}.")
    settings = WorkerSettings(
        kafka_bootstrap_servers=services.kafka_bootstrap,
        clickhouse_url=services.clickhouse_url + clickhouse_database,
        topics=topics,
        partitions=3,
    )
    asyncio.run(ensure_topics(settings))
    return Stack(
        services.kafka_bootstrap,
        services.clickhouse_url,
        clickhouse_database,
        topics,
        clickhouse_client,
        datetime.now(UTC),
    )


def _event(tenant: str, i: int, event_id: str | None = None) -> UsageEvent:
    return UsageEvent(
        event_id=event_id or f"{tenant}-{i}-{uuid.uuid4().hex[:8]}",
        tenant_id=tenant,
        occurred_at=datetime.now(UTC),
        model="m-large",
        input_tokens=100 + i,
        output_tokens=10 + i % 5,
        cached_input_tokens=i % 3,
    )


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    key: bytes
    value: bytes


async def _send(stack: Stack, records: list[tuple[bytes, bytes]]) -> list[Sent]:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        out = []
        for key, value in records:
            meta = await producer.send_and_wait(stack.topics.usage, value, key=key)
            out.append(Sent(meta.partition, meta.offset, key, value))
        return out
    finally:
        await producer.stop()


async def _deliver(stack: Stack, sent: list[Sent]) -> None:
    """What a correct worker does with `sent`: rows for first occurrences, DLQ for the rest."""
    seen = {(a.event.tenant_id, a.event.event_id) for a in stack.written}
    now = datetime.now(UTC)
    by_partition: dict[int, list[AcceptedEvent]] = {}
    dlq: list[tuple[bytes, bytes]] = []
    for s in sent:
        for verdict in decode_usage_record(s.value):
            if isinstance(verdict, InvalidRecord):
                rec = dlq_record_for(
                    verdict,
                    s.value,
                    topic=stack.topics.usage,
                    partition=s.partition,
                    offset=s.offset,
                )
                dlq.append((s.key, encode_dlq_record(rec)))
                continue
            key = (verdict.tenant_id, verdict.event_id)
            if key in seen:
                continue
            seen.add(key)
            acc = AcceptedEvent(verdict, stack.topics.usage, s.partition, s.offset, now)
            by_partition.setdefault(s.partition, []).append(acc)
    async with ClickHouseSink(stack.clickhouse_url, database=stack.database) as sink:
        for partition, accepted in by_partition.items():
            first = min(a.offset for a in accepted)
            last = max(a.offset for a in accepted)
            await sink.write(SinkBatch(stack.topics.usage, partition, first, last, accepted))
            stack.written.extend(accepted)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in dlq:
            await producer.send_and_wait(stack.topics.dlq, value, key=key)
    finally:
        await producer.stop()


def _mixed_records() -> list[tuple[bytes, bytes]]:
    records: list[tuple[bytes, bytes]] = []
    for i in range(30):
        tenant = TENANTS[i % 3]
        ev = _event(tenant, i)
        records.append((tenant.encode(), encode_usage_event(ev)))
        if i % 7 == 0:  # a redelivery of the same event
            records.append((tenant.encode(), encode_usage_event(ev)))
    records += [
        (b"acme", b"{not json"),
        (b"globex", b'{"event_id":"x","tenant_id":"globex"}'),
        (
            b"initech",
            encode_usage_event(_event("initech", 99)).replace(
                b'"input_tokens":199', b'"input_tokens":-1'
            ),
        ),
        # A batch envelope with one bad event among two good ones.
        (
            b"acme",
            encode_batch([_event("acme", 40), _event("acme", 41)]).replace(
                b'"output_tokens":11', b'"output_tokens":"11"'
            ),
        ),
    ]
    return records


async def _insert_rows(stack: Stack, rows: list[AcceptedEvent]) -> None:
    async with ClickHouseSink(stack.clickhouse_url, database=stack.database) as sink:
        for n, acc in enumerate(rows, start=1):
            # A range (so a token) the sink never used: the engine must not dedup the plant.
            await sink.write(
                SinkBatch(acc.topic, acc.partition, acc.offset, acc.offset + 10**6 * n, [acc])
            )


def test_clean_run_reports_nothing_then_every_planted_difference_is_named(stack: Stack) -> None:
    sent = asyncio.run(_send(stack, _mixed_records()))
    asyncio.run(_deliver(stack, sent))
    rc, report = stack.run()
    assert rc == 0, report["differences"]
    assert report["ok"] is True
    summary = report["summary"]
    assert summary["accepted"] == 30 + 1  # 30 single events + the batch's good one
    assert summary["kafka_duplicates"] == 5
    assert summary["rejected"] == 4
    assert summary["pending_offsets"] == 0
    assert {t["tenant_id"] for t in report["tenants"]} == set(TENANTS)
    assert all(t["matches"] for t in report["tenants"])

    db = stack.database
    by_id = {a.event.event_id: a for a in stack.written}
    deleted, duplicated, changed = (stack.written[i] for i in (0, 4, 8))
    # Lightweight DELETE is refused on this table (its p_offsets projection),
    # so the plant is a classic mutation.
    stack.client.command(
        f"ALTER TABLE {db}.usage_events DELETE WHERE event_id = %(e)s SETTINGS mutations_sync = 2",
        parameters={"e": deleted.event.event_id},
    )
    stack.client.command(
        f"ALTER TABLE {db}.usage_events UPDATE input_tokens = input_tokens + 7"
        " WHERE event_id = %(e)s SETTINGS mutations_sync = 2",
        parameters={"e": changed.event.event_id},
    )
    phantom = AcceptedEvent(
        _event("globex", 500, event_id="phantom-1"),
        stack.topics.usage,
        duplicated.partition,
        duplicated.offset,
        datetime.now(UTC),
    )
    asyncio.run(_insert_rows(stack, [duplicated, phantom]))
    # A malformed record and a valid one after it; the valid one is delivered,
    # the malformed one never reaches the DLQ.
    late = asyncio.run(_send(stack, [(b"acme", b"\xff\xfe garbage")]))
    follow = asyncio.run(_send(stack, [(b"acme", encode_usage_event(_event("acme", 600)))]))
    assert late[0].partition == follow[0].partition
    asyncio.run(_deliver(stack, follow))

    rc, report = stack.run()
    assert rc == 1
    diffs = report["differences"]
    found = {(d["kind"], d["event_id"]) for d in diffs}
    assert ("missing", deleted.event.event_id) in found
    assert ("duplicate", duplicated.event.event_id) in found
    assert ("token_mismatch", changed.event.event_id) in found
    assert ("extra", "phantom-1") in found
    assert ("dlq_missing", None) in found
    assert len(diffs) == 5, diffs
    for d in diffs:
        if d["event_id"] is not None:
            acc = by_id.get(d["event_id"], phantom)
            assert d["tenant_id"] == acc.event.tenant_id
            assert d["partition"] == acc.partition
    (dlq_diff,) = [d for d in diffs if d["kind"] == "dlq_missing"]
    assert (dlq_diff["partition"], dlq_diff["offset"]) == (late[0].partition, late[0].offset)
    assert "malformed_json" in dlq_diff["detail"]
    mismatch = [t for t in report["tenants"] if not t["matches"]]
    assert {(t["partition"], t["tenant_id"]) for t in mismatch} >= {
        (deleted.partition, deleted.event.tenant_id),
        (changed.partition, changed.event.tenant_id),
    }


def test_unprocessed_tail_is_pending_not_a_difference_unless_strict(stack: Stack) -> None:
    sent = asyncio.run(_send(stack, _mixed_records()[:10]))
    asyncio.run(_deliver(stack, sent[:6]))
    rc, report = stack.run()
    assert rc == 0, report["differences"]
    assert report["summary"]["pending_offsets"] > 0
    assert sum(t["pending_events"] for t in report["tenants"]) > 0
    rc, report = stack.run("--strict")
    assert rc == 1
    assert {d["kind"] for d in report["differences"]} == {"pending"}
    capsys = _CAPTURED["capsys"]
    since = (stack.started - timedelta(minutes=1)).isoformat()
    assert reconcile_main(["--since", since, "--topic", stack.topics.usage]) == 0
    table = capsys.readouterr().out
    assert ": OK" in table
    assert "pending" in table
