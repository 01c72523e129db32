"""Quota logic: periods in a time zone, hierarchy, crossings, resolution."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from tokenpulse.streams.quota_logic import (
    PERIODS,
    crossed_thresholds,
    evaluate,
    minute_period_bounds,
    period_bounds,
    tenant_levels,
    tenant_matches,
)


def test_hierarchy_levels_and_matching() -> None:
    assert tenant_levels("acme/research/a7") == ["acme", "acme/research", "acme/research/a7"]
    assert tenant_matches("acme", "acme/research")
    assert tenant_matches("acme", "acme")
    assert not tenant_matches("acme", "acme2/x")


def test_day_in_berlin_and_dst_change() -> None:
    at = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)  # DST starts in Europe on this day
    start, end = period_bounds("day", at, "Europe/Berlin")
    assert start == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert end == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)  # a 23-hour day
    # 23:30 UTC on the 28th is already the 29th in Berlin
    assert (
        period_bounds("day", datetime(2026, 3, 28, 23, 30, tzinfo=UTC), "Europe/Berlin")[0] == start
    )


def test_month_and_minute_and_hour() -> None:
    at = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert period_bounds("month", at) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("minute", at)[0] == datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds("hour", at)[1] == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="unknown period"):
        period_bounds("fortnight", at)


def test_each_threshold_is_announced_once() -> None:
    announced: frozenset[int] = frozenset()
    seen: list[int] = []
    for used in (100, 499, 500, 790, 800, 999, 1000, 5000):
        result = evaluate(used=used, limit=1000, thresholds=(50, 80, 100), announced=announced)
        seen += result.newly_crossed
        announced = result.crossed
    assert seen == [50, 80, 100]
    assert result.status == "exceeded"


def test_jump_over_several_thresholds_announces_each_and_replay_announces_none() -> None:
    first = evaluate(used=950, limit=1000, thresholds=(50, 80, 100), announced=frozenset())
    assert first.newly_crossed == (50, 80)
    assert first.status == "warning"
    replay = evaluate(used=950, limit=1000, thresholds=(50, 80, 100), announced=first.crossed)
    assert replay.newly_crossed == ()


def test_raised_limit_resolves() -> None:
    before = evaluate(used=1200, limit=1000, thresholds=(50, 80, 100), announced=frozenset())
    assert before.status == "exceeded"
    after = evaluate(used=1200, limit=10_000, thresholds=(50, 80, 100), announced=frozenset())
    assert after.status == "ok"
    assert after.newly_crossed == ()


def test_threshold_arithmetic_is_exact() -> None:
    assert crossed_thresholds(333, 1000, (33,)) == frozenset({33})
    assert crossed_thresholds(329, 1000, (33,)) == frozenset()


def test_period_bounds_remembered_per_minute_equal_the_computed_ones() -> None:
    rnd = random.Random(4)
    # Amsterdam's offset was +00:19:32 until 1937: its days did not start on a minute.
    zones = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "Europe/Amsterdam", "America/St_Johns")
    start, span_s = datetime(1920, 1, 1, tzinfo=UTC), 200 * 365 * 86400
    instants = [start + timedelta(seconds=rnd.uniform(0, span_s)) for _ in range(400)]
    instants += [datetime(1930, 5, 3, 23, 40, 27, 999999, tzinfo=UTC),  # Amsterdam's midnight
                 datetime(1930, 5, 3, 23, 40, 28, tzinfo=UTC)]  # fmt: skip
    for at in instants:
        for period in PERIODS:
            for zone in zones:
                for probe in (at, at.replace(second=0, microsecond=0), at):  # misses, then hits
                    want = period_bounds(period, probe, zone)
                    assert minute_period_bounds(period, probe, zone) == want
    with pytest.raises(ValueError, match="aware"):
        minute_period_bounds("day", datetime(2026, 1, 1))
