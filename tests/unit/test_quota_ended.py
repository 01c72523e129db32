"""A period's last crossings, checked after the quota moved on to the next period.

Events of a period's last seconds are written (and checked) after the
period ended; by then new-period events or the timer's roll-over may have
moved the quota's state to the new period. Within the grace
(TOKENPULSE_ALLOWED_LATENESS_S) the period it left still announces what
those events crossed, once, against the thresholds it had announced, and
the published state stays the new period's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from tokenpulse.schemas import decode_quota_alert, decode_quota_state
from tokenpulse.schemas.quota import QuotaState, quota_state_key
from tokenpulse.streams.quota_logic import Usage
from tokenpulse.streams.quotas import Outgoing, QuotaEngine, Touch
from tokenpulse.streams.usage_query import UsageRequest

from .test_quota_engine import _quota

DAY1 = datetime(2026, 11, 25, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)
LAST_SECOND = DAY2 - timedelta(seconds=1)
KEY = quota_state_key("acme", "q1")
GRACE_S = 300.0


class PeriodReader:
    """Input tokens per period start (0 for any other)."""

    def __init__(self) -> None:
        self.tokens: dict[datetime, int] = {}

    async def usage(
        self, tenant_prefix: str, model: str | None, start: datetime, end: datetime
    ) -> Usage:
        return Usage(input_tokens=self.tokens.get(start, 0))

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        return [Usage(input_tokens=self.tokens.get(r.start, 0)) for r in requests]


def _engine(reader: PeriodReader) -> QuotaEngine:
    engine = QuotaEngine(reader, alerts_topic="alerts", state_topic="state", ended_grace_s=GRACE_S)
    engine.apply_definition(KEY, _quota(1000))
    return engine


def _touch(at: datetime, event_id: str) -> Touch:
    return Touch("acme/a", "m", at, event_id)


def _alerts(outs: list[Outgoing]) -> list[tuple[datetime, int]]:
    return [
        (a.period_start, a.threshold_pct)
        for a in (decode_quota_alert(o.value) for o in outs if o.topic == "alerts")
    ]


def _states(outs: list[Outgoing]) -> list[QuotaState]:
    return [decode_quota_state(o.value) for o in outs if o.topic == "state"]


async def _day1_at_600_then_day2(reader: PeriodReader, engine: QuotaEngine) -> None:
    """Day 1 at 600 (50 % announced), then the first events of day 2 move the state."""
    reader.tokens[DAY1] = 600
    assert _alerts(await engine.check([_touch(LAST_SECOND, "e1")], LAST_SECOND)) == [(DAY1, 50)]
    reader.tokens[DAY2] = 10
    outs = await engine.check([_touch(DAY2, "e2")], DAY2 + timedelta(seconds=1))
    assert [s.period_start for s in _states(outs)] == [DAY2]
    assert engine.states[KEY].period_start == DAY2


async def test_the_last_seconds_written_after_new_period_events_still_alert_once() -> None:
    reader = PeriodReader()
    engine = _engine(reader)
    await _day1_at_600_then_day2(reader, engine)
    # The batch of day 1's last second lands now: day 1 reaches 1,200.
    reader.tokens[DAY1] = 1200
    now = DAY2 + timedelta(seconds=2)
    outs = await engine.check([_touch(LAST_SECOND, "e3")], now)
    assert _alerts(outs) == [(DAY1, 100)]  # 50 % was announced before the move
    assert _states(outs) == []  # the state topic keeps the newest period
    assert engine.states[KEY].period_start == DAY2
    # A replay of that batch announces nothing again.
    assert await engine.check([_touch(LAST_SECOND, "e3")], now) == []


async def test_the_timer_roll_over_leaves_the_ended_period_open_for_the_grace() -> None:
    reader = PeriodReader()
    engine = _engine(reader)
    reader.tokens[DAY1] = 600
    await engine.check([_touch(LAST_SECOND, "e1")], LAST_SECOND)
    outs = await engine.roll_periods(DAY2 + timedelta(seconds=1))
    assert [(s.period_start, s.status) for s in _states(outs)] == [(DAY2, "ok")]
    reader.tokens[DAY1] = 1000
    outs = await engine.check([_touch(LAST_SECOND, "e2")], DAY2 + timedelta(seconds=3))
    assert _alerts(outs) == [(DAY1, 100)]


async def test_past_the_grace_the_period_is_closed() -> None:
    reader = PeriodReader()
    engine = _engine(reader)
    await _day1_at_600_then_day2(reader, engine)
    past = DAY2 + timedelta(seconds=GRACE_S)
    await engine.roll_periods(past)  # the timer forgets the ended state
    assert KEY not in engine.ended
    reader.tokens[DAY1] = 1200
    assert await engine.check([_touch(LAST_SECOND, "e3")], past) == []


async def test_only_the_period_just_left_is_open() -> None:
    reader = PeriodReader()
    engine = _engine(reader)
    await _day1_at_600_then_day2(reader, engine)
    reader.tokens[DAY3] = 10
    await engine.check([_touch(DAY3, "e4")], DAY3 + timedelta(seconds=1))
    assert engine.ended[KEY].period_start == DAY2
    reader.tokens[DAY1] = 1200
    reader.tokens[DAY2] = 1200
    outs = await engine.check(
        [_touch(LAST_SECOND, "e5"), _touch(DAY3 - timedelta(seconds=1), "e6")],
        DAY3 + timedelta(seconds=2),
    )
    assert _alerts(outs) == [(DAY2, 50), (DAY2, 100)]  # day 1 is two periods back


async def test_another_workers_state_of_the_ended_period_counts_as_announced() -> None:
    reader = PeriodReader()
    engine = _engine(reader)
    await _day1_at_600_then_day2(reader, engine)
    # Another worker announced day 1's 100 % and published that state late.
    theirs = engine.ended[KEY]
    engine.apply_state(KEY, msgspec.structs.replace(theirs, used=1100, status="exceeded"))
    assert engine.states[KEY].period_start == DAY2  # the older period never rolls back
    assert engine.ended[KEY].used == 1100
    reader.tokens[DAY1] = 1200
    assert _alerts(await engine.check([_touch(LAST_SECOND, "e3")], DAY2)) == []


async def test_a_definition_that_measures_something_else_forgets_the_ended_state() -> None:
    reader = PeriodReader()
    engine = _engine(reader)
    await _day1_at_600_then_day2(reader, engine)
    engine.apply_definition(KEY, msgspec.structs.replace(_quota(1000), model="m"))
    assert KEY not in engine.ended
    engine.apply_definition(KEY, None)
    assert KEY not in engine.ended


async def test_a_successor_reading_the_state_topic_knows_the_ended_period() -> None:
    """A worker started after a crash reads the state topic from its start:
    the quota's day-1 record, then its day-2 record (the topic is compacted,
    but not its active segment), so the period just left stays open."""
    reader = PeriodReader()
    first = _engine(reader)
    await _day1_at_600_then_day2(reader, first)
    history = [first.ended[KEY], first.states[KEY]]  # in the order they were published
    successor = _engine(reader)
    for state in history:
        successor.apply_state(KEY, state)
    assert successor.states[KEY].period_start == DAY2
    assert successor.ended[KEY].period_start == DAY1
    reader.tokens[DAY1] = 1200
    outs = await successor.check([_touch(LAST_SECOND, "e3")], DAY2 + timedelta(seconds=2))
    assert _alerts(outs) == [(DAY1, 100)]  # 50 % was in day 1's record: not again


async def test_without_the_ended_periods_record_a_successor_announces_nothing_for_it() -> None:
    """Compaction removed the day-1 record (only the newest per quota is
    left): the successor cannot tell what day 1 announced and leaves it
    closed, as the docs say (a late crossing is missed, never doubled)."""
    reader = PeriodReader()
    first = _engine(reader)
    await _day1_at_600_then_day2(reader, first)
    successor = _engine(reader)
    successor.apply_state(KEY, first.states[KEY])
    assert KEY not in successor.ended
    reader.tokens[DAY1] = 1200
    assert await successor.check([_touch(LAST_SECOND, "e3")], DAY2 + timedelta(seconds=2)) == []
