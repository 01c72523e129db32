"""Event-time minute windows: the lateness rule and the watermark it is measured against."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.streams.windows import MinuteWindows, minute_start

BASE = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@given(st.lists(st.integers(0, 7200_000), max_size=80), st.integers(0, 900))
@settings(max_examples=200)
def test_an_event_is_late_exactly_when_its_minute_closed_before_it_arrived(
    offsets_ms: list[int], lateness_s: int
) -> None:
    w = MinuteWindows(allowed_lateness_s=lateness_s)
    highest: datetime | None = None  # the watermark: highest event time seen on time
    late = 0
    for ms in offsets_ms:
        at = BASE + timedelta(milliseconds=ms)
        window_end = minute_start(at) + timedelta(minutes=1)
        expected = highest is not None and window_end + timedelta(seconds=lateness_s) <= highest
        assert w.add(at) is expected
        late += expected
        if not expected and (highest is None or at > highest):
            highest = at
    assert w.late_events == late
    assert w.watermark_s == (highest.timestamp() if highest is not None else None)


def test_event_time_decides_the_minute() -> None:
    assert minute_start(datetime(2026, 1, 1, 0, 0, 59, 999000, tzinfo=UTC)) == datetime(
        2026, 1, 1, tzinfo=UTC
    )


def test_late_events_are_flagged_and_counted() -> None:
    w = MinuteWindows(allowed_lateness_s=300)
    assert not w.add(BASE)
    assert not w.add(BASE + timedelta(minutes=10))
    # the 08:00 window ended 08:01; 08:01 + 5 min lateness <= 08:10 -> late
    assert w.is_late(BASE + timedelta(seconds=30))
    assert w.add(BASE + timedelta(seconds=30))
    assert w.late_events == 1
    # within lateness: 08:06 window ends 08:07, + 5 min = 08:12 > 08:10 -> on time
    assert not w.add(BASE + timedelta(minutes=6))
    # exactly at the boundary: the 08:04 window ends 08:05, + 5 min = 08:10 -> late
    assert w.add(BASE + timedelta(minutes=4, seconds=59))


def test_the_state_of_a_partition_does_not_grow_with_events_or_tenants() -> None:
    # The totals live in ClickHouse's materialized views; a partition keeps
    # one watermark, however many events and tenants pass through it.
    w = MinuteWindows(allowed_lateness_s=300)
    for i in range(10_000):
        w.add(BASE + timedelta(milliseconds=i))
    assert w.watermark == BASE + timedelta(milliseconds=9_999)
    assert w.late_events == 0
    fields = ["_cut", "_recut_at", "allowed_lateness_s", "late_events", "watermark"]
    assert sorted(vars(w)) == fields
    assert all(isinstance(v, (int, float, datetime)) for v in vars(w).values())


@given(
    st.lists(st.integers(0, 7200_000_000), max_size=80),
    st.floats(0, 900, allow_nan=False).map(lambda s: round(s, 3)),
)
@settings(max_examples=300)
def test_same_verdicts_as_the_rule_in_epoch_seconds(
    offsets_us: list[int], lateness_s: float
) -> None:
    # The rule as written before the cut: minute start + 60 + lateness <= watermark,
    # in epoch seconds, for sub-millisecond times and fractional lateness.
    w = MinuteWindows(allowed_lateness_s=lateness_s)
    watermark: float | None = None
    for us in offsets_us:
        at = BASE + timedelta(microseconds=us)
        ts = at.timestamp()
        expected = watermark is not None and (ts // 60) * 60 + 60 + lateness_s <= watermark
        assert w.add(at) is expected, (at, lateness_s, watermark)
        if not expected and (watermark is None or ts > watermark):
            watermark = ts


def test_extreme_lateness_and_times_do_not_overflow() -> None:
    w = MinuteWindows(allowed_lateness_s=10**9)  # ~32 years: reaches before year 1 here
    early = datetime(1, 1, 1, 0, 5, tzinfo=UTC)
    assert not w.add(early)
    assert not w.add(datetime(1, 1, 1, tzinfo=UTC))
    end = MinuteWindows(allowed_lateness_s=0)
    assert not end.add(datetime(9999, 12, 31, 23, 59, 30, tzinfo=UTC))
    assert end.add(datetime(9999, 12, 31, 23, 58, tzinfo=UTC))


@given(
    st.lists(st.lists(st.integers(0, 1_800_000), max_size=40), max_size=12),
    st.integers(0, 600),
)
@settings(max_examples=300)
def test_add_many_is_add_one_by_one(batches_ms: list[list[int]], lateness_s: int) -> None:
    # Batches mostly within a minute or two of each other: the fast path
    # (nothing late, the cut stays) and the fallback both get exercised.
    one = MinuteWindows(allowed_lateness_s=lateness_s)
    many = MinuteWindows(allowed_lateness_s=lateness_s)
    for batch_ms in batches_ms:
        times = [BASE + timedelta(milliseconds=ms) for ms in batch_ms]
        expected = [i for i, at in enumerate(times) if one.add(at)]
        assert many.add_many(times) == expected
        assert (many.watermark, many.late_events) == (one.watermark, one.late_events)
        assert many.is_late(BASE) is one.is_late(BASE)


def test_add_many_of_an_on_time_batch_only_moves_the_watermark() -> None:
    w = MinuteWindows(allowed_lateness_s=300)
    w.add(BASE)
    times = [BASE + timedelta(seconds=s) for s in (5, 1, 30, 12)]
    assert w.add_many(times) == []
    assert (w.watermark, w.late_events) == (BASE + timedelta(seconds=30), 0)
    late = BASE - timedelta(minutes=10)
    assert w.add_many([*times, late]) == [4]
    assert w.late_events == 1
