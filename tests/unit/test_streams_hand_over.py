"""Fetched records of batch topics come out of aiokafka's parser as InRecords.

Runs aiokafka's own fetch parser (PartitionRecords, looked up in its module
as the Fetcher does) over real v2 record batches: no broker needed. Each
test runs twice: the fetch as aiokafka's MemoryRecords (the records read
by aiokafka, one at a time) and as KeptFetch, which the installed fetcher
builds (the records read by streams/_fetch.c, a batch at a time).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as aiokafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from tokenpulse.streams.hand_over import (
    HandOver,
    HandOverRecords,
    KeptFetch,
    install_hand_over,
)
from tokenpulse.streams.processor import InRecord

from .test_fetch_native import _batch


@pytest.fixture(params=["aiokafka", "native"], autouse=True)
def fetch_cls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fetch's records object: which parser reads the batch topic's records."""
    cls = MemoryRecords if request.param == "aiokafka" else KeptFetch
    monkeypatch.setattr(sys.modules[__name__], "FETCH", cls)
    return cls


FETCH: Any = MemoryRecords


def _parse(topic: str, data: bytes, deserializer: object) -> list[object]:
    install_hand_over()
    records = aiokafka_fetcher.PartitionRecords(
        TopicPartition(topic, 2), FETCH(data), [], 40, None, deserializer, True, 0
    )
    return list(records)


RECORDS = [
    (b"acme", b'{"a":1}', [("tp-sig", b"xy"), ("none", None)]),
    (None, None, []),  # a tombstone still reaches the processor (it is rejected there)
]


def test_records_of_a_batch_topic_are_parsed_into_in_records_with_the_generation() -> None:
    app = SimpleNamespace(consumer_generation_id=7)
    hand_over = HandOver({"usage": object()}, app)
    out = _parse("usage", _batch(40, RECORDS), hand_over)
    assert out == [
        InRecord("usage", 2, 40, b"acme", b'{"a":1}', (("tp-sig", b"xy"), ("none", None)), 7),
        InRecord("usage", 2, 41, None, None, (), 7),
    ]
    assert all(type(r) is InRecord for r in out)
    app.consumer_generation_id = 8  # stamped as parsed, not when the fetch arrived
    assert _parse("usage", _batch(42, RECORDS[:1]), hand_over)[0].generation == 8


def _records(topic: str, data: bytes, deserializer: object, fetch_offset: int) -> Any:
    install_hand_over()
    return aiokafka_fetcher.PartitionRecords(
        TopicPartition(topic, 2), FETCH(data), [], fetch_offset, None, deserializer, True, 0
    )


def test_the_fetch_position_follows_each_record_and_earlier_offsets_are_skipped() -> None:
    hand_over = HandOver({"usage": object()}, SimpleNamespace(consumer_generation_id=1))
    five = [(b"k", b"v%d" % i, []) for i in range(5)]
    # Fetched from offset 12 while the batch starts at 10 (a compressed set).
    records = _records("usage", _batch(10, five) + _batch(15, five), hand_over, 12)
    taken = []
    for rec in records:  # getall(max_records) stops mid-batch and resumes later
        taken.append(rec.offset)
        if len(taken) == 4:
            break
    assert (taken, records.next_fetch_offset) == ([12, 13, 14, 15], 16)
    taken += [rec.offset for rec in records]
    assert (taken, records.next_fetch_offset) == ([12, 13, 14, 15, 16, 17, 18, 19], 20)


class _PartitionState:
    """What aiokafka's FetchResult reads of a partition's assignment state."""

    def __init__(self, position: int) -> None:
        self.paused = False
        self.position = position

    def consumed_to(self, offset: int) -> None:
        self.position = offset


def test_aiokafkas_getall_takes_the_records_in_runs_and_getone_between_them() -> None:
    hand_over = HandOver({"usage": object()}, SimpleNamespace(consumer_generation_id=1))
    five = [(b"k", b"v%d" % i, []) for i in range(5)]
    records = _records("usage", _batch(10, five) + _batch(15, five), hand_over, 12)
    state = _PartitionState(12)
    assignment = SimpleNamespace(active=True, state_value=lambda tp: state)
    fetched = aiokafka_fetcher.FetchResult(
        TopicPartition("usage", 2), assignment=assignment, partition_records=records, backoff=0
    )
    assert [r.offset for r in fetched.getall(max_records=4)] == [12, 13, 14, 15]
    assert state.position == 16
    one = fetched.getone()
    assert (one.offset, state.position) == (16, 17)
    assert [r.offset for r in fetched.getall(max_records=2)] == [17, 18]
    assert [r.offset for r in fetched.getall(max_records=5)] == [19]  # the rest, then done
    assert (state.position, fetched.has_more()) == (20, False)


def test_a_corrupt_batch_raises_like_aiokafka_so_the_fetch_is_dropped() -> None:
    hand_over = HandOver({"usage": object()}, SimpleNamespace(consumer_generation_id=1))
    data = bytearray(_batch(40, RECORDS))
    data[-1] ^= 0xFF  # the last record's last byte, its bits flipped
    with pytest.raises(aiokafka_errors.CorruptRecordException, match="Invalid CRC"):
        list(_records("usage", bytes(data), hand_over, 40))


def test_other_topics_and_other_consumers_still_get_aiokafka_consumer_records() -> None:
    hand_over = HandOver({"usage": object()}, SimpleNamespace(consumer_generation_id=1))
    for topic, deserializer in (("quotas", hand_over), ("usage", None)):
        out = _parse(topic, _batch(40, RECORDS), deserializer)
        assert [type(r) for r in out] == [ConsumerRecord, ConsumerRecord]
        assert (out[0].offset, out[0].value, out[1].value) == (40, b'{"a":1}', None)


def test_install_is_idempotent_and_keeps_the_parser_an_aiokafka_one() -> None:
    install_hand_over()
    install_hand_over()
    assert aiokafka_fetcher.PartitionRecords is HandOverRecords
    assert HandOverRecords.__mro__[1].__name__ == "PartitionRecords"
    assert HandOver({}, None)(b"x") == b"x"
