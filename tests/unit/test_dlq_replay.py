"""`tokenpulse dlq`: counting parked records and choosing what a replay sends, without a broker."""

from __future__ import annotations

from tokenpulse.dlq import (
    HEADER_REPLAY_OF,
    Parked,
    Parking,
    format_origin,
    parse_origin,
    summarize,
    to_replay,
)
from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import dlq_record_for

USAGE = "p.tokenpulse.usage.v1"


def _parked(
    reason: str, offset: int, *, topic: str = USAGE, index: int | None = None, at: int = 0
) -> Parked:
    err = InvalidRecord(f"bad [{reason}]", reason=reason)
    if index is not None:
        err.details["batch_index"] = index
    record = dlq_record_for(
        err,
        b'{"event_id":"e%d"}' % offset,
        topic=topic,
        partition=offset % 2,
        offset=offset,
        headers=[("tp-tenant", b"acme"), ("tp-sig", b"v1,kid=k2,sig=00")],
    )
    return Parked(record, b"acme/agent-1", 0, at)


def test_summary_counts_records_and_original_records_per_reason() -> None:
    parking = Parking(
        [
            _parked("bad_signature", 10),
            _parked("wrong_type", 11, index=0),
            _parked("wrong_type", 11, index=3),  # a second bad event of one envelope
            _parked("bad_signature", 12),
            _parked("malformed_json", 5, topic="other.topic"),
        ],
        unreadable=1,
    )
    doc = summarize(parking)
    assert doc["records"] == 5
    assert doc["origins"] == 4
    assert doc["unreadable"] == 1
    assert doc["by_reason"] == {
        "bad_signature": {"records": 2, "origins": 2},
        "wrong_type": {"records": 2, "origins": 1},
        "malformed_json": {"records": 1, "origins": 1},
    }
    assert list(doc["by_reason"]) == ["bad_signature", "wrong_type", "malformed_json"]
    assert doc["by_origin_topic"] == {"other.topic": 1, USAGE: 4}


def test_a_replay_sends_each_original_record_of_the_reasons_once_in_order() -> None:
    parked = [
        _parked("wrong_type", 11, index=0),
        _parked("bad_signature", 12),
        _parked("wrong_type", 11, index=3),
        _parked("bad_signature", 10),
        _parked("bad_signature", 9, topic="other.topic"),  # not from this usage topic
        _parked("bad_signature", 12),  # the same original parked twice
    ]
    chosen = to_replay(parked, USAGE, {"bad_signature"})
    assert [p.origin for p in chosen] == [(USAGE, 0, 12), (USAGE, 0, 10)]
    both = to_replay(parked, USAGE, {"bad_signature", "wrong_type"})
    assert [p.record.offset for p in both] == [11, 12, 10]
    assert [p.record.offset for p in to_replay(parked, USAGE)] == [11, 12, 10]
    assert to_replay(parked, USAGE, {"missing_signature"}) == []


def test_what_a_replay_sends_is_the_original_record() -> None:
    p = _parked("bad_signature", 10)
    assert p.record.original() == b'{"event_id":"e10"}'
    assert p.record.header_values() == [("tp-tenant", b"acme"), ("tp-sig", b"v1,kid=k2,sig=00")]
    assert p.key == b"acme/agent-1"


def _replayed_copy(first: Parked, reason: str, offset: int) -> Parked:
    """`first` sent back by `replay` and parked again, from its new offset."""
    err = InvalidRecord(f"bad [{reason}]", reason=reason)
    record = dlq_record_for(
        err,
        first.record.original(),
        topic=USAGE,
        partition=first.record.partition,
        offset=offset,
        headers=first.replay_headers(),
    )
    return Parked(record, first.key, 0, offset)


def test_a_replayed_copy_parked_again_is_the_same_original_record() -> None:
    first = _parked("bad_signature", 10)
    assert first.first_origin == (USAGE, 0, 10)
    assert first.replay_headers() == [
        ("tp-tenant", b"acme"),
        ("tp-sig", b"v1,kid=k2,sig=00"),
        (HEADER_REPLAY_OF, USAGE.encode() + b":0:10"),
    ]
    again = _replayed_copy(first, "bad_signature", 40)
    third = _replayed_copy(again, "bad_signature", 70)  # replayed twice, parked each time
    assert again.origin == (USAGE, 0, 40)
    assert again.first_origin == third.first_origin == (USAGE, 0, 10)
    # The header names the first origin however often the record went round.
    assert third.replay_headers() == first.replay_headers()
    other = _parked("bad_signature", 12)
    chosen = to_replay([first, again, other, third], USAGE, {"bad_signature"})
    assert chosen == [first, other]
    doc = summarize(Parking([first, again, third, other], unreadable=0))
    assert doc["origins"] == 2
    assert doc["by_reason"] == {"bad_signature": {"records": 4, "origins": 2}}


def test_a_foreign_or_broken_replay_header_leaves_the_record_its_own_origin() -> None:
    broken = (b"not an origin", b"topic:x:1", b":0:1", b"topic:0", b"t::1", b"t:0:1\xff")
    broken += ("t:\u00b2:1".encode(),)  # a digit to str.isdigit, not to int()
    for value in broken:
        p = _parked("bad_signature", 10)
        record = dlq_record_for(
            InvalidRecord("bad", reason="bad_signature"),
            p.record.original(),
            topic=USAGE,
            partition=0,
            offset=10,
            headers=[(HEADER_REPLAY_OF, value)],
        )
        assert Parked(record, None, 0, 0).first_origin == (USAGE, 0, 10), value
    assert parse_origin(format_origin(("a.b-c_d", 3, 2**40))) == ("a.b-c_d", 3, 2**40)
