"""The one small interface between the stream processors and any sink.

A sink receives accepted, already de-duplicated events in batches, one
batch per topic-partition offset range, and makes them durable. The
processors commit a Kafka offset only after `write` (or `write_many`) for
the batch that contains it has returned. A sink knows nothing of Faust.

Contract of `write`:
- on return the batch is durable (e.g. ClickHouse acknowledged the insert);
- writing the same batch again (same `token`) changes nothing;
- batches of one partition are written in offset order, so after a crash
  `last_offsets()` tells the processor which offsets are already durable
  and must not be applied again;
- a slow or unreachable store raises `SinkBackpressure` (retry after the
  given delay) or `ServiceUnavailable`; never a silent drop.

`write_many(batches)` makes several batches durable at once (the partitions
of one processing round; each partition's batches in offset order). A sink
may store them in one request (ClickHouse: one insert), so it is idempotent
per group: writing the same batches in the same order again changes
nothing. After it raises, some of the group may be durable: re-send the
same group, not a regrouping of its batches (a regrouped batch is a new
write to a sink that deduplicates per request).
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from tokenpulse.schemas import UsageEvent


class AcceptedEvent(NamedTuple):
    """One accepted event and where it came from.

    A NamedTuple: built for every event on the worker's hot path, where a
    frozen dataclass's __init__ cost several times more.
    """

    event: UsageEvent
    topic: str
    partition: int
    offset: int
    ingested_at: datetime
    late: bool = False  # arrived after its window's allowed lateness


@dataclass(frozen=True, slots=True)
class SinkBatch:
    """Accepted events of one topic-partition offset range [first, last]."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    events: Sequence[AcceptedEvent]
    # Set when the range is written again after a write of it may have landed
    # in part: the new write must not be taken for a retry of the old one.
    token_suffix: str = ""
    # The events as the sink will send them, when it encoded them ahead
    # (`UsageSink.encode_ahead`); None: encoded at the write.
    encoded: Any = field(default=None, compare=False, repr=False)

    @property
    def token(self) -> str:
        """Deterministic idempotency token: the same range (and suffix) always maps to it."""
        token = f"{self.topic}/{self.partition}/{self.first_offset}-{self.last_offset}"
        return f"{token}@{self.token_suffix}" if self.token_suffix else token


class UsageSink(abc.ABC):
    """Where accepted usage becomes durable."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once before the first write."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; pending writes are not the sink's to keep."""

    def encode_ahead(self, events: Sequence[AcceptedEvent]) -> Any:
        """The events in this sink's wire form, for `SinkBatch.encoded`; None: not ahead.

        Called when the batch is prepared, while the previous write is in
        flight, so that the write itself only joins what is encoded. None
        (the default, or a value it cannot encode) leaves it to the write.
        """
        return None

    @abc.abstractmethod
    async def write(self, batch: SinkBatch) -> None:
        """Make the batch durable; idempotent per `batch.token`."""

    async def write_many(self, batches: Sequence[SinkBatch]) -> None:
        """Make all these batches durable; idempotent for the same batches in the same order.

        This default writes them one by one; a sink that can store them in one
        request overrides it.
        """
        for batch in batches:
            await self.write(batch)

    @abc.abstractmethod
    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        """Highest durable offset per partition (partitions never written are absent)."""

    @abc.abstractmethod
    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        """Which of these ids of this tenant are already durable (ingested after `since`).

        The exact confirmation behind a probabilistic dedup filter.
        """

    async def existing_events(
        self, candidates: Collection[tuple[str, str, datetime]], since: datetime
    ) -> set[tuple[str, str]]:
        """Which (tenant_id, event_id) of these candidates are already durable.

        `candidates` are (tenant_id, event_id, occurred_at) of any tenants; a
        duplicate repeats its original's occurred_at, so a sink may look only
        within the candidates' occurred_at range. Same answers as
        `existing_event_ids` per tenant (this default), in fewer round trips
        where a sink overrides it (ClickHouse: one query per bounded chunk).
        """
        by_tenant: dict[str, list[str]] = {}
        for tenant_id, event_id, _occurred_at in candidates:
            by_tenant.setdefault(tenant_id, []).append(event_id)
        found: set[tuple[str, str]] = set()
        for tenant_id, ids in by_tenant.items():
            ids_found = await self.existing_event_ids(tenant_id, ids, since)
            found.update((tenant_id, e) for e in ids_found)
        return found

    async def recent_event_ids(
        self, topic: str, partitions: Collection[int], since: datetime, max_ids: int
    ) -> Mapping[int, Sequence[tuple[str, float, float]]]:
        """Per partition, every (event_id, ingested epoch s, occurred_at epoch s) durable
        since `since`.

        Warms a new dedup filter at assignment. A partition with more than
        `max_ids` such ids is left out (its filter stays cold: every id is
        confirmed with `existing_events`); so is every partition of a sink
        that cannot list them (this default).
        """
        return {}
