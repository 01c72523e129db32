"""Turns fetched record lists into processing batches: by size, or after a flush interval.

The consumer (streams/transport.py) offers each fetch of the usage topic;
`run()` hands batches of at most `max_records` to the processor one after
another, so a batch's offsets are committed only after every earlier batch
of the same partition is durable. `offer()` waits while `max_pending`
records are queued: a slow store stops fetching instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from tokenpulse.streams.processor import InRecord

Process = Callable[[Sequence[InRecord]], Awaitable[None]]


class RecordBatcher:
    def __init__(
        self,
        process: Process,
        *,
        max_records: int,
        flush_interval_s: float,
        max_pending: int | None = None,
    ) -> None:
        if max_records <= 0 or flush_interval_s < 0:
            raise ValueError("max_records must be > 0 and flush_interval_s >= 0")
        self.process = process
        self.max_records = max_records
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

    def _take(self, limit: int) -> list[InRecord]:
        """Up to `limit` queued records, in arrival order (a fetch may be split)."""
        out: list[InRecord] = []
        while self._fetches and len(out) < limit:
            fetch = self._fetches.popleft()
            room = limit - len(out)
            if len(fetch) > room:
                self._fetches.appendleft(fetch[room:])
                fetch = fetch[:room]
            out.extend(fetch)
        self._pending -= len(out)
        if not self._fetches:
            self._ready.clear()
        if self._pending < self.max_pending:
            self._space.set()
        return out

    async def next_batch(self) -> list[InRecord]:
        """Wait for a record, then fill up to max_records within the flush interval."""
        await self._ready.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flush_interval_s
        batch = self._take(self.max_records)
        while len(batch) < self.max_records:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not self._fetches:
                # Event.wait is safe to cancel (no queued item can be lost).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), remaining)
                if not self._fetches:
                    break
            batch += self._take(self.max_records - len(batch))
        return batch

    async def run(self) -> None:
        """Process batches forever; an exception from the processor ends the loop."""
        while True:
            await self.process(await self.next_batch())
