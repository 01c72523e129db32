"""The per-batch pipeline of the worker, free of Faust.

A batch (records of several partitions) goes through two stages. `prepare`:
skip what is already durable -> size check -> decode -> signature
(records.py) -> dedup -> windows/late (partitions.py); `complete`: one sink
write for all partitions (retried until it succeeds) -> quota checks ->
DLQ/alerts/states acknowledged by the broker -> commit. The next batch may
be prepared while the previous one completes; completions run in order, so
a batch's offsets are committed only after everything before them is
durable. Locks serialise each stage with the rebalance callbacks, so a
revoked partition is never written behind the new owner's back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from tokenpulse.schemas.signing import Keyring
from tokenpulse.schemas.usage import UsageEvent
from tokenpulse.sinks.base import SinkBatch, UsageSink
from tokenpulse.streams.partitions import PartitionState, PartitionTable, Slice
from tokenpulse.streams.quotas import Counted, Outgoing, QuotaEngine, Touch
from tokenpulse.streams.records import Counters, InRecord, RecordDecoder, Work
from tokenpulse.streams.retry import FlowControl, RetryAbandoned, SinkRetrier

log = logging.getLogger("tokenpulse.streams.processor")

_R = TypeVar("_R")
_OFFSET = operator.attrgetter("offset")
_TOPIC_PARTITION = operator.attrgetter("topic", "partition")
# Of an AcceptedEvent, read in C over a whole slice.
_OCCURRED_AT = operator.attrgetter("event.occurred_at")
_EVENT_ID = operator.attrgetter("event.event_id")
_TENANT_ID = operator.attrgetter("event.tenant_id")
_GENERATION = operator.attrgetter("generation")
__all__ = ["Counters", "InRecord", "Prepared", "Producer", "UsageProcessor"]


class Producer(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        """Enqueue; the returned awaitable resolves once the broker acknowledged."""


Committer = Callable[[str, Mapping[int, int]], Awaitable[bool]]


@dataclass
class Prepared:
    """A batch after `prepare`: what `complete` makes durable, in order."""

    records: int
    generations: set[int | None]
    seq: int = 0  # order of preparation: the quota engine's lower bounds count by it
    slices: list[tuple[PartitionState, SinkBatch]] = field(default_factory=list)
    pending: list[Awaitable[Any]] = field(default_factory=list)  # DLQ acknowledgements
    touches: list[Touch] = field(default_factory=list)  # replayed records' quota checks


class UsageProcessor:
    def __init__(
        self,
        *,
        sink: UsageSink,
        producer: Producer,
        committer: Committer,
        dlq_topic: str,
        keyring: Keyring | None,
        quotas: QuotaEngine | None = None,
        dedup_horizon_s: float = 48 * 3600.0,
        dedup_warm_max_ids: int = 500_000,
        allowed_lateness_s: float = 300.0,
        max_record_bytes: int = 1_048_576,
        sink_retry_max_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        flow: FlowControl | None = None,
        on_alert: Callable[[bytes], None] | None = None,
    ) -> None:
        self.sink = sink
        self.producer = producer
        self.committer = committer
        self.quotas = quotas
        self.sink_retry_max_s = sink_retry_max_s
        self.clock = clock
        self.counters = Counters()
        self.decoder = RecordDecoder(
            dlq_topic=dlq_topic,
            keyring=keyring,
            max_record_bytes=max_record_bytes,
            counters=self.counters,
            clock=clock,
        )
        self.partitions = PartitionTable(
            sink=sink,
            retrying=self._retrying,
            counters=self.counters,
            clock=clock,
            dedup_horizon_s=dedup_horizon_s,
            dedup_warm_max_ids=dedup_warm_max_ids,
            allowed_lateness_s=allowed_lateness_s,
        )
        # Two stages (see prepare/complete): `prepare_lock` serialises the
        # CPU stage, `lock` the durable stage; a rebalance takes both.
        self.prepare_lock = asyncio.Lock()
        self.lock = asyncio.Lock()
        self.stopping = False  # set by close(): no batch is written any more
        # Fencing (see on_revoked): generations whose partitions were revoked.
        # Records fetched in them may still sit in Faust's take buffer; they
        # belong to the next owner now and are dropped, never written.
        self.current_generation: Callable[[], int | None] | None = None
        self._fenced: set[int] = set()
        self._abandon = False  # a revocation waits: stop retrying between attempts
        # Called with each alert after the broker acknowledged it (webhooks, metrics).
        self.on_alert = on_alert
        self.observe_write: Callable[[float], None] | None = None  # sink latency histogram
        self._seq = 0  # Prepared.seq of the last batch with early quota checks
        self._announcing: set[asyncio.Task[None]] = set()  # early alerts awaiting their acks
        # Set when a batch failed in a way retrying cannot fix: no later batch
        # may run (its commit would move past the failed batch's offsets).
        self.failed: BaseException | None = None
        self.retrier = SinkRetrier(
            max_backoff_s=sink_retry_max_s,
            flow=flow,
            on_retry=self._count_retry,
            should_abandon=self.abandoning,
        )

    def abandoning(self) -> bool:
        """Should a retry loop give up between attempts (revocation waiting, or stopping)?"""
        return self._abandon or self.stopping

    def _count_retry(self, what: str, exc: BaseException) -> None:
        self.counters.sink_retries += 1

    def processed_upto(self, topic: str, partition: int) -> int | None:
        """Highest offset whose outcome is durable, for assigned partitions seen so far."""
        state = self.partitions.get(topic, partition)
        return None if state is None else state.processed_upto

    # -- rebalance ------------------------------------------------------------------
    async def on_revoked(
        self, partitions: Collection[tuple[str, int]], generation: int | None = None
    ) -> None:
        """Fence revoked partitions before the group moves on.

        Waits for the in-flight batch (its current sink attempt finishes, no
        further retry starts), then fences `generation`: records fetched in it
        and still buffered by Faust are dropped by every later batch, because
        the partition may belong to another worker that resumes from what is
        durable. Faust awaits this before the worker rejoins the group.
        """
        if generation is not None:
            self._fenced.add(generation)  # batches queued behind us drop them too
        self._abandon = True
        try:
            async with self.prepare_lock, self.lock:
                self.partitions.retire(partitions)
                if self.quotas is not None:
                    # Prepared batches still queued may be dropped, and their
                    # events written by the new owner: then a read would count
                    # them twice. Their tokens leave the lower bounds now.
                    self.quotas.pending.settle(self._seq)
        finally:
            self._abandon = False

    async def close(self, wait_s: float) -> bool:
        """Stop writing: wait (<= wait_s) for the in-flight batch; later batches are dropped.

        Runs before the worker leaves the group (Faust does not call the
        revocation hook on stop). True when no batch is in flight any more.
        """
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        for lock in (self.prepare_lock, self.lock):
            try:
                await asyncio.wait_for(lock.acquire(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return False
            lock.release()
        return True

    def _owned(self, generations: Collection[int | None]) -> dict[int | None, bool]:
        """Per consumer generation: may this worker still write records fetched in it?

        Not when the generation was fenced by a revocation, nor when the group
        has moved to another one since (None: generation not tracked).
        """
        current = self.current_generation() if self.current_generation is not None else None
        return {
            g: g is None or (g not in self._fenced and (current is None or g == current))
            for g in generations
        }

    def _owned_records(
        self, records: Sequence[InRecord]
    ) -> tuple[Sequence[InRecord], set[int | None]]:
        """Records this worker may still write, and their generations (under the lock)."""
        generations: set[int | None] = set()
        if self.stopping:
            kept: Sequence[InRecord] = ()
        else:
            owned = self._owned(set(map(_GENERATION, records)))
            generations = {g for g, ok in owned.items() if ok}
            if len(generations) == len(owned):
                kept = records
            else:
                kept = [r for r in records if owned[r.generation]]
        dropped = len(records) - len(kept)
        if dropped:
            self.counters.fenced_dropped += dropped
            log.info(
                "dropped %d buffered records of revoked partitions%s; their owner replays them",
                dropped,
                " (stopping)" if self.stopping else "",
            )
        return kept, generations

    # -- the batch ------------------------------------------------------------------
    async def process(self, records: Sequence[InRecord]) -> None:
        """Make one batch durable and commit it; a non-retriable failure propagates."""
        prepared = await self.prepare(records)
        if prepared is not None:
            await self.complete([prepared])

    async def prepare(self, records: Sequence[InRecord]) -> Prepared | None:
        """Stage 1 (mostly CPU): decode, verify, dedup, window; nothing durable yet.

        The next batch may be prepared while the previous one completes
        (streams/batcher.py): then its duplicates of that batch's ids are
        dropped through `pending_ids`, its DLQ records are sent, and it is
        written only after the previous one (`complete` runs in order).
        None when nothing of the batch is this worker's to write.
        """
        async with self.prepare_lock:
            self._refuse_if_failed()
            records, generations = self._owned_records(records)
            if not records:
                return None
            return await self._guarded(self._prepare_locked(records, generations))

    async def complete(self, group: Sequence[Prepared]) -> None:
        """Stage 2 (I/O) for prepared batches, in order: one write, quotas, acks, commit.

        The batches of a group become durable together: one sink write
        (idempotent per group), one quota check, one commit per topic.
        """
        async with self.lock:
            try:
                self._refuse_if_failed()
                owned = [p for p in group if self._still_owned(p)]
                if owned:
                    await self._guarded(self._complete_locked(owned))
            finally:
                if self.quotas is not None and group:
                    # Durable, dropped or failed: the group leaves the lower bounds.
                    self.quotas.pending.settle(max(p.seq for p in group))

    async def _guarded(self, stage: Awaitable[_R]) -> _R | None:
        try:
            return await stage
        except asyncio.CancelledError:
            raise
        except RetryAbandoned as exc:
            # Revoked or stopping between two sink attempts: nothing of the
            # batch is committed; the partitions' owner replays it.
            log.warning("batch abandoned (%s); it stays uncommitted", exc)
            return None
        except BaseException as exc:
            self.failed = exc
            raise

    def _refuse_if_failed(self) -> None:
        if self.failed is not None:
            raise RuntimeError(
                f"processor stopped after an earlier failure ({self.failed!r}); restart the worker"
            ) from self.failed

    def _still_owned(self, prepared: Prepared) -> bool:
        """A revocation or stop since `prepare` drops the whole prepared batch."""
        stale = self.stopping or not all(self._owned(prepared.generations).values())
        if stale:
            self.counters.fenced_dropped += prepared.records
            log.info(
                "dropped a prepared batch of %d records of revoked partitions%s; "
                "their owner replays them",
                prepared.records,
                " (stopping)" if self.stopping else "",
            )
        return not stale

    async def _prepare_locked(
        self, records: Sequence[InRecord], generations: set[int | None]
    ) -> Prepared:
        groups: dict[tuple[str, int], list[InRecord]] = {}
        # A fetch's records come in runs per partition: one dict step per run.
        for key, run in itertools.groupby(records, _TOPIC_PARTITION):
            groups.setdefault(key, []).extend(run)
        await self.partitions.ensure(groups.keys())
        out = Prepared(records=len(records), generations=generations)
        slices: list[Slice] = []
        recheck = self.quotas is not None and bool(self.quotas.definitions)
        ingested_at = datetime.fromtimestamp(self.clock(), UTC)
        for (topic, partition), recs in groups.items():
            state = self.partitions.parts[(topic, partition)]
            recs.sort(key=_OFFSET)  # already in order, unless fetches of it interleaved
            work = Work()
            fresh = self.decoder.decode_slice(
                state.processed_upto,
                state.verify_upto,
                recs,
                work,
                recheck_replayed=recheck,
                ingested_at=ingested_at,
            )
            for o in work.outgoing:  # DLQ records: sent now, awaited before the commit
                out.pending.append(await self.producer.send(o.topic, o.key, o.value))
            out.touches += work.touches
            if fresh:
                slices.append(Slice(topic, partition, state, fresh, work))
        # All partitions of the batch at once: one confirmation lookup and one
        # write, instead of a round trip of each per partition.
        # The batch's tenants that a quota covers, asked once per tenant: a
        # batch with none of them costs no per-event work for quotas.
        covered: set[str] = set()
        if self.quotas is not None and self.quotas.definitions:
            tenants = set().union(*(map(_TENANT_ID, sl.work.accepted) for sl in slices))
            covered = self.quotas.covered(tenants)

        async def check_certain(events: list[UsageEvent]) -> None:
            # Events no filter saw are new for sure: their quotas are checked
            # before the confirmation query that others of the batch may need.
            await self._early_quotas(out, events, covered, ingested_at)

        confirmed = await self.partitions.dedup(slices, check_certain if covered else None)
        for sl in slices:
            accepted = sl.work.accepted
            for i in sl.state.windows.add_many(list(map(_OCCURRED_AT, accepted))):
                accepted[i] = accepted[i]._replace(late=True)  # rare: built again only then
                self.counters.late += 1
            sl.state.pending_ids.update(map(_EVENT_ID, accepted))
            first = sl.fresh[0].offset
            tag = sl.state.replay_tag if first <= sl.state.verify_upto else ""
            encoded = self.sink.encode_ahead(accepted) if accepted else None
            batch = SinkBatch(
                sl.topic, sl.partition, first, sl.fresh[-1].offset, accepted, tag, encoded
            )
            out.slices.append((sl.state, batch))
        if covered and confirmed:
            await self._early_quotas(out, confirmed, covered, ingested_at)
        return out

    async def _early_quotas(
        self, out: Prepared, events: list[UsageEvent], covered: set[str], now: datetime
    ) -> None:
        """Alerts the batch owes before it is written (lower bounds of quota usage).

        Only `events` of a `covered` tenant (one a quota watches) are checked.
        Sent now; the commit waits for their acknowledgement like for the DLQ
        records'. Webhooks and counters follow each acknowledgement. A batch
        with no event to check gets no seq (it adds nothing to the bounds).
        """
        assert self.quotas is not None
        events = [e for e in events if e.tenant_id in covered]
        if not events:
            return
        if not out.seq:
            # One seq per batch, also when its events come in two parts (new
            # for sure, then new after a confirmation): the check after its
            # write settles and folds by the batch's seq, and a part under
            # another seq left the bounds without joining their bases.
            self._seq += 1
            out.seq = self._seq
        outs = self.quotas.early(out.seq, events, now)
        if not outs:
            return
        futures = [await self.producer.send(o.topic, o.key, o.value) for o in outs]
        out.pending += futures
        task = asyncio.ensure_future(self._announce_when_acked(futures, outs))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _announce_when_acked(
        self, futures: Sequence[Awaitable[Any]], outs: Sequence[Outgoing]
    ) -> None:
        # A failed send fails the batch in complete(), which awaits the same futures.
        results = await asyncio.gather(*futures, return_exceptions=True)
        self._alerts_durable(
            [o for o, r in zip(outs, results, strict=True) if not isinstance(r, BaseException)]
        )

    async def _complete_locked(self, group: Sequence[Prepared]) -> None:
        slices = [s for p in group for s in p.slices]  # each partition's in offset order
        to_write = [b for _, b in slices if b.events]
        if to_write:
            await self._write(to_write)
        commits: dict[str, dict[int, int]] = {}
        touches: list[Counted] = [t for p in group for t in p.touches]
        quotas = self.quotas
        for state, batch in slices:
            if batch.events:
                state.last_written = batch.last_offset
            # Durable now: the store knows them (the filter since `prepare`).
            state.pending_ids.difference_update(map(_EVENT_ID, batch.events))
            self.counters.accepted += len(batch.events)
            state.processed_upto = batch.last_offset
            commits.setdefault(batch.topic, {})[batch.partition] = batch.last_offset + 1
            if quotas is not None:
                covered = quotas.covered(set(map(_TENANT_ID, batch.events)))
                if covered:
                    touches += [a.event for a in batch.events if a.event.tenant_id in covered]
        pending = [a for p in group for a in p.pending]
        quota_outs: list[Outgoing] = []
        if self.quotas is not None and touches:
            quota_outs = await self.quotas.check(
                touches,
                settle_upto=max(p.seq for p in group),
                durable_seqs={p.seq for p in group},
            )
            for out in quota_outs:
                # Alerts before states (the engine orders them): a crash in
                # between repeats an alert (same alert_id), never loses one.
                pending.append(await self.producer.send(out.topic, out.key, out.value))
        if pending:
            await asyncio.gather(*pending)
        self._alerts_durable(quota_outs)
        for topic, offsets in commits.items():
            if await self.committer(topic, offsets):
                self.counters.commits += 1

    async def tick(self) -> None:
        """Periodic work outside batches: changed definitions, period roll-over."""
        if self.quotas is None:
            return
        async with self.lock:
            self._refuse_if_failed()
            try:
                outs = await self.quotas.check(())
                outs += await self.quotas.roll_periods()
            except RetryAbandoned as exc:
                log.info("quota timer gave way (%s); the next tick checks again", exc)
                return
            futures = [await self.producer.send(o.topic, o.key, o.value) for o in outs]
            if futures:
                await asyncio.gather(*futures)
            self._alerts_durable(outs)

    def _alerts_durable(self, outs: Sequence[Outgoing]) -> None:
        if self.quotas is None:
            return
        for out in outs:
            if out.topic == self.quotas.alerts_topic:
                self.counters.alerts += 1
                if self.on_alert is not None:
                    self.on_alert(out.value)

    async def _write(self, batches: Sequence[SinkBatch]) -> None:
        started = time.monotonic()
        what = f"write of {batches[0].token}" + (
            f" and {len(batches) - 1} more" if len(batches) > 1 else ""
        )
        await self._retrying(what, lambda: self.sink.write_many(batches))
        self.counters.rows_written += sum(len(b.events) for b in batches)
        if self.observe_write is not None:
            self.observe_write(time.monotonic() - started)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[_R]]) -> _R:
        # Never drop, never skip: the offsets stay uncommitted until it works.
        return await self.retrier.call(f"sink {what}", call)
