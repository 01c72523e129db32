"""What ClickHouse and the DLQ should hold, derived from the Kafka records alone.

The rules mirror the worker's (tokenpulse.streams.processor): a tombstone or
an oversized record is rejected whole; every event of a record gets its own
verdict; with a keyring each tenant of a record must be signed for; accepted
events are de-duplicated by (tenant_id, event_id), first occurrence wins.
Pure: no I/O, so the rules are unit-tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import Keyring, RejectReason, UsageEvent, decode_usage_record, verify_record

Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One record of the usage topic as the reconciler read it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class Occurrence:
    """Where an accepted event was seen (the first occurrence is the counted one)."""

    partition: int
    offset: int
    event: UsageEvent


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record (or one event of a batch) the worker must have sent to the DLQ."""

    partition: int
    offset: int
    reason: str
    batch_index: int | None


@dataclass
class Expected:
    """The accepted events by (tenant_id, event_id) and the expected DLQ entries."""

    events: dict[tuple[str, str], list[Occurrence]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    records: int = 0
    duplicates: int = 0

    def first(self, key: tuple[str, str]) -> Occurrence:
        return self.events[key][0]


def verdicts(
    rec: KafkaRecord, keyring: Keyring | None, max_record_bytes: int
) -> list[UsageEvent | InvalidRecord]:
    """The worker's verdict for each event of one record, in order."""
    value = rec.value
    if value is None:
        return [InvalidRecord("tombstone", reason=str(RejectReason.MALFORMED_JSON))]
    if len(value) > max_record_bytes:
        return [InvalidRecord("too large", reason=str(RejectReason.RECORD_TOO_LARGE))]
    out: list[UsageEvent | InvalidRecord] = []
    verified: set[str] = set()
    for index, verdict in enumerate(decode_usage_record(value)):
        needs_check = isinstance(verdict, UsageEvent) and verdict.tenant_id not in verified
        if keyring is not None and needs_check and isinstance(verdict, UsageEvent):
            try:
                verify_record(value, rec.headers, tenant_id=verdict.tenant_id, keyring=keyring)
            except InvalidRecord as err:
                # The worker stamps the event's index on signature rejections.
                err.details.setdefault("batch_index", index)
                out.append(err)
                continue
            verified.add(verdict.tenant_id)
        out.append(verdict)
    return out


def build_expected(
    records: Iterable[KafkaRecord],
    *,
    keyring: Keyring | None = None,
    max_record_bytes: int = 1_048_576,
) -> Expected:
    """Apply the acceptance rules to records given in (partition, offset) order."""
    exp = Expected()
    for rec in records:
        exp.records += 1
        for verdict in verdicts(rec, keyring, max_record_bytes):
            if isinstance(verdict, InvalidRecord):
                index = verdict.details.get("batch_index")
                exp.rejections.append(
                    Rejection(
                        rec.partition,
                        rec.offset,
                        verdict.reason,
                        index if isinstance(index, int) else None,
                    )
                )
                continue
            key = (verdict.tenant_id, verdict.event_id)
            seen = exp.events.setdefault(key, [])
            if seen:
                exp.duplicates += 1
            seen.append(Occurrence(rec.partition, rec.offset, verdict))
    return exp
