"""Turns fetched record lists into processing batches: by size, or after a flush interval.

The consumer (streams/transport.py) offers each fetch of the usage topic;
`run()` hands batches of at most `max_records` records and `max_bytes` of
record values (SDK envelopes hold many events each) to the processor one after
another, so a batch's offsets are committed only after every earlier batch
of the same partition is durable. `offer()` waits while `max_pending`
records are queued: a slow store stops fetching instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

from tokenpulse.streams.processor import InRecord

_P = TypeVar("_P")
Prepare = Callable[[Sequence[InRecord]], Awaitable[_P | None]]
Complete = Callable[[_P], Coroutine[Any, Any, None]]


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
    ) -> None:
        if max_records <= 0 or max_bytes <= 0 or flush_interval_s < 0:
            raise ValueError("max_records and max_bytes must be > 0, flush_interval_s >= 0")
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
        return batch

    async def run(self) -> None:
        """Process batches in two overlapping stages until one fails (it raises).

        Batch N+1 is fetched and prepared (decoding, dedup: CPU) while batch
        N completes (write, quotas, commit: waiting on the stores), so the
        worker's one core is not idle during I/O. Completions run strictly in
        batch order, one at a time: a batch's offsets are committed only after
        every earlier batch's. A failed completion ends the loop at once, even
        when no further records arrive.
        """
        inflight: asyncio.Task[None] | None = None
        try:
            while True:
                batch: list[InRecord] | None
                if inflight is None:
                    batch = await self.next_batch()
                else:
                    batch = await self._next_batch_or_failure(inflight)
                    if inflight.done():
                        inflight.result()  # raises the completion's failure
                        inflight = None
                if batch is None:
                    continue
                prepared = await self.prepare(batch)
                if inflight is not None:
                    await inflight
                    inflight = None
                if prepared is not None:
                    inflight = asyncio.create_task(self.complete(prepared))
        finally:
            if inflight is not None and inflight.done() and not inflight.cancelled():
                inflight.exception()  # retrieved: no "never retrieved" warning

    async def _next_batch_or_failure(self, inflight: asyncio.Task[None]) -> list[InRecord] | None:
        """The next batch, or None once the in-flight completion ended first."""
        if not self._fetches:
            ready = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait({ready, inflight}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if not self._fetches:
                return None
        return await self.next_batch()
