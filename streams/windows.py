"""Event-time minute windows per (tenant, model) with allowed lateness.

The watermark of a partition is the highest event time it has seen. A
minute window is open until the watermark passes its end plus the allowed
lateness; an event for a closed window is "late": it still lands in
usage_events (flagged late=True) and is counted, but the in-memory window
is not reopened. Totals are keyed by event_id, so replays and duplicates
never change them (the property the unit tests check with hypothesis).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

_MINUTE_S = 60


def minute_start_s(occurred_at: datetime) -> int:
    """Epoch seconds of the UTC minute an event falls in (event time decides)."""
    ts = occurred_at.timestamp()
    return int(ts // _MINUTE_S) * _MINUTE_S


def minute_start(occurred_at: datetime) -> datetime:
    return datetime.fromtimestamp(minute_start_s(occurred_at), tz=UTC)


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    events: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cached_input_tokens += cached_input_tokens
        self.events += 1


class WindowInput(NamedTuple):
    """The fields of a usage event the windows need."""

    event_id: str
    tenant_id: str
    model: str
    occurred_at: datetime
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0


class WindowEvent(Protocol):
    """What `MinuteWindows.add` reads: a WindowInput, or a UsageEvent itself
    (the worker passes the decoded event, no copy per event)."""

    @property
    def event_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...


WindowKey = tuple[str, str, int]  # tenant_id, model, minute start (epoch s)


@dataclass
class MinuteWindows:
    """Bounded per-partition window state: open minutes only.

    Memory is bounded by (distinct tenant/model pairs) x (open minutes), and
    open minutes are those within `allowed_lateness_s` of the watermark.
    """

    allowed_lateness_s: float
    watermark_s: float | None = None
    late_events: int = 0
    _open: dict[WindowKey, Totals] = field(default_factory=dict)
    _ids: dict[WindowKey, set[str]] = field(default_factory=dict)

    def _closed(self, minute_s: int, watermark_s: float) -> bool:
        """The one lateness rule: a minute closes once the watermark passes its end + lateness."""
        return minute_s + _MINUTE_S + self.allowed_lateness_s <= watermark_s

    def is_late(self, occurred_at: datetime) -> bool:
        if self.watermark_s is None:
            return False
        return self._closed(minute_start_s(occurred_at), self.watermark_s)

    def add(self, item: WindowEvent) -> bool:
        """Count one event; returns True when it is late (its window has closed)."""
        # One timestamp per event (the hot path): is_late() and
        # minute_start_s() would each compute it again.
        ts = item.occurred_at.timestamp()
        minute_s = int(ts // _MINUTE_S) * _MINUTE_S
        watermark_s = self.watermark_s
        if watermark_s is not None and self._closed(minute_s, watermark_s):
            self.late_events += 1
            return True
        key = (item.tenant_id, item.model, minute_s)
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = set()
            self._open[key] = Totals()
        if item.event_id not in ids:
            ids.add(item.event_id)
            self._open[key].add(item.input_tokens, item.output_tokens, item.cached_input_tokens)
        if watermark_s is None or ts > watermark_s:
            self.watermark_s = ts
        return False

    def close_expired(self) -> dict[WindowKey, Totals]:
        """Remove and return the windows the watermark has closed."""
        if self.watermark_s is None:
            return {}
        watermark_s = self.watermark_s
        closed = {
            key: totals for key, totals in self._open.items() if self._closed(key[2], watermark_s)
        }
        for key in closed:
            del self._open[key]
            del self._ids[key]
        return closed

    def open_windows(self) -> dict[WindowKey, Totals]:
        return dict(self._open)


def totals_by_minute(items: Iterable[WindowInput]) -> dict[WindowKey, Totals]:
    """Exact totals of a set of events, each event_id counted once (no lateness)."""
    seen: set[str] = set()
    out: dict[WindowKey, Totals] = {}
    for item in items:
        if item.event_id in seen:
            continue
        seen.add(item.event_id)
        key = (item.tenant_id, item.model, minute_start_s(item.occurred_at))
        out.setdefault(key, Totals()).add(
            item.input_tokens, item.output_tokens, item.cached_input_tokens
        )
    return out
