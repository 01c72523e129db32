"""How the worker's fetches of the usage topic become InRecords, inside aiokafka's parse.

The records of a BatchConsumer's batch topics (transport.py) are built as
InRecords while aiokafka parses a fetch, inside getmany (`HandOverRecords`),
instead of as aiokafka ConsumerRecords that were then copied into
InRecords: parsing a record cost 2.5 us that way and 1.6 us with a record
built per `_consumer_record` call; built inline in the parse loop,
0.26-0.33 us less (round 9, bench/parse_bench.py: lz4 1.38 -> 1.12 us a
record), of the worker's ~8-10 us of CPU per event.

Since round 23 the records of a batch are read by `_fetch.unpack`
(streams/_fetch.c) into InRecords in one call, from the fetch's bytes that
`KeptFetch` keeps (`install_native_parse`); the batch level stays here.
aiokafka's record-by-record parse remains for what the C code leaves to
it, and when the module is not built or TOKENPULSE_NATIVE_FETCH_PARSE is
false (docs/streams.md).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from aiokafka import codec as kafka_codec
from aiokafka import errors as kafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.memory_records import MemoryRecords as _MEMORY_RECORDS
from aiokafka.record.util import calc_crc32c

from tokenpulse.streams.processor import InRecord
from tokenpulse.streams.records import new_tuple

try:  # record batches parsed in C (streams/_fetch.c), built by `make setup`
    from tokenpulse.streams import _fetch
except ImportError:  # not built: aiokafka's parser, record by record
    _fetch = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

NATIVE_PARSE: Final = _fetch is not None

# Kafka's record batch v2 header (DefaultRecordBatch), after baseOffset and
# batchLength: partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# firstTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, count.
_HEAD: Final = struct.Struct(">qiibIhiqqqhii")
_LENGTH: Final = struct.Struct(">qi")  # baseOffset, batchLength
_LOG_OVERHEAD: Final = _LENGTH.size
_CRC_FROM: Final = 21  # the CRC covers the batch from its attributes on
_CODEC_MASK: Final = 0x07
_CONTROL: Final = 0x20
_DECODERS: Final[dict[int, Callable[[bytes], bytes]]] = {
    1: kafka_codec.gzip_decode,
    2: kafka_codec.snappy_decode,
    3: kafka_codec.lz4_decode,
    4: kafka_codec.zstd_decode,
}


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

    _records: Any  # aiokafka's MemoryRecords, or the worker fetcher's KeptFetch

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
        app = hand_over.app
        data = self._records.data if type(self._records) is KeptFetch else None
        if _fetch is not None and data is not None:
            try:
                yield from self._unpack_native(data, app)
                return
            except _NotNative as exc:
                # A batch only aiokafka reads (or rejects, naming why): the
                # fetch from that batch on goes its way (records of it
                # before next_fetch_offset are skipped there).
                log.debug("%s: %s; aiokafka parses the rest of the fetch", tp, exc)
                self._records = _MEMORY_RECORDS(data[exc.pos :])
        # aiokafka's loop for READ_UNCOMMITTED (aiokafka 0.14.0, pinned) with
        # the record built inline: a method call per record
        # (`_consumer_record`) cost about a fifth of the parse.
        records = self._records
        topic, partition = tp.topic, tp.partition
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

    def _unpack_native(self, data: bytes, app: Any) -> Iterator[Any]:
        """The fetch's records by `_fetch.unpack`, a batch at a time.

        The batch level mirrors aiokafka's (MemoryRecords, DefaultRecordBatch):
        a partial batch at the end of the fetch is left for the next fetch,
        a CRC mismatch drops the fetch, a control batch is skipped. Raises
        _NotNative for what only aiokafka reads (a legacy message set) or
        should name (a malformed batch).
        """
        tp = self._tp
        topic, partition = tp.topic, tp.partition
        check_crcs = self._check_crcs
        size, pos = len(data), 0
        view = memoryview(data)  # slices of it are not copies (a batch is ~100-400 KB)
        while size - pos >= _LOG_OVERHEAD:
            base_offset, length = _LENGTH.unpack_from(data, pos)
            end = pos + _LOG_OVERHEAD + length
            if end > size:
                break  # cut by the fetch's byte limit: fetched again whole
            if length < _HEAD.size - _LOG_OVERHEAD or data[pos + 16] != 2:
                raise _NotNative("not a record batch v2", pos)
            (_, _, _, _, crc, attributes, last_delta, *_, count) = _HEAD.unpack_from(data, pos)
            if check_crcs and calc_crc32c(view[pos + _CRC_FROM : end]) != crc:
                # Like aiokafka: the fetch is dropped and fetched again.
                raise kafka_errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if not attributes & _CONTROL:
                records = view[pos + _HEAD.size : end]
                body: bytes | memoryview = records
                codec = attributes & _CODEC_MASK
                if codec:
                    decode = _DECODERS.get(codec)
                    if decode is None:
                        raise _NotNative(f"compression codec {codec}", pos)
                    body = decode(records.tobytes())  # as aiokafka hands them: bytes
                generation = app.consumer_generation_id
                try:
                    recs = _fetch.unpack(
                        body, count, base_offset, self.next_fetch_offset,
                        topic, partition, generation, InRecord,
                    )  # fmt: skip
                except ValueError as exc:
                    raise _NotNative(str(exc), pos) from None
                for rec in recs:
                    self.next_fetch_offset = rec[2] + 1
                    if app.consumer_generation_id != generation:
                        # A rebalance while the fetch was handed out: stamped
                        # as the record-by-record parse stamps, when taken.
                        rec = rec._replace(generation=app.consumer_generation_id)
                    yield rec
            # As aiokafka: the batch's last offset survives compaction.
            self.next_fetch_offset = base_offset + last_delta + 1
            pos = end


class _NotNative(Exception):
    """A batch `_fetch.unpack` leaves to aiokafka's parser, at `pos` in the fetch."""

    def __init__(self, why: str, pos: int) -> None:
        super().__init__(why)
        self.pos = pos


class KeptFetch:
    """aiokafka's MemoryRecords that keeps the fetch's bytes for HandOverRecords.

    aiokafka's MemoryRecords (Cython) does not expose its buffer; the C
    parse reads the batches from these bytes instead.
    """

    __slots__ = ("_records", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._records = _MEMORY_RECORDS(data)

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        return self._records.next_batch()

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())


def install_hand_over() -> None:
    """Make aiokafka's fetcher parse with HandOverRecords (inert without a HandOver)."""
    # The fetcher looks PartitionRecords up in its module at every fetch.
    if aiokafka_fetcher.PartitionRecords is not HandOverRecords:
        aiokafka_fetcher.PartitionRecords = HandOverRecords


def install_native_parse(enabled: bool = True) -> bool:
    """Have HandOverRecords read fetches with `_fetch.unpack` (True: it will).

    The fetcher builds a fetch's MemoryRecords by the name in its module:
    KeptFetch keeps the bytes the C parse reads. `enabled=False` (or the
    module not built, which is logged) puts aiokafka's MemoryRecords back.
    """
    native = enabled and _fetch is not None
    if enabled and not native:
        log.warning(
            "fetched records are read by aiokafka, one at a time: the C parse "
            "(tokenpulse.streams._fetch) was not built; run `make setup` with a C compiler"
        )
    aiokafka_fetcher.MemoryRecords = KeptFetch if native else _MEMORY_RECORDS
    return native
