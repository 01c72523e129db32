"""Calendar bucketing across time zones and DST: minute windows and quota periods.

The shuffle/duplicate property of the minute windows lives in
tests/unit/test_streams_windows.py; here: the buckets themselves.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.streams.quota_logic import period_bounds
from tokenpulse.streams.windows import minute_start, minute_start_s

PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
# Zones with DST at 01:00/02:00/03:00, at midnight (Havana, Santiago), half/quarter-hour
# offsets (Kolkata, Kathmandu, Lord Howe's 30-minute DST), and far from UTC.
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Havana",
    "America/Santiago",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 2), max_value=datetime(2037, 12, 30), timezones=st.just(UTC)
)


@given(instants, st.sampled_from(ZONES), st.sampled_from(["day", "week", "month"]))
@PROFILE
def test_calendar_periods_contain_the_instant_and_tile_the_timeline(
    at: datetime, zone: str, period: str
) -> None:
    start, end = period_bounds(period, at, zone)
    assert start <= at < end
    # Every instant of the period maps to the same period; the next one starts at end.
    assert period_bounds(period, start, zone) == (start, end)
    assert period_bounds(period, end - timedelta(microseconds=1), zone) == (start, end)
    assert period_bounds(period, end, zone)[0] == end
    length = end - start
    if period == "day":
        assert timedelta(hours=22) <= length <= timedelta(hours=26)
    elif period == "week":
        assert timedelta(days=7, hours=-2) <= length <= timedelta(days=7, hours=2)
    else:
        assert timedelta(days=28, hours=-2) <= length <= timedelta(days=31, hours=2)


@given(instants, st.sampled_from(ZONES), st.sampled_from(["day", "week", "month"]))
@PROFILE
def test_a_period_starts_at_the_local_calendar_boundary(
    at: datetime, zone: str, period: str
) -> None:
    start, _ = period_bounds(period, at, zone)
    local_at = at.astimezone(ZoneInfo(zone))
    local_start = start.astimezone(ZoneInfo(zone))
    if period == "day":
        assert local_start.date() == local_at.date()
    elif period == "week":
        assert local_start.date() == local_at.date() - timedelta(days=local_at.weekday())
    else:
        assert local_start.date() == local_at.date().replace(day=1)
    # Midnight, or the first wall-clock time after it when midnight is skipped (DST at 00:00).
    assert local_start.time() <= datetime(2000, 1, 1, 1, 0).time()


@given(instants, st.sampled_from(ZONES), st.sampled_from(["minute", "hour"]))
@PROFILE
def test_minutes_and_hours_do_not_depend_on_the_zone(at: datetime, zone: str, period: str) -> None:
    start, end = period_bounds(period, at, zone)
    assert (start, end) == period_bounds(period, at, "UTC")
    assert start <= at < end
    if period == "minute":
        assert start == minute_start(at)
        assert minute_start_s(at) % 60 == 0
        # The same instant written with any offset falls in the same minute window.
        assert minute_start(at.astimezone(ZoneInfo(zone))) == start
