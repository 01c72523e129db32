"""Parked records: what the DLQ holds, by reason, and sending records back once fixed.

The worker parks every record it rejects on the DLQ topic (DlqRecord): the
reason, the origin (topic, partition, offset), the original bytes and
headers, under the original record's Kafka key. Once the cause is fixed on
the worker's side (a signing key it lacked, a limit raised), the original
record is sent to the usage topic again as it was: the same key (so the
same partition as the tenant's other records), bytes and headers (the
signature covers the bytes), plus one header, `tp-replay-of`, naming the
record's first origin. Replaying is safe to repeat: the worker counts an
event_id once; a record that is still bad is parked again, with the
replayed copy as its origin and the header naming the first one, so a later
replay over both sends it once.

One DLQ record names one event of an SDK envelope (batch_index); an
envelope with several bad events is sent back once, whole: its events
already counted are dropped by the dedup. A header whose value was null
travels back as empty bytes (the DLQ record does not tell them apart).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Final

from tokenpulse.errors import ServiceUnavailable
from tokenpulse.kafka_range import read_topic
from tokenpulse.schemas import DlqRecord, decode_dlq_record

Origin = tuple[str, int, int]  # the rejected record's topic, partition, offset

# Set by `replay` on each record it sends: "topic:partition:offset" of where
# the record was first parked from (Kafka topic names have no ':').
HEADER_REPLAY_OF: Final = "tp-replay-of"


def format_origin(origin: Origin) -> bytes:
    topic, partition, offset = origin
    return f"{topic}:{partition}:{offset}".encode()


def parse_origin(value: bytes) -> Origin | None:
    """`format_origin`'s value back; None when it is not one (a foreign header)."""
    topic, sep1, rest = value.decode(errors="replace").partition(":")
    partition, sep2, offset = rest.partition(":")
    numbers_ok = all(n.isascii() and n.isdigit() for n in (partition, offset))
    if not (topic and sep1 and sep2 and numbers_ok):
        return None
    return topic, int(partition), int(offset)


@dataclass(frozen=True)
class Parked:
    """One DLQ record and where it sits on the DLQ topic."""

    record: DlqRecord
    key: bytes | None  # the original record's Kafka key (the worker parks it under it)
    dlq_partition: int
    dlq_offset: int

    @property
    def origin(self) -> Origin:
        return self.record.topic, self.record.partition, self.record.offset

    @cached_property
    def first_origin(self) -> Origin:
        """Where the record was parked from before any replay: its origin, or
        what the `tp-replay-of` header of a replayed copy names."""
        for name, value in self.record.headers:
            if name == HEADER_REPLAY_OF:
                try:
                    named = parse_origin(base64.b64decode(value, validate=True))
                except binascii.Error:
                    named = None
                return named or self.origin
        return self.origin

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The original record's headers, with `tp-replay-of` naming the first origin."""
        kept = [(k, v) for k, v in self.record.header_values() if k != HEADER_REPLAY_OF]
        return [*kept, (HEADER_REPLAY_OF, format_origin(self.first_origin))]


@dataclass(frozen=True)
class Parking:
    """What a DLQ read found: the records it could decode, and how many it could not."""

    parked: list[Parked]
    unreadable: int  # not a DlqRecord (a foreign or corrupt record on the topic)


async def read_parked(
    bootstrap: str,
    dlq_topic: str,
    since: datetime,
    until: datetime | None = None,
    *,
    timeout_s: float = 120.0,
    progress: Callable[[int, int], None] | None = None,
) -> Parking:
    """The DLQ records parked from `since` to `until` (Kafka timestamps), in DLQ order."""
    _, msgs = await read_topic(
        bootstrap, dlq_topic, since, until, timeout_s=timeout_s, progress=progress
    )
    parked: list[Parked] = []
    unreadable = 0
    for m in sorted(msgs, key=lambda m: (m.timestamp, m.partition, m.offset)):
        try:
            record = decode_dlq_record(m.value or b"")
        except Exception:  # msgspec errors: not a DlqRecord
            unreadable += 1
            continue
        parked.append(Parked(record, m.key, m.partition, m.offset))
    return Parking(parked, unreadable)


def summarize(parking: Parking) -> dict[str, Any]:
    """Records and distinct original records (first origins) per reason, and
    records per origin topic."""
    reasons: dict[str, dict[str, Any]] = {}
    topics: dict[str, int] = {}
    for p in parking.parked:
        entry = reasons.setdefault(p.record.reason, {"records": 0, "origins": set()})
        entry["records"] += 1
        entry["origins"].add(p.first_origin)
        topics[p.record.topic] = topics.get(p.record.topic, 0) + 1
    return {
        "records": len(parking.parked),
        "unreadable": parking.unreadable,
        "origins": len({p.first_origin for p in parking.parked}),
        "by_reason": {
            reason: {"records": e["records"], "origins": len(e["origins"])}
            for reason, e in sorted(reasons.items(), key=lambda kv: (-kv[1]["records"], kv[0]))
        },
        "by_origin_topic": dict(sorted(topics.items())),
    }


def to_replay(
    parked: Iterable[Parked], usage_topic: str, reasons: Collection[str] | None = None
) -> list[Parked]:
    """The records to send back: one per original record parked from
    `usage_topic`, of `reasons` (None: any).

    An original that several DLQ records name is sent once, by the first of
    them: several bad events of one envelope, or a replayed copy parked
    again (its `tp-replay-of` header names the first origin).
    """
    seen: set[Origin] = set()
    out: list[Parked] = []
    for p in parked:
        if p.record.topic != usage_topic:
            continue
        if reasons is not None and p.record.reason not in reasons:
            continue
        if p.first_origin not in seen:
            seen.add(p.first_origin)
            out.append(p)
    return out


async def replay(bootstrap: str, usage_topic: str, parked: Sequence[Parked]) -> int:
    """Send each record's original key, bytes and headers (`Parked.replay_headers`)
    to `usage_topic`; how many.

    Acknowledged by every in-sync replica (acks=all) before this returns; a
    failure raises ServiceUnavailable naming how many were sent before it
    (sending again repeats them, which the dedup makes harmless).
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise ServiceUnavailable(
            f"cannot reach Kafka at {bootstrap}: {exc}; start it or set KAFKA_BOOTSTRAP_SERVERS",
            details={"bootstrap_servers": bootstrap},
        ) from exc
    sent = 0
    try:
        futures = [
            await producer.send(
                usage_topic,
                p.record.original(),
                key=p.key,
                headers=p.replay_headers(),
            )
            for p in parked
        ]
        for future in futures:
            await future
            sent += 1
    except KafkaError as exc:
        raise ServiceUnavailable(
            f"replay to {usage_topic} failed after {sent} of {len(parked)} records: {exc}; "
            "run it again (records sent twice are counted once)",
            details={"topic": usage_topic, "sent": sent, "to_send": len(parked)},
        ) from exc
    finally:
        await producer.stop()
    return sent
