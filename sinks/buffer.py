"""Per-partition batching in front of a UsageSink, with bounded memory.

The stream processor adds accepted events as they come; `flush` seals a
partition's open batch when it holds `max_rows` events or is `max_age_ms`
old, and writes sealed batches of each partition in offset order. A batch
that fails to write stays at the head of its partition and is written again
(same token, so idempotent) by the next flush. When `max_pending_rows` are
buffered, `add` raises SinkBackpressure: the caller pauses consumption.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenpulse.errors import SinkBackpressure, TokenpulseError
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch, UsageSink

__all__ = ["OffsetOrderError", "SinkBuffer"]


class OffsetOrderError(TokenpulseError):
    """Offsets of one partition must be added in increasing order."""

    code = "sink_offset_order"


@dataclass
class _Partition:
    topic: str
    partition: int
    sealed: deque[SinkBatch] = field(default_factory=deque)
    events: list[AcceptedEvent] = field(default_factory=list)
    first_offset: int = -1
    last_offset: int = -1  # highest offset seen (open or sealed)
    opened_at_s: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.first_offset >= 0


class SinkBuffer:
    """Accumulates events per (topic, partition) and writes them as SinkBatches."""

    def __init__(
        self,
        *,
        max_rows: int = 20_000,
        max_age_ms: int = 1_000,
        max_pending_rows: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rows <= 0 or max_age_ms < 0 or max_pending_rows < max_rows:
            raise ValueError("need max_rows > 0, max_age_ms >= 0, max_pending_rows >= max_rows")
        self.max_rows = max_rows
        self.max_age_ms = max_age_ms
        self.max_pending_rows = max_pending_rows
        self._clock = clock
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._pending_rows = 0

    @property
    def pending_rows(self) -> int:
        """Events buffered or sealed but not yet written."""
        return self._pending_rows

    def _part(self, topic: str, partition: int) -> _Partition:
        key = (topic, partition)
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = _Partition(topic, partition)
        return part

    def _advance(self, part: _Partition, offset: int) -> None:
        if offset <= part.last_offset:
            raise OffsetOrderError(
                f"offset {offset} of {part.topic}/{part.partition} is not after"
                f" {part.last_offset}; add each partition's records in offset order"
            )
        if not part.is_open:
            part.first_offset = offset
            part.opened_at_s = self._clock()
        part.last_offset = offset

    def add(self, event: AcceptedEvent) -> None:
        """Buffer one accepted event; raises SinkBackpressure when the buffer is full."""
        if self._pending_rows >= self.max_pending_rows:
            raise SinkBackpressure(
                f"sink buffer holds {self._pending_rows} unwritten rows"
                f" (max_pending_rows={self.max_pending_rows}); pause and flush",
                retry_after_s=max(self.max_age_ms / 1000, 0.05),
            )
        part = self._part(event.topic, event.partition)
        self._advance(part, event.offset)
        part.events.append(event)
        self._pending_rows += 1
        if len(part.events) >= self.max_rows:
            self._seal(part)

    def skip(self, topic: str, partition: int, offset: int) -> None:
        """Cover an offset that produced no event (rejected, duplicate) by the open batch."""
        self._advance(self._part(topic, partition), offset)

    def _seal(self, part: _Partition) -> None:
        if not part.is_open:
            return
        part.sealed.append(
            SinkBatch(
                topic=part.topic,
                partition=part.partition,
                first_offset=part.first_offset,
                last_offset=part.last_offset,
                events=tuple(part.events),
            )
        )
        part.events = []
        part.first_offset = -1

    def seal_due(self, *, force: bool = False) -> None:
        """Seal every open batch that is old enough (or all of them with force)."""
        now_s = self._clock()
        for part in self._parts.values():
            if part.is_open and (force or (now_s - part.opened_at_s) * 1000 >= self.max_age_ms):
                self._seal(part)

    def next_due_in_s(self) -> float | None:
        """Seconds until the oldest open batch is due (0 if something is sealed)."""
        now_s = self._clock()
        due: float | None = None
        for part in self._parts.values():
            if part.sealed:
                return 0.0
            if part.is_open:
                left = max(0.0, part.opened_at_s + self.max_age_ms / 1000 - now_s)
                due = left if due is None else min(due, left)
        return due

    async def flush(self, sink: UsageSink, *, force: bool = False) -> list[SinkBatch]:
        """Write every sealed batch (after sealing due ones), per partition in offset order.

        Returns the batches written, in the order written: their offsets are
        now durable and may be committed. If a write raises, that batch and
        the later ones of its partition stay buffered for the next flush.
        """
        self.seal_due(force=force)
        written: list[SinkBatch] = []
        for part in self._parts.values():
            while part.sealed:
                batch = part.sealed[0]
                await sink.write(batch)
                part.sealed.popleft()
                self._pending_rows -= len(batch.events)
                written.append(batch)
        return written
