"""The worker's own CPU per record, without Kafka or ClickHouse: the processor alone.

Drives `UsageProcessor.process` (decode, dedup, lateness, quota bookkeeping,
the insert body's row encoding, commit bookkeeping) over 60,000 fleet
records (the bench's mix: 1 % duplicates, 0.5 % malformed, 0.5 % late) in
batches of 2,000 as the hand-over builds them (each partition's records in
one run, 12 partitions). Like the worker of `tokenpulse bench`, it has 100
quotas, on tenants outside the fleet (its alert phases' quotas): none of
the fleet's events is covered, and none reads the store. The sink only
encodes the rows (as ClickHouseSink does before its insert) and keeps
nothing; the producer and the committer are no-ops. A drain on the 2-core
bench VM moves by more than a change of a few percent, and shares the
cores with the broker and the endpoint; this measures the worker's part
alone, in CPU time.

Prints one row: the median of 7 passes (a fresh processor each), us of CPU
per record. With `--signed`, every record carries its org's signature
headers (one key per org, as `tokenpulse simulate` signs) and the processor
verifies them against a keyring: the worker's default.

    .venv/bin/python bench/prepare_bench.py [--signed]
    bench/ab.sh fb696e5 6 prepare_bench.py     # against an older commit
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from tokenpulse.fleet import FleetConfig, generate
from tokenpulse.schemas import QuotaDefinition, quota_state_key
from tokenpulse.schemas.signing import Keyring, sign_record
from tokenpulse.schemas.usage import encode_usage_event
from tokenpulse.simulate import org_of
from tokenpulse.sinks._encode import encode_events, encode_fragments, join_fragments
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch, UsageSink
from tokenpulse.streams.processor import InRecord, UsageProcessor
from tokenpulse.streams.quotas import QuotaEngine
from tokenpulse.streams.records import new_tuple

TOPIC = "tokenpulse.usage.v1"
RECORDS = 60_000
PARTITIONS = 12
BATCH = 2_000
PASSES = 7
QUOTAS = 100


class _EncodingSink(UsageSink):
    """Encodes the rows like ClickHouseSink and keeps nothing: each batch's
    fragments when it is prepared, joined into one body at the write."""

    def encode_ahead(self, events: Sequence[AcceptedEvent]) -> Any:
        return encode_fragments(events)

    async def write(self, batch: SinkBatch) -> None:
        await self.write_many([batch])

    async def write_many(self, batches: Sequence[SinkBatch]) -> None:
        if all(b.encoded is not None for b in batches):
            join_fragments(b.encoded for b in batches)
        else:
            encode_events([e for b in batches for e in b.events])

    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        return {}

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        return set()

    async def recent_event_ids(
        self, topic: str, partitions: Collection[int], since: datetime, max_ids: int
    ) -> Mapping[int, Sequence[tuple[str, float, float]]]:
        # An empty store, as in a bench drain: every partition's filter is
        # warm (with nothing), not cold (every id confirmed).
        return {p: [] for p in partitions}


class _Sent:
    async def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _NoReads:
    """The quota engine's reader: no quota covers a fleet tenant, so nothing is read."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the bench's quotas read nothing ({name})")


def quota_engine() -> QuotaEngine:
    engine = QuotaEngine(_NoReads(), alerts_topic="alerts", state_topic="states")
    for i in range(QUOTAS):
        tenant = f"bench-alerts/t{i}"
        d = QuotaDefinition(
            quota_id="bench", tenant_id=tenant, metric="input", period="day", limit=10_000
        )
        engine.apply_definition(quota_state_key(tenant, "bench"), d)
    return engine


async def _commit(topic: str, offsets: Mapping[int, int]) -> bool:
    return True


def _secret(org: str) -> bytes:
    return org.encode().ljust(32, b"k")


def _batches(keyring: Keyring | None) -> list[list[InRecord]]:
    """The fleet's records over the partitions, cut into hand-over batches."""
    per_partition: list[list[InRecord]] = [[] for _ in range(PARTITIONS)]
    for n, rec in enumerate(generate(FleetConfig(events=RECORDS, tenants=2_000))):
        value = rec.raw if rec.event is None else encode_usage_event(rec.event)
        partition = n % PARTITIONS
        records = per_partition[partition]
        headers: tuple[tuple[str, bytes | None], ...] = ()
        if keyring is not None:
            org = org_of(rec.tenant_id)
            if org not in keyring:
                keyring.add(org, "k1", _secret(org))
            signed = sign_record(value, tenant_id=org, key_id="k1", secret=_secret(org))
            headers = tuple(signed)
        fields = (TOPIC, partition, len(records), rec.tenant_id.encode(), value, headers, 1)
        records.append(new_tuple(InRecord, fields))
    per_batch = BATCH // PARTITIONS
    out = []
    for lo in range(0, RECORDS // PARTITIONS, per_batch):
        out.append([r for records in per_partition for r in records[lo : lo + per_batch]])
    return out


async def _pass(batches: list[list[InRecord]], keyring: Keyring | None) -> float:
    processor = UsageProcessor(
        sink=_EncodingSink(),
        producer=_Sent(),
        committer=_commit,
        dlq_topic="dlq",
        keyring=keyring,
        quotas=quota_engine(),
    )
    started = time.process_time()
    for batch in batches:
        await processor.process(batch)
    return time.process_time() - started


def main() -> int:
    keyring = Keyring() if "--signed" in sys.argv[1:] else None
    batches = _batches(keyring)
    records = sum(map(len, batches))
    seconds = [asyncio.run(_pass(batches, keyring)) for _ in range(PASSES)]
    print("| worker CPU, us/record |")
    print("| --- |")
    print(f"| {statistics.median(seconds) / records * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
