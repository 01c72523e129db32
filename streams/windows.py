"""Event-time minute windows per partition: which events are late.

The watermark of a partition is the highest event time it has seen. A
minute window is open until the watermark passes its end plus the allowed
lateness; an event for a closed window is "late": it still lands in
usage_events (flagged late=True) and is counted everywhere, but it is
reported as late (the `late` counter, billing's adjustment lines).

The totals per (tenant, model, minute) and their hour, day and month
roll-ups are not kept here: ClickHouse's materialized views compute them
from usage_events (usage_by_minute_totals and the rest), exactly once per
stored row, because each insert is deduplicated as a whole. An in-memory
copy per open window would need every event id of the lateness span to stay
exact under replays (at 35,000 events/s and 5 minutes, about ten million
ids) for totals that nothing reads. So a partition's window state is one
number, whatever the rate or the number of tenants, and it cannot outlive
its partition (Faust's windowed tables could, after a recovery).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

_MINUTE_S = 60
_MINUTE = timedelta(seconds=_MINUTE_S)
_NEVER = datetime.min.replace(tzinfo=UTC)
_FOREVER = datetime.max.replace(tzinfo=UTC)


def minute_start_s(occurred_at: datetime) -> int:
    """Epoch seconds of the UTC minute an event falls in (event time decides)."""
    ts = occurred_at.timestamp()
    return int(ts // _MINUTE_S) * _MINUTE_S


def minute_start(occurred_at: datetime) -> datetime:
    return datetime.fromtimestamp(minute_start_s(occurred_at), tz=UTC)


@dataclass
class MinuteWindows:
    """The watermark of one partition and the lateness rule of its minute windows.

    The rule: an event is late when its minute closed before it arrived, i.e.
    when minute end + allowed lateness <= the watermark. For a watermark W
    that is every event before `floor_minute(W - lateness)` (the cut), and
    the cut moves only when W crosses into another minute: so add() is two
    datetime comparisons per event, and the cut is computed again about once
    per minute of event time, not an epoch timestamp per event.
    """

    allowed_lateness_s: float
    watermark: datetime | None = None  # the highest event time seen on time
    late_events: int = 0
    _cut: datetime = field(default=_NEVER, repr=False)  # before it: late
    _recut_at: datetime = field(default=_NEVER, repr=False)  # the cut moves from here

    @property
    def watermark_s(self) -> float | None:
        return None if self.watermark is None else self.watermark.timestamp()

    def _move_cut(self, watermark: datetime) -> None:
        lateness = timedelta(seconds=self.allowed_lateness_s)
        try:
            cut = (watermark.astimezone(UTC) - lateness).replace(second=0, microsecond=0)
        except OverflowError:  # a lateness reaching before year 1: nothing is late
            self._cut, self._recut_at = _NEVER, _FOREVER
            return
        self._cut = cut
        try:
            self._recut_at = cut + _MINUTE + lateness
        except OverflowError:  # year 9999: the cut never moves again
            self._recut_at = _FOREVER

    def is_late(self, occurred_at: datetime) -> bool:
        """Would an event of this time be late now (without counting it)?"""
        return self.watermark is not None and occurred_at < self._cut

    def add(self, occurred_at: datetime) -> bool:
        """Count one event; returns True when it is late (its window has closed).

        A late event does not move the watermark (it is older than it anyway).
        """
        watermark = self.watermark
        if watermark is None:
            self.watermark = occurred_at
            self._move_cut(occurred_at)
            return False
        if occurred_at < self._cut:
            self.late_events += 1
            return True
        if occurred_at > watermark:
            self.watermark = occurred_at
            if occurred_at >= self._recut_at:
                self._move_cut(occurred_at)
        return False

    def add_many(self, times: Sequence[datetime]) -> list[int]:
        """add() each time, in order; the indices of the late ones.

        The common batch (nothing before the cut, the cut not due to move)
        takes a min and a max in C, not an add() call per event: nothing in
        it can be late, and the watermark ends at its newest time either way.
        """
        watermark = self.watermark
        if times and watermark is not None:
            newest = max(times)
            if newest < self._recut_at and min(times) >= self._cut:
                if newest > watermark:
                    self.watermark = newest
                return []
        add = self.add
        return [i for i, occurred_at in enumerate(times) if add(occurred_at)]
