"""Turns fetched record lists into processing batches, and batches into write groups.

The consumer (streams/transport.py) offers each fetch of the usage topic;
`run()` hands batches of at most `max_records` records and `max_bytes` of
record values (SDK envelopes hold many events each) to the processor's
`prepare` one after another, closing a partial batch after the flush
interval, and the prepared batches to its `complete` in groups, in order,
so a batch's offsets are committed only after every earlier batch of the
same partition is durable. `offer()` waits while `max_pending`
records are queued: a slow store stops fetching instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

from tokenpulse.streams.processor import InRecord

_P = TypeVar("_P")
_T = TypeVar("_T")
Prepare = Callable[[Sequence[InRecord]], Awaitable[_P | None]]
# Completes a group of prepared batches, in order, as one durable step.
Complete = Callable[[list[_P]], Coroutine[Any, Any, None]]


class RecordBatcher(Generic[_P]):
    def __init__(
        self,
        prepare: Prepare[_P],
        complete: Complete[_P],
        *,
        max_records: int,
        flush_interval_s: float,
        max_bytes: int = 8 * 1024 * 1024,
        max_pending: int | None = None,
        max_group_records: int | None = None,
        max_group_bytes: int | None = None,
        min_write_interval_s: float = 0.0,
        max_write_interval_s: float | None = None,
        records_behind: Callable[[], int] | None = None,
    ) -> None:
        if max_records <= 0 or max_bytes <= 0 or flush_interval_s < 0:
            raise ValueError("max_records and max_bytes must be > 0, flush_interval_s >= 0")
        if (max_group_records is not None and max_group_records <= 0) or (
            max_group_bytes is not None and max_group_bytes <= 0
        ):
            raise ValueError("max_group_records and max_group_bytes must be > 0")
        if min_write_interval_s < 0:
            raise ValueError("min_write_interval_s must be >= 0")
        if max_write_interval_s is not None and max_write_interval_s < min_write_interval_s:
            raise ValueError("max_write_interval_s must be >= min_write_interval_s")
        self.prepare = prepare
        self.complete = complete
        self.max_records = max_records
        # Records, not events, are counted: SDK envelopes hold many events
        # each, so bytes bound a batch (and its insert) too.
        self.max_bytes = max_bytes
        self.flush_interval_s = flush_interval_s
        # Two batches' worth: the next batch fills while one is processed.
        self.max_pending = max_pending if max_pending is not None else 2 * max_records
        self._fetches: deque[Sequence[InRecord]] = deque()
        self._pending = 0
        self._ready = asyncio.Event()  # records are queued
        self._space = asyncio.Event()  # below max_pending
        self._space.set()
        # Completion groups (see run): prepared batches waiting for the write
        # in flight, and how much they hold. A group may pass a limit by one batch.
        self.max_group_records = max_group_records or max_records
        self.max_group_bytes = max_group_bytes or max_bytes
        self._queued: list[_P] = []
        self._queued_records = 0
        self._queued_bytes = 0
        self._group_space = asyncio.Event()  # the queued group is below its limits
        self._group_space.set()
        # A group that is not full starts at least this long after the one
        # before it started: the store's fixed cost per insert (and the parts
        # it then merges) is paid a bounded number of times a second.
        self.min_write_interval_s = min_write_interval_s
        # ... and up to this long while the worker is behind (see
        # _start_completion), so that a backlog is written in fewer, larger
        # inserts. `records_behind`: the records of the assigned partitions
        # that are not durable yet (Kafka's high watermarks minus the
        # durable positions); None: never behind.
        self.max_write_interval_s = (
            min_write_interval_s if max_write_interval_s is None else max_write_interval_s
        )
        self.records_behind = records_behind
        self._last_start = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()

    @property
    def pending(self) -> int:
        """Records offered and not yet handed to the processor."""
        return self._pending

    async def offer(self, records: Sequence[InRecord]) -> None:
        """Queue one fetch; waits while the queue is full (backpressure on the consumer)."""
        if not records:
            return
        while self._pending >= self.max_pending:
            self._space.clear()
            await self._space.wait()
        self._fetches.append(records)
        self._pending += len(records)
        self._ready.set()

    def _take(
        self, max_records: int, max_bytes: int, *, first: bool = False
    ) -> tuple[list[InRecord], int]:
        """Queued records in arrival order within both limits (a fetch may be split).

        Returns them and their value bytes. With `first`, one record is taken
        however big, so a batch is never empty.
        """
        out: list[InRecord] = []
        size = 0
        full = False
        while self._fetches and not full:
            fetch = self._fetches.popleft()
            n = 0
            for rec in fetch:
                b = len(rec.value) if rec.value is not None else 0
                if len(out) + n >= max_records or (
                    size + b > max_bytes and (out or n or not first)
                ):
                    full = True
                    break
                size += b
                n += 1
            if n < len(fetch):
                self._fetches.appendleft(fetch[n:])
            out.extend(fetch[:n] if n < len(fetch) else fetch)
        self._pending -= len(out)
        if not self._fetches:
            self._ready.clear()
        if self._pending < self.max_pending:
            self._space.set()
        return out, size

    async def next_batch(self) -> list[InRecord]:
        """Wait for a record, then fill up to the limits within the flush interval."""
        batch, _ = await self._next_batch_sized()
        return batch

    async def _next_batch_sized(self) -> tuple[list[InRecord], int]:
        """next_batch() and the bytes of its record values."""
        await self._ready.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flush_interval_s
        batch, size = self._take(self.max_records, self.max_bytes, first=True)
        while len(batch) < self.max_records and size < self.max_bytes:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not self._fetches:
                # Event.wait is safe to cancel (no queued item can be lost).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), remaining)
                if not self._fetches:
                    break
            more, more_size = self._take(self.max_records - len(batch), self.max_bytes - size)
            if not more:
                break
            batch += more
            size += more_size
        return batch, size

    async def run(self) -> None:
        """Prepare batches and complete them in groups until a completion fails (it raises).

        Batches are fetched and prepared (decoding, dedup: CPU) while the
        previous group completes (write, quotas, commit: waiting on the
        stores), so the worker's core is not idle during I/O. Every batch
        prepared meanwhile joins the next group, up to `max_group_records`
        records and `max_group_bytes` bytes, and one completion makes the
        whole group durable: under load the inserts grow to what the store
        absorbs per round trip (ClickHouse pays a fixed cost per insert and
        materialized view, 4.5x the rows/s at 20,000 rows than at 2,000 here),
        while a lightly loaded worker still writes each batch as soon as it is
        prepared. Groups complete strictly in order, one at a time: a batch's
        offsets are committed only after every earlier batch's. A failed
        completion ends the loop at once, even when no further records arrive.
        """
        try:
            while True:
                self._raise_if_failed()
                if self._queued and (
                    self._queued_records >= self.max_group_records
                    or self._queued_bytes >= self.max_group_bytes
                ):
                    # The next group is full: wait for the write in flight.
                    await self._until_failure(self._group_space.wait())
                    continue
                batch, size = await self._until_failure(self._next_batch_sized())
                prepared = await self.prepare(batch)
                if prepared is not None:
                    self._queued.append(prepared)
                    self._queued_records += len(batch)
                    self._queued_bytes += size
                    self._group_space.clear()
                    self._start_completion()
        finally:
            self._cancel_timer()  # queued groups stay uncommitted, as on any stop
            inflight = self._inflight
            if inflight is not None and inflight.done() and not inflight.cancelled():
                inflight.exception()  # retrieved: no "never retrieved" warning

    def _start_completion(self) -> None:
        """Complete everything queued, unless a completion is in flight (it chains).

        A group below its limits waits until `min_write_interval_s` has passed
        since the previous group started (a timer starts it then); a full one
        never waits. While more than a full group's records wait in Kafka
        beyond the queued group (a backlog), it waits up to
        `max_write_interval_s` instead, to fill up: the store pays its fixed
        cost per insert (and merges a part) once per full group. A worker
        that keeps up is never that far behind, so it writes as before.
        """
        if self._inflight is not None or not self._queued or self._failure is not None:
            return
        loop = asyncio.get_running_loop()
        full = (
            self._queued_records >= self.max_group_records
            or self._queued_bytes >= self.max_group_bytes
        )
        interval_s = self.min_write_interval_s
        if not full and self._behind():
            interval_s = self.max_write_interval_s
        wait_s = self._last_start + interval_s - loop.time()
        if not full and wait_s > 0:
            if self._timer is None:
                self._timer = loop.call_later(wait_s, self._interval_over)
            return
        self._cancel_timer()
        self._last_start = loop.time()
        group, self._queued = self._queued, []
        self._queued_records = self._queued_bytes = 0
        self._group_space.set()
        # Not cancelled with run(): a stopping worker lets the write in flight
        # finish (the processor's close() waits for it), like a lone batch.
        task = asyncio.create_task(self.complete(group))
        self._inflight = task
        task.add_done_callback(self._completed)

    def _behind(self) -> bool:
        """More than a full group waits beyond the queued one (asked with no write in flight)."""
        if self.records_behind is None or self.max_write_interval_s <= self.min_write_interval_s:
            return False
        return self.records_behind() - self._queued_records >= self.max_group_records

    def _interval_over(self) -> None:
        self._timer = None
        self._start_completion()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _completed(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if task.cancelled():
            self._failure = asyncio.CancelledError("the completion was cancelled")
        elif task.exception() is not None:
            self._failure = task.exception()
        if self._failure is not None:
            self._failed.set()
            return
        self._start_completion()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _until_failure(self, step: Awaitable[_T]) -> _T:
        """`step`'s result, or the failure of a completion if that comes first."""
        task = asyncio.ensure_future(step)
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({task, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            if not task.done():
                # Records taken by a cancelled next_batch() stay uncommitted:
                # the worker stops, and the partitions' next owner reads them.
                task.cancel()
        self._raise_if_failed()
        return task.result()
