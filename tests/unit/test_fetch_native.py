"""The C record parse (streams/_fetch.c) gives what aiokafka's parse gives, or leaves it to it.

Every fetch here is parsed twice by HandOverRecords: from aiokafka's
MemoryRecords (aiokafka reads each record) and from KeptFetch (the worker's
fetches: `_fetch.unpack` reads a batch at a time), and the two must agree
record for record, in the fetch position too, or fail with aiokafka's error.
"""

from __future__ import annotations

import logging
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import codec as kafka_codec
from aiokafka import errors as aiokafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.streams import hand_over
from tokenpulse.streams.hand_over import (
    HandOver,
    KeptFetch,
    install_hand_over,
    install_native_parse,
)
from tokenpulse.streams.processor import InRecord
from tokenpulse.streams.settings import WorkerSettings

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]

OPTIONAL_CODECS = ((2, kafka_codec.has_snappy()), (4, kafka_codec.has_zstd()))
CODECS = [0, 1, 3] + [codec for codec, available in OPTIONAL_CODECS if available]


def _batch(
    base_offset: int, records: list[Record], codec: int = 0, *, control: bool = False
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=control,
        producer_id=7 if control else -1,
        producer_epoch=0 if control else -1,
        base_sequence=-1,
        batch_size=1 << 22,
    )
    for delta, (key, value, headers) in enumerate(records):
        builder.append(delta, timestamp=1_700_000_000_000, key=key, value=value, headers=headers)
    buf = builder.build()
    struct.pack_into(">q", buf, 0, base_offset)  # the broker assigns the base offset
    if control:
        # The attributes' control bit, and the CRC over them again.
        attributes = struct.unpack_from(">h", buf, 21)[0] | 0x20
        struct.pack_into(">h", buf, 21, attributes)
        from aiokafka.record.util import calc_crc32c

        struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))
    return bytes(buf)


class Counting:
    """`_fetch` with its calls counted: the native parse really ran."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def unpack(self, *args: Any) -> Any:
        self.calls += 1
        return self.real.unpack(*args)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> Counting:
    assert hand_over.NATIVE_PARSE, "make setup builds streams/_fetch.c here"
    spy = Counting(hand_over._fetch)
    monkeypatch.setattr(hand_over, "_fetch", spy)
    return spy


def _take(
    data: bytes, fetch_cls: Any, fetch_offset: int, app: Any, runs: int = 0
) -> tuple[list[Any], int]:
    """The records (in getall runs of `runs`, 0 = all at once) and the fetch position."""
    install_hand_over()
    parser = aiokafka_fetcher.PartitionRecords(
        TopicPartition("usage", 3),
        fetch_cls(data),
        [],
        fetch_offset,
        None,
        HandOver({"usage": object()}, app),
        True,
        0,
    )
    out: list[Any] = []
    if not runs:
        return list(parser), parser.next_fetch_offset
    while True:
        taken = 0
        for rec in parser:
            out.append(rec)
            taken += 1
            if taken == runs:
                break
        if taken < runs:
            return out, parser.next_fetch_offset


def _both(data: bytes, fetch_offset: int = 0, runs: int = 0) -> tuple[Any, Any]:
    app = SimpleNamespace(consumer_generation_id=5)
    return (
        _take(data, MemoryRecords, fetch_offset, app, runs),
        _take(data, KeptFetch, fetch_offset, app, runs),
    )


_header_name = st.text(max_size=12)
_bytes_or_none = st.none() | st.binary(max_size=300)
_records = st.lists(
    st.tuples(
        _bytes_or_none,
        _bytes_or_none,
        st.lists(st.tuples(_header_name, _bytes_or_none), max_size=3),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.tuples(_records, st.sampled_from(CODECS)), min_size=1, max_size=4),
    skip=st.integers(min_value=0, max_value=30),
    runs=st.sampled_from([0, 1, 7, 2000]),
    cut=st.integers(min_value=0, max_value=60),
)
def test_the_c_parse_equals_aiokafkas_on_any_batches(
    batches: list[tuple[list[Record], int]], skip: int, runs: int, cut: int
) -> None:
    spy = Counting(hand_over._fetch)
    real, hand_over._fetch = hand_over._fetch, spy  # type: ignore[assignment]
    try:
        base, data = 100, b""
        for records, codec in batches:
            data += _batch(base, records, codec)
            base += len(records) + 2  # compaction: gaps between batches
        # A fetch cut by its byte limit ends inside a batch (never the first).
        first_len = len(_batch(100, *batches[0]))
        data = data[: max(first_len, len(data) - cut)]
        theirs, ours = _both(data, fetch_offset=100 + skip, runs=runs)
        assert ours == theirs
        assert all(type(r) is InRecord for r in ours[0])
        assert spy.calls >= 1 or not ours[0]
    finally:
        hand_over._fetch = real


def test_header_names_and_values_of_every_kind(native: Counting) -> None:
    records: list[Record] = [
        (b"k", b"v", [("tp-sig", b"v1,kid=a,sig=00"), ("tp-tenant", b"acme")]),
        (None, b"", [("", b""), ("caf\u00e9 \u2603", None)]),
        (b"", None, []),
    ]
    theirs, ours = _both(_batch(0, records, 3))
    assert ours == theirs
    assert ours[0][1].headers == (("", b""), ("caf\u00e9 \u2603", None))
    assert ours[0][2].headers == ()
    assert native.calls == 1


def test_a_control_batch_is_skipped_and_moves_the_fetch_position(native: Counting) -> None:
    data = _batch(10, [(b"k", b"a", [])]) + _batch(11, [(b"c", b"x", [])], control=True)
    data += _batch(12, [(b"k", b"b", [])])
    theirs, ours = _both(data)
    assert ours == theirs
    assert [r.offset for r in ours[0]] == [10, 12]


def test_a_stale_generation_is_stamped_when_the_record_is_taken(native: Counting) -> None:
    app = SimpleNamespace(consumer_generation_id=1)
    install_hand_over()
    parser = aiokafka_fetcher.PartitionRecords(
        TopicPartition("usage", 3),
        KeptFetch(_batch(0, [(b"k", b"v%d" % i, []) for i in range(4)])),
        [],
        0,
        None,
        HandOver({"usage": object()}, app),
        True,
        0,
    )
    first = next(iter(parser))
    app.consumer_generation_id = 2  # a rebalance between two getall runs
    rest = list(parser)
    assert [first.generation, *(r.generation for r in rest)] == [1, 2, 2, 2]
    assert type(rest[0]) is InRecord


def test_a_corrupt_crc_drops_the_fetch_as_aiokafka_does(native: Counting) -> None:
    data = bytearray(_batch(40, [(b"k", b"v", [])]))
    data[-1] ^= 0xFF
    with pytest.raises(aiokafka_errors.CorruptRecordException, match="Invalid CRC"):
        _take(bytes(data), KeptFetch, 40, SimpleNamespace(consumer_generation_id=1))
    assert native.calls == 0


def _malformed_batch() -> bytes:
    """A batch whose CRC is right and whose record length runs past it."""
    from aiokafka.record.util import calc_crc32c

    buf = bytearray(_batch(0, [(b"k", b"value", [])]))
    buf[61] = 0x7E  # the record's length varint: 63, more than is there
    struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))
    return bytes(buf)


def test_a_malformed_record_gets_aiokafkas_own_error(native: Counting) -> None:
    good = _batch(0, [(b"k", b"a", [])])
    bad = _malformed_batch()
    struct.pack_into(">q", bytearray(bad), 0, 1)
    data = good + bad[:0] + bytes(struct.pack(">q", 1)) + bad[8:]
    with pytest.raises(aiokafka_errors.CorruptRecordException) as theirs:
        _take(data, MemoryRecords, 0, SimpleNamespace(consumer_generation_id=1))
    with pytest.raises(aiokafka_errors.CorruptRecordException) as ours:
        _take(data, KeptFetch, 0, SimpleNamespace(consumer_generation_id=1))
    assert str(ours.value) == str(theirs.value)
    assert native.calls == 2  # the good batch, then the bad one handed to aiokafka


def test_a_legacy_message_set_is_left_to_aiokafka(native: Counting) -> None:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    for i in range(3):
        builder.append(i, timestamp=1_700_000_000_000, key=b"k", value=b"v%d" % i)
    theirs, ours = _both(bytes(builder.build()))
    assert ours == theirs
    assert [r.value for r in ours[0]] == [b"v0", b"v1", b"v2"]
    assert native.calls == 0


def test_the_fetcher_builds_kept_fetches_only_while_the_c_parse_is_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aiokafka_fetcher, "MemoryRecords", MemoryRecords)  # restored after
    assert install_native_parse()  # make setup built streams/_fetch.c here
    assert aiokafka_fetcher.MemoryRecords is KeptFetch
    assert not install_native_parse(False)
    assert aiokafka_fetcher.MemoryRecords is MemoryRecords
    assert not caplog.records
    monkeypatch.setattr(hand_over, "_fetch", None)  # a machine without a C compiler
    with caplog.at_level(logging.WARNING, logger="tokenpulse.streams.hand_over"):
        assert not install_native_parse()
    assert aiokafka_fetcher.MemoryRecords is MemoryRecords
    assert "not built" in caplog.text


def test_the_setting() -> None:
    assert WorkerSettings.from_env({}).native_fetch_parse
    off = WorkerSettings.from_env({"TOKENPULSE_NATIVE_FETCH_PARSE": "false"})
    assert not off.native_fetch_parse


def _until_error(data: bytes, fetch_cls: Any) -> tuple[list[Any], str]:
    install_hand_over()
    parser = aiokafka_fetcher.PartitionRecords(
        TopicPartition("usage", 3),
        fetch_cls(data),
        [],
        0,
        None,
        HandOver({"usage": object()}, SimpleNamespace(consumer_generation_id=1)),
        True,
        0,
    )
    taken: list[Any] = []
    try:
        for rec in parser:
            taken.append(rec)
    except aiokafka_errors.CorruptRecordException as exc:
        return taken, str(exc)
    return taken, ""


def test_aiokafka_takes_over_at_the_batch_it_is_left_and_nothing_is_handed_twice(
    native: Counting,
) -> None:
    bad = _malformed_batch()
    data = (
        _batch(10, [(b"c", b"x", [])], control=True)
        + _batch(11, [(b"k", b"a", []), (b"k", b"b", [])])
        + struct.pack(">q", 13)
        + bad[8:]
    )
    theirs = _until_error(data, MemoryRecords)
    ours = _until_error(data, KeptFetch)
    assert ours == theirs
    assert [r.offset for r in ours[0]] == [11, 12]
    assert "invalid record" in ours[1].lower()
