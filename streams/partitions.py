"""Per-partition state of one worker: where it resumes, its dedup filter and windows.

`PartitionTable` creates a partition's state the first time a batch holds
it after an assignment (one `last_offsets` lookup for all new partitions,
the dedup filter warmed from the store's ids of the horizon), keeps it over
a rebalance when nobody else wrote the partition, and drops the events of a
batch that were seen before (`dedup`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenpulse.schemas.usage import UsageEvent
from tokenpulse.sinks.base import AcceptedEvent, UsageSink
from tokenpulse.streams.dedup import PartitionDedup, TimeBucketedBloom, time_keys
from tokenpulse.streams.records import Counters, InRecord, Work
from tokenpulse.streams.windows import MinuteWindows

log = logging.getLogger("tokenpulse.streams.processor")

Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass
class PartitionState:
    processed_upto: int  # highest offset whose outcome is durable (-1: none)
    last_written: int  # highest offset this worker wrote to the sink (-1: none)
    dedup: PartitionDedup
    windows: MinuteWindows
    # Ids of a prepared batch not yet durable: a duplicate of one of them in
    # the next batch (prepared meanwhile) is dropped without asking the store.
    pending_ids: set[str] = field(default_factory=set)
    # Offsets at or below may be durable only in part. usage_events is
    # partitioned by month, and an insert is one part per month: a crash can
    # land the rows of one month and not those of another, so the highest
    # durable offset does not prove every record below it complete. Records
    # up to here (read again from the last commit) are processed again and
    # their events deduplicated against the store, never skipped.
    verify_upto: int = -1
    # Token suffix of batches that re-write such records: the partly landed
    # insert may have used the same range's token, and the store would skip a
    # new insert under it as a retry of the old one.
    replay_tag: str = ""


@dataclass
class Slice:
    """One partition's fresh records of a batch and what decoding made of them."""

    topic: str
    partition: int
    state: PartitionState
    fresh: list[InRecord]
    work: Work


class PartitionTable:
    def __init__(
        self,
        *,
        sink: UsageSink,
        retrying: Retrying,
        counters: Counters,
        clock: Callable[[], float],
        dedup_horizon_s: float,
        dedup_warm_max_ids: int,
        allowed_lateness_s: float,
    ) -> None:
        self.sink = sink
        self.retrying = retrying  # the processor's "retry until it works or is abandoned"
        self.counters = counters
        self.clock = clock
        self.dedup_horizon_s = dedup_horizon_s
        self.dedup_warm_max_ids = dedup_warm_max_ids
        self.allowed_lateness_s = allowed_lateness_s
        self.parts: dict[tuple[str, int], PartitionState] = {}
        self._retired: dict[tuple[str, int], PartitionState] = {}

    def get(self, topic: str, partition: int) -> PartitionState | None:
        return self.parts.get((topic, partition))

    def retire(self, partitions: Collection[tuple[str, int]]) -> None:
        """Revoked: keep the state aside in case the partition comes back unchanged."""
        for tp in partitions:
            state = self.parts.pop(tp, None)
            if state is not None:
                # A prepared batch not yet durable is dropped (fenced): its ids
                # were never written.
                state.pending_ids.clear()
                self._retired[tp] = state

    async def ensure(self, tps: Collection[tuple[str, int]]) -> None:
        """State for partitions seen for the first time since their assignment.

        One `last_offsets` lookup per topic for all of them; a filter that
        starts empty is warmed from the store's ids of the horizon (one
        count and one id query per partition) so that it needs no
        confirmation round trips, unless the partition holds more than
        `dedup_warm_max_ids` (then it starts cold, see dedup.py).
        """
        by_topic: dict[str, list[int]] = {}
        for topic, partition in tps:
            if (topic, partition) not in self.parts:
                by_topic.setdefault(topic, []).append(partition)
        for topic, partitions in by_topic.items():
            offsets = await self.retrying(
                "last_offsets", functools.partial(self.sink.last_offsets, topic, partitions)
            )
            now = self.clock()
            cold: list[int] = []
            for partition in partitions:
                tp = (topic, partition)
                durable = offsets.get(partition, -1)
                old = self._retired.pop(tp, None)
                if old is not None and old.last_written == durable:
                    # Nobody else wrote this partition meanwhile: the filter is complete.
                    old.processed_upto = max(old.processed_upto, durable)
                    self.parts[tp] = old
                else:
                    bloom = TimeBucketedBloom(horizon_s=self.dedup_horizon_s)
                    self.parts[tp] = PartitionState(
                        processed_upto=durable,
                        last_written=durable,
                        dedup=PartitionDedup(bloom, cold_until_s=now + self.dedup_horizon_s),
                        windows=MinuteWindows(self.allowed_lateness_s),
                        verify_upto=durable,
                        replay_tag=f"r{secrets.token_hex(4)}",
                    )
                    cold.append(partition)
                log.info(
                    "partition %s/%d: resuming after durable offset %d", topic, partition, durable
                )
            if cold:
                await self._warm(topic, cold, now)

    async def _warm(self, topic: str, partitions: list[int], now_s: float) -> None:
        since = datetime.fromtimestamp(now_s - self.dedup_horizon_s, UTC)
        known = await self.retrying(
            "recent_event_ids",
            functools.partial(
                self.sink.recent_event_ids, topic, partitions, since, self.dedup_warm_max_ids
            ),
        )
        for partition in partitions:
            ids = known.get(partition)
            if ids is None:
                log.info(
                    "partition %s/%d: dedup filter starts cold (more than %d ids in the "
                    "horizon, or the sink cannot list them): ids are confirmed in the store",
                    topic,
                    partition,
                    self.dedup_warm_max_ids,
                )
                continue
            self.parts[(topic, partition)].dedup.warm(ids)
            log.info("partition %s/%d: dedup filter warmed with %d ids", topic, partition, len(ids))
            # Up to dedup_warm_max_ids adds each (~0.5 s at 500,000): let the
            # event loop run what is due (batches, quota checks) in between.
            await asyncio.sleep(0)

    async def dedup(
        self,
        slices: Sequence[Slice],
        certain: Callable[[list[UsageEvent]], Awaitable[None]] | None = None,
    ) -> list[UsageEvent]:
        """Drop ids seen before: in the same slice, in flight, or durable in the store.

        `certain` is awaited once, before any confirmation query, with the
        events the filters never saw (new for sure): what waits for them (the
        early quota check) need not wait for the store. Returns the events
        that were new only after a confirmation (empty without one).
        """
        now_s = self.clock()
        uniques: list[list[AcceptedEvent]] = []
        maybes: list[list[bool]] = []
        confirm: list[tuple[str, str, datetime]] = []
        for sl in slices:
            in_batch: set[str] = set()
            unique: list[AcceptedEvent] = []
            ids: list[str] = []
            times: list[datetime] = []
            pending = sl.state.pending_ids
            for acc in sl.work.accepted:
                eid = acc.event.event_id
                if eid in in_batch or eid in pending:
                    continue  # counted below, with the store's
                in_batch.add(eid)
                unique.append(acc)
                ids.append(eid)
                times.append(acc.event.occurred_at)
            maybe = sl.state.dedup.check_and_remember(ids, now_s, time_keys(times))
            confirm += [
                (a.event.tenant_id, a.event.event_id, a.event.occurred_at)
                for a in itertools.compress(unique, maybe)
            ]
            uniques.append(unique)
            maybes.append(maybe)
        if certain is not None:
            sure = [not m for ms in maybes for m in ms]
            await certain([a.event for a in itertools.compress(itertools.chain(*uniques), sure)])
        known: set[tuple[str, str]] = set()
        if confirm:
            # Every tenant of every partition at once: the sink splits it into
            # size-bounded queries, instead of a round trip per tenant (or per
            # partition) that made a cold worker crawl.
            since = datetime.fromtimestamp(now_s, UTC) - timedelta(seconds=self.dedup_horizon_s)
            self.counters.confirmations += 1
            known = await self.retrying(
                "existing_events", functools.partial(self.sink.existing_events, confirm, since)
            )
        confirmed: list[UsageEvent] = []
        for sl, unique, maybe in zip(slices, uniques, maybes, strict=True):
            if confirm:
                new = [(a.event.tenant_id, a.event.event_id) not in known for a in unique]
                confirmed += [
                    a.event for a, m, n in zip(unique, maybe, new, strict=True) if m and n
                ]
                if not all(new):
                    unique = list(itertools.compress(unique, new))
            self.counters.duplicates += len(sl.work.accepted) - len(unique)
            sl.work.accepted = unique
        return confirmed
