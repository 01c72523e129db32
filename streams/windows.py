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

from dataclasses import dataclass
from datetime import UTC, datetime

_MINUTE_S = 60


def minute_start_s(occurred_at: datetime) -> int:
    """Epoch seconds of the UTC minute an event falls in (event time decides)."""
    ts = occurred_at.timestamp()
    return int(ts // _MINUTE_S) * _MINUTE_S


def minute_start(occurred_at: datetime) -> datetime:
    return datetime.fromtimestamp(minute_start_s(occurred_at), tz=UTC)


@dataclass
class MinuteWindows:
    """The watermark of one partition and the lateness rule of its minute windows."""

    allowed_lateness_s: float
    watermark_s: float | None = None
    late_events: int = 0

    def _closed(self, minute_s: int, watermark_s: float) -> bool:
        """The one lateness rule: a minute closes once the watermark passes its end + lateness."""
        return minute_s + _MINUTE_S + self.allowed_lateness_s <= watermark_s

    def is_late(self, occurred_at: datetime) -> bool:
        """Would an event of this time be late now (without counting it)?"""
        if self.watermark_s is None:
            return False
        return self._closed(minute_start_s(occurred_at), self.watermark_s)

    def add(self, occurred_at: datetime) -> bool:
        """Count one event; returns True when it is late (its window has closed).

        A late event does not move the watermark (it is older than it anyway).
        """
        # One timestamp per event (the hot path): is_late() and
        # minute_start_s() would each compute it again.
        ts = occurred_at.timestamp()
        watermark_s = self.watermark_s
        if watermark_s is None:
            self.watermark_s = ts
            return False
        if self._closed(int(ts // _MINUTE_S) * _MINUTE_S, watermark_s):
            self.late_events += 1
            return True
        if ts > watermark_s:
            self.watermark_s = ts
        return False
