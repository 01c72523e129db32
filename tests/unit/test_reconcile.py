"""Reconciliation rules without a broker: expectation, comparison, time parsing, table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokenpulse.cli.reconcile import parse_time, render_table
from tokenpulse.errors import ConfigError
from tokenpulse.reconcile import ChRow, DlqEntry, KafkaRecord, build_expected, compare
from tokenpulse.reconcile.run import dlq_topic_for
from tokenpulse.schemas import Keyring, UsageEvent, encode_usage_event, sign_record

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _ev(eid: str, tenant: str = "acme", tokens: int = 10) -> UsageEvent:
    return UsageEvent(
        event_id=eid,
        tenant_id=tenant,
        occurred_at=T0,
        model="m",
        input_tokens=tokens,
        output_tokens=1,
    )


def _rec(
    offset: int,
    value: bytes | None,
    partition: int = 0,
    headers: tuple[tuple[str, bytes | None], ...] = (),
) -> KafkaRecord:
    return KafkaRecord("u", partition, offset, value, headers)


def _row(ev: UsageEvent, offset: int, partition: int = 0, tokens: int | None = None) -> ChRow:
    return ChRow(
        ev.tenant_id,
        ev.event_id,
        partition,
        offset,
        ev.input_tokens if tokens is None else tokens,
        ev.output_tokens,
        0,
    )


def test_duplicates_first_occurrence_and_rejections_including_tombstones() -> None:
    a, b = _ev("a"), _ev("b", "globex")
    recs = [
        _rec(0, encode_usage_event(a)),
        _rec(1, encode_usage_event(a)),
        _rec(2, b"{bad"),
        _rec(3, None),
        _rec(4, encode_usage_event(b)),
    ]
    exp = build_expected(recs)
    assert exp.duplicates == 1
    assert exp.first(("acme", "a")).offset == 0
    assert [(r.offset, r.reason) for r in exp.rejections] == [
        (2, "malformed_json"),
        (3, "malformed_json"),
    ]
    assert build_expected(recs, max_record_bytes=10).rejections[0].reason == "record_too_large"


def test_keyring_rejects_unsigned_and_accepts_signed() -> None:
    ring = Keyring({"acme": {"k1": b"s3cret"}})
    value = encode_usage_event(_ev("a"))
    signed = tuple(sign_record(value, tenant_id="acme", key_id="k1", secret=b"s3cret"))
    exp = build_expected([_rec(0, value), _rec(1, value, headers=signed)], keyring=ring)
    assert [(r.offset, r.reason, r.batch_index) for r in exp.rejections] == [
        (0, "missing_signature", 0)
    ]
    assert exp.first(("acme", "a")).offset == 1


def test_compare_names_each_kind_and_pending_is_not_a_difference() -> None:
    a, b, c, d = _ev("a"), _ev("b"), _ev("c"), _ev("d")
    recs = [_rec(i, encode_usage_event(e)) for i, e in enumerate((a, b, c))]
    recs += [_rec(3, b"{bad"), _rec(4, encode_usage_event(d))]
    exp = build_expected(recs)
    rows = [_row(a, 0), _row(a, 0), _row(b, 1, tokens=99), _row(_ev("zz"), 2)]
    rep = compare(exp, rows, topic="u", database="db", ranges={0: (0, 5)}, ch_max={0: 2}, dlq=[])
    kinds = {(d.kind, d.event_id) for d in rep.differences}
    assert kinds == {("duplicate", "a"), ("token_mismatch", "b"), ("extra", "zz"), ("missing", "c")}
    assert rep.lag[0].pending_offsets == 2  # offsets 3 (rejected) and 4 not reached
    strict = compare(
        exp, rows, topic="u", database="db", ranges={0: (0, 5)}, ch_max={0: 2}, dlq=[], strict=True
    )
    assert "pending" in {x.kind for x in strict.differences}
    # The DLQ answers offset 3 and the worker reached 4: the rejection is satisfied.
    ok = compare(
        exp,
        [_row(a, 0), _row(b, 1), _row(c, 2), _row(d, 4)],
        topic="u",
        database="db",
        ranges={0: (0, 5)},
        ch_max={0: 4},
        dlq=[DlqEntry(0, 3, "malformed_json", None)],
    )
    assert ok.ok
    assert ok.lag[0].pending_offsets == 0
    missing_dlq = compare(
        exp,
        [_row(a, 0), _row(b, 1), _row(c, 2), _row(d, 4)],
        topic="u",
        database="db",
        ranges={0: (0, 5)},
        ch_max={0: 4},
        dlq=[],
    )
    assert [(x.kind, x.offset) for x in missing_dlq.differences] == [("dlq_missing", 3)]
    assert "DIFFERENCES" in render_table(missing_dlq.to_dict())


def test_a_duplicate_at_the_tail_is_not_pending_once_the_group_committed_past_it() -> None:
    # Offset 2 repeats event a: the worker drops it, so it leaves no row and no
    # DLQ record. Only the group's commit (3) says the worker got past it.
    a, b = _ev("a"), _ev("b")
    recs = [_rec(0, encode_usage_event(a)), _rec(1, encode_usage_event(b))]
    recs.append(_rec(2, encode_usage_event(a)))
    exp = build_expected(recs)
    rows = [_row(a, 0), _row(b, 1)]
    kw = {"topic": "u", "database": "db", "ranges": {0: (0, 3)}, "ch_max": {0: 1}, "dlq": []}
    before = compare(exp, rows, strict=True, **kw)  # type: ignore[arg-type]
    assert [(d.kind, d.offset) for d in before.differences] == [("pending", 2)]
    after = compare(exp, rows, strict=True, committed={0: 3}, **kw)  # type: ignore[arg-type]
    assert after.ok
    assert after.lag[0].pending_offsets == 0
    # A commit behind the rows changes nothing: the rows still prove offset 1.
    behind = compare(exp, rows, strict=True, committed={0: 1}, **kw)  # type: ignore[arg-type]
    assert [(d.kind, d.offset) for d in behind.differences] == [("pending", 2)]


def test_events_counted_before_the_range_are_not_missing() -> None:
    a = _ev("a")
    exp = build_expected([_rec(5, encode_usage_event(a))])
    rep = compare(
        exp,
        [],
        topic="u",
        database="db",
        ranges={0: (5, 6)},
        ch_max={0: 9},
        dlq=[],
        elsewhere={("acme", "a"): [_row(a, 1)]},
    )
    assert rep.ok
    assert rep.counted_before_range == 1


def test_parse_time_and_dlq_topic() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("2026-11-25T08:00:00+01:00") == datetime(2026, 11, 25, 7, tzinfo=UTC)
    with pytest.raises(ConfigError, match="RFC 3339"):
        parse_time("2026-11-25T08:00:00")
    assert dlq_topic_for("x.tokenpulse.usage.v1") == "x.tokenpulse.usage.dlq.v1"
