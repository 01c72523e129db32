"""Event-time windows: totals are order- and duplicate-independent; lateness."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.streams.windows import MinuteWindows, WindowInput, minute_start, totals_by_minute

BASE = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)

events = st.lists(
    st.builds(
        lambda i, t, m, s, a, b: WindowInput(
            f"e{i}", f"t{t}", f"m{m}", BASE + timedelta(seconds=s), a, b
        ),
        st.integers(0, 10_000),
        st.integers(0, 3),
        st.integers(0, 2),
        st.integers(0, 3600),
        st.integers(0, 10**9),
        st.integers(0, 10**9),
    ),
    max_size=60,
    unique_by=lambda w: w.event_id,
)


@given(events, st.randoms(use_true_random=False), st.integers(0, 20))
@settings(max_examples=150)
def test_any_shuffle_or_duplication_gives_the_same_totals(
    items: list[WindowInput], rnd: random.Random, dups: int
) -> None:
    expected = totals_by_minute(items)
    noisy = items + [rnd.choice(items) for _ in range(dups)] if items else []
    rnd.shuffle(noisy)
    assert totals_by_minute(noisy) == expected
    # Without lateness limits, the windowed aggregator agrees with the exact totals.
    windows = MinuteWindows(allowed_lateness_s=10**9)
    for item in noisy:
        windows.add(item)
    assert windows.open_windows() == expected


def test_event_time_decides_the_minute() -> None:
    assert minute_start(datetime(2026, 1, 1, 0, 0, 59, 999000, tzinfo=UTC)) == datetime(
        2026, 1, 1, tzinfo=UTC
    )


def test_late_events_are_flagged_and_counted_and_windows_close() -> None:
    w = MinuteWindows(allowed_lateness_s=300)
    assert not w.add(WindowInput("a", "t", "m", BASE, 1, 1))
    assert not w.add(WindowInput("b", "t", "m", BASE + timedelta(minutes=10), 1, 1))
    # the 08:00 window ended 08:01; 08:01 + 5 min lateness <= 08:10 -> late
    assert w.add(WindowInput("c", "t", "m", BASE + timedelta(seconds=30), 5, 5))
    assert w.late_events == 1
    # within lateness: 08:06 window ends 08:07, + 5 min = 08:12 > 08:10 -> on time
    assert not w.add(WindowInput("d", "t", "m", BASE + timedelta(minutes=6), 1, 1))
    closed = w.close_expired()
    assert list(closed) == [("t", "m", int(BASE.timestamp()))]
