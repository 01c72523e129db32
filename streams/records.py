"""What the processor reads and counts: records, their decoding, and rejections.

`RecordDecoder` turns one partition's slice of a batch into accepted events
and DLQ records: size check -> `decode_usage_record` (a single event or an
SDK batch envelope) -> tenant signature. A record that breaks a rule, or
that makes the code fail, becomes a DLQ record with its reason; it never
stops the partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, NamedTuple

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas._reasons import RejectReason
from tokenpulse.schemas.dlq import dlq_record_for, encode_dlq_record
from tokenpulse.schemas.signing import Keyring, verify_record
from tokenpulse.schemas.usage import (
    ENVELOPE_PREFIX,
    MAX_RECORD_BYTES,
    UsageEvent,
    decode_usage_event,
    decode_usage_record,
    tenant_within,
    verdicts_of_non_event,
)
from tokenpulse.sinks.base import AcceptedEvent
from tokenpulse.streams.quotas import Outgoing, Touch

log = logging.getLogger("tokenpulse.streams.processor")

Header = tuple[str, bytes | None]


# NamedTuple's generated __new__ is a Python function; building the tuple
# directly skips it (590 -> 350 ns per object here). Used where one is built
# for every record or event, with every field given in order.
new_tuple: Final = tuple.__new__


class InRecord(NamedTuple):
    """One Kafka record as the processor sees it.

    A NamedTuple, not a frozen dataclass: one is built per record and a
    frozen dataclass's __init__ (object.__setattr__ per field) cost several
    times more (the worker's hottest constructor).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()
    # Consumer-group generation the record was fetched in (None: not tracked).
    generation: int | None = None


@dataclass
class Counters:
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    late: int = 0
    replayed_skipped: int = 0  # written by this worker before: skipped
    reverified: int = 0  # possibly durable in part: processed again against the store
    fenced_dropped: int = 0  # records of revoked generations, never written here
    confirmations: int = 0
    sink_retries: int = 0
    commits: int = 0
    rows_written: int = 0
    alerts: int = 0
    keyring_reloads: int = 0  # changed keyring files applied
    keyring_reload_failures: int = 0  # changed keyring files that did not load
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class Work:
    """What one partition's slice of a batch produced."""

    accepted: list[AcceptedEvent] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)


def touch(ev: UsageEvent) -> Touch:
    return Touch(ev.tenant_id, ev.model, ev.occurred_at, ev.event_id)


class RecordDecoder:
    def __init__(
        self,
        *,
        dlq_topic: str,
        keyring: Keyring | None,
        max_record_bytes: int,
        counters: Counters,
        clock: Callable[[], float],
    ) -> None:
        self.dlq_topic = dlq_topic
        self.keyring = keyring  # None: signatures are not verified (broker ACLs instead)
        self.max_record_bytes = max_record_bytes
        self.counters = counters
        self.clock = clock

    def decode_slice(
        self,
        processed_upto: int,
        verify_upto: int,
        recs: Sequence[InRecord],
        work: Work,
        *,
        recheck_replayed: bool,
        ingested_at: datetime,
    ) -> list[InRecord]:
        """The records to process, decoded into `work`.

        A record in (`verify_upto`, `processed_upto`] was made durable by this
        worker: not applied again. A record at or below `verify_upto` may be
        durable only in part (see PartitionState.verify_upto): it is processed
        again, and the dedup stage drops the events the store already holds.
        With `recheck_replayed`, the events of both kinds have their quotas
        re-checked (an alert may not have gone out before a crash).
        `ingested_at` is one moment per batch: every event of a batch shares it.
        """
        fresh: list[InRecord] = []
        accepted = work.accepted
        # The common record (one valid event, signed in sign_record's form
        # or not verified at all) is decoded right here; anything else takes
        # _decode_record, which names what is wrong. The calls and lists this
        # saves were ~0.5 us of ~3.5 us per record unsigned, and ~10 of 23
        # signed (bench/prepare_bench.py --signed).
        keyring = self.keyring
        size_limit = min(self.max_record_bytes, MAX_RECORD_BYTES)
        # Each record's signer, the slice's HMACs in one call (None: not
        # valid or not in sign_record's form; also for a record over the
        # limit, rejected before its signature counts).
        signers = None if keyring is None else self._signers(keyring, recs, size_limit)
        for index, rec in enumerate(recs):
            offset = rec.offset
            if verify_upto < offset <= processed_upto:
                self.counters.replayed_skipped += 1
                if recheck_replayed and rec.value is not None:
                    work.touches += [
                        touch(v)
                        for v in decode_usage_record(rec.value)
                        if isinstance(v, UsageEvent)
                    ]
                continue
            fresh.append(rec)
            accepted_before = len(accepted)
            value = rec.value
            not_event: InvalidRecord | None = None
            if (
                type(value) is bytes
                and len(value) <= size_limit
                and not value.startswith(ENVELOPE_PREFIX)  # an SDK envelope: decoded below
            ):
                try:
                    event = decode_usage_event(value)
                except InvalidRecord as exc:
                    not_event = exc  # an envelope, or its reason: not decoded again
                except Exception:  # noqa: S110 - _decode_record meets it again and parks the record
                    pass
                else:
                    if signers is None or (
                        (signer := signers[index]) is not None
                        and tenant_within(event.tenant_id, signer)
                    ):
                        accepted.append(
                            new_tuple(
                                AcceptedEvent,
                                (event, rec.topic, rec.partition, offset, ingested_at, False),
                            )
                        )
                        if offset <= verify_upto:
                            self._reverified(work, accepted_before, recheck_replayed)
                        continue
                    # A signature rejected, or in a form only verify_record
                    # knows: _decode_record decides, with the reason.
            try:
                signer = None if signers is None else signers[index]
                self._decode_record(rec, work, ingested_at, signer, not_event)
            except Exception as exc:  # a bug must not stop the partition: park the record
                log.exception("unexpected error on %s/%d@%d", rec.topic, rec.partition, offset)
                err = InvalidRecord(f"processing failed: {exc!r}", reason="processing_error")
                self.reject(rec, err, work)
            if offset <= verify_upto:
                self._reverified(work, accepted_before, recheck_replayed)
        self.counters.records += len(fresh)
        return fresh

    @staticmethod
    def _signers(keyring: Keyring, recs: Sequence[InRecord], size_limit: int) -> list[str | None]:
        try:
            return keyring.signers_of(recs, size_limit)
        except Exception:
            # A bug must not stop the partition: each record then goes to
            # verify_record, inside the per-record guard that parks it.
            log.exception("signature check of a slice failed; checking record by record")
            return [None] * len(recs)

    def _reverified(self, work: Work, accepted_before: int, recheck_replayed: bool) -> None:
        self.counters.reverified += 1
        if recheck_replayed:
            work.touches += [touch(a.event) for a in work.accepted[accepted_before:]]

    def _decode_record(
        self,
        rec: InRecord,
        work: Work,
        ingested: datetime,
        signer: str | None,
        not_event: InvalidRecord | None = None,
    ) -> None:
        """Decode one record into `work`.

        `signer`: the record's signer from `Keyring.signers_of`, one HMAC
        over the record however many tenants its events name (None: not in
        sign_record's form or not valid, so each tenant asks verify_record
        for the verdict). `not_event`: the record already failed to decode
        as one event, with this error (it is an envelope, or rejected for
        that reason).
        """
        value = rec.value
        if value is None:
            err = InvalidRecord(
                "record has no value (tombstone); publish one UsageEvent JSON object per record",
                reason=str(RejectReason.MALFORMED_JSON),
            )
            self.reject(rec, err, work)
            return
        if len(value) > self.max_record_bytes:
            err = InvalidRecord(
                f"record is {len(value)} bytes, limit {self.max_record_bytes}",
                reason=str(RejectReason.RECORD_TOO_LARGE),
            )
            self.reject(rec, err, work)
            return
        keyring = self.keyring
        verified: set[str] = set()
        verdicts = (
            decode_usage_record(value)
            if not_event is None
            else verdicts_of_non_event(bytes(value), not_event)
        )
        for index, verdict in enumerate(verdicts):
            if isinstance(verdict, InvalidRecord):
                self.reject(rec, verdict, work)
                continue
            if keyring is not None and verdict.tenant_id not in verified:
                if signer is None or not tenant_within(verdict.tenant_id, signer):
                    try:
                        verify_record(
                            value, rec.headers, tenant_id=verdict.tenant_id, keyring=keyring
                        )
                    except InvalidRecord as err:
                        err.details.setdefault("batch_index", index)
                        self.reject(rec, err, work)
                        continue
                verified.add(verdict.tenant_id)
            work.accepted.append(
                new_tuple(
                    AcceptedEvent, (verdict, rec.topic, rec.partition, rec.offset, ingested, False)
                )
            )

    def reject(self, rec: InRecord, err: InvalidRecord, work: Work) -> None:
        self.counters.rejected += 1
        by_reason = self.counters.rejected_by_reason
        by_reason[err.reason] = by_reason.get(err.reason, 0) + 1
        dlq = dlq_record_for(
            err,
            rec.value or b"",
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            headers=rec.headers,
        )
        work.outgoing.append(Outgoing(self.dlq_topic, rec.key or b"", encode_dlq_record(dlq)))
