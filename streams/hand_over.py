"""How the worker's fetches of the usage topic become InRecords, inside aiokafka's parse.

The records of a BatchConsumer's batch topics (transport.py) are built as
InRecords while aiokafka parses a fetch, inside getmany (`HandOverRecords`),
instead of as aiokafka ConsumerRecords that were then copied into
InRecords: parsing a record cost 2.5 us that way and 1.6 us with a record
built per `_consumer_record` call; built inline in the parse loop,
0.26-0.33 us less (round 9, bench/parse_bench.py: lz4 1.38 -> 1.12 us a
record), of the worker's ~8-10 us of CPU per event.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher

from tokenpulse.streams.processor import InRecord
from tokenpulse.streams.records import new_tuple


def record_headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    """Kafka headers as the processor's (name, value) tuple."""
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, dict) else raw
    return tuple((str(k), None if v is None else bytes(v)) for k, v in items)


def in_records(records: Sequence[Any], generation: int | None) -> list[InRecord]:
    """aiokafka ConsumerRecords of one fetch as InRecords stamped with its generation.

    Only used when HandOverRecords did not build InRecords already (another
    fetch parser installed by someone else, or a read_committed consumer,
    which Faust makes only for exactly_once). The generation stamps the fetch:
    a record fetched before a revocation is fenced by the processor even if
    it is handed over after the rebalance.
    """
    return [
        new_tuple(
            InRecord,
            (r.topic, r.partition, r.offset, r.key, r.value, record_headers(r.headers), generation),
        )
        for r in records
    ]


class HandOver:
    """The value deserializer of a BatchConsumer's aiokafka consumer.

    aiokafka hands the deserializer to the record parser of every fetch of
    that consumer, and to no other consumer's: so it marks whose records
    `HandOverRecords` builds as InRecords. For any other topic it is the
    identity (Faust deserializes those records itself, as without it).
    """

    __slots__ = ("app", "topics")

    def __init__(self, topics: Mapping[str, object], app: Any) -> None:
        self.topics = topics  # live: the transport's batch_handlers
        self.app = app

    def __call__(self, value: bytes | None) -> bytes | None:
        return value


class HandOverRecords(aiokafka_fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's fetch parser; a HandOver consumer's batch-topic records come out as InRecords.

    The generation is stamped as the record is parsed: inside getmany, after
    aiokafka waited for any reassignment in progress, and after the
    rebalance listener set the app's generation. A fetch from before a
    reassignment is dropped by aiokafka itself (its assignment changed), so
    a record is never stamped with a generation it was not fetched in.
    """

    def __iter__(self) -> Iterator[Any]:
        # FetchResult.getall takes records with `for msg in partition_records`:
        # given the generator itself, each record is one generator step, not
        # a PartitionRecords.__next__ call wrapped around one.
        records = self._records_iterator
        return iter(()) if records is None else records

    def _unpack_records(self) -> Iterator[Any]:
        hand_over = self._value_deserializer
        tp = self._tp
        if (
            type(hand_over) is not HandOver
            or tp.topic not in hand_over.topics
            or self._isolation_level != aiokafka_fetcher.READ_UNCOMMITTED
        ):
            yield from super()._unpack_records()
            return
        # aiokafka's loop for READ_UNCOMMITTED (aiokafka 0.14.0, pinned) with
        # the record built inline: a method call per record
        # (`_consumer_record`) cost about a fifth of the parse.
        records = self._records
        topic, partition = tp.topic, tp.partition
        app = hand_over.app
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                # Like aiokafka: the fetch is dropped and fetched again.
                raise kafka_errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            for record in batch:
                offset = record.offset
                if offset < self.next_fetch_offset:
                    continue  # before the fetch position (compressed message sets)
                headers = record.headers
                self.next_fetch_offset = offset + 1
                yield new_tuple(
                    InRecord,
                    (
                        topic,
                        partition,
                        offset,
                        record.key,
                        record.value,
                        tuple(headers) if headers else (),
                        app.consumer_generation_id,
                    ),
                )
            # As aiokafka: the batch's last offset survives compaction.
            self.next_fetch_offset = batch.next_offset


def install_hand_over() -> None:
    """Make aiokafka's fetcher parse with HandOverRecords (inert without a HandOver)."""
    # The fetcher looks PartitionRecords up in its module at every fetch.
    if aiokafka_fetcher.PartitionRecords is not HandOverRecords:
        aiokafka_fetcher.PartitionRecords = HandOverRecords
