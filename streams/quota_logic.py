"""Pure quota logic: periods in a time zone, hierarchy, threshold crossings.

No I/O here: the processor feeds usage totals in and gets back which
thresholds were newly crossed and the resulting status, so the rules that
decide "announce exactly once" are unit-testable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

Amount = int | Decimal  # tokens are ints, cost is an exact Decimal; never a float

PERIODS = ("minute", "hour", "day", "week", "month")
METRICS = ("input", "output", "total")

STATUS_OK = "ok"
STATUS_WARNING = "warning"
STATUS_EXCEEDED = "exceeded"


def tenant_levels(tenant_id: str) -> list[str]:
    """Every prefix level of a hierarchical tenant: a/b/c -> [a, a/b, a/b/c]."""
    parts = tenant_id.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def tenant_matches(quota_tenant: str, tenant_id: str) -> bool:
    """A quota on `acme` covers `acme` and `acme/...`, never `acme2`."""
    return tenant_id == quota_tenant or tenant_id.startswith(quota_tenant + "/")


def period_bounds(period: str, at: datetime, timezone: str = "UTC") -> tuple[datetime, datetime]:
    """[start, end) of the calendar period holding `at`, in `timezone`, returned in UTC.

    Days, weeks (Monday first) and months follow the zone's wall clock, so a
    day in Europe/Berlin is 23 or 25 hours long on DST change days.
    """
    if at.tzinfo is None:
        raise ValueError("period_bounds needs an aware datetime")
    tz = ZoneInfo(timezone)
    local = at.astimezone(tz)
    if period == "minute":
        start_utc = at.astimezone(UTC).replace(second=0, microsecond=0)
        return start_utc, start_utc + timedelta(minutes=1)
    if period == "hour":
        # Hours are fixed-length in UTC (zone offsets are whole quarter hours at
        # worst, and a wall-clock hour can repeat at DST end).
        start_utc = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return start_utc, start_utc + timedelta(hours=1)
    if period == "day":
        start_date = local.date()
        end_date = start_date + timedelta(days=1)
    elif period == "week":
        start_date = local.date() - timedelta(days=local.weekday())
        end_date = start_date + timedelta(days=7)
    elif period == "month":
        start_date = local.date().replace(day=1)
        end_date = (start_date + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")
    start = datetime(start_date.year, start_date.month, start_date.day, tzinfo=tz)
    end = datetime(end_date.year, end_date.month, end_date.day, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def on_whole_minutes(bounds: tuple[datetime, datetime]) -> bool:
    """Whether both bounds (UTC, as `period_bounds` returns them) are whole minutes.

    Then the period holds the whole minute of any instant in it, so its
    bounds may be remembered per minute.
    """
    start, end = bounds
    return not (start.second or start.microsecond or end.second or end.microsecond)


_MINUTE_BOUNDS: dict[tuple[str, str, int], tuple[datetime, datetime]] = {}
_MINUTE_BOUNDS_MAX = 65_536


def minute_period_bounds(
    period: str, at: datetime, timezone: str = "UTC"
) -> tuple[datetime, datetime]:
    """`period_bounds`, remembered per UTC minute of `at`: the quota engine asks per event.

    Exact: a period whose bounds are whole UTC minutes holds the whole minute
    of any instant in it. Bounds that are not (a zone's historic offset with
    seconds) are computed every time.
    """
    if at.tzinfo is None:
        return period_bounds(period, at, timezone)  # refuses it
    key = (period, timezone, int(at.timestamp() // 60))
    bounds = _MINUTE_BOUNDS.get(key)
    if bounds is None:
        bounds = period_bounds(period, at, timezone)
        if on_whole_minutes(bounds):
            if len(_MINUTE_BOUNDS) >= _MINUTE_BOUNDS_MAX:
                _MINUTE_BOUNDS.clear()  # bounded: rebuilt from the minutes in use
            _MINUTE_BOUNDS[key] = bounds
    return bounds


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def metric(self, name: str) -> int:
        if name == "input":
            return self.input_tokens
        if name == "output":
            return self.output_tokens
        if name == "total":
            return self.input_tokens + self.output_tokens
        raise ValueError(f"unknown metric {name!r}; use one of {', '.join(METRICS)}")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of checking one quota in one period."""

    used: Amount
    status: str
    newly_crossed: tuple[int, ...]  # thresholds (percent) to announce now, ascending
    crossed: frozenset[int]  # every threshold crossed at the current limit


def crossed_thresholds(used: Amount, limit: Amount, thresholds: Iterable[int]) -> frozenset[int]:
    # Integer arithmetic: used/limit >= t/100  <=>  used*100 >= t*limit (no float rounding).
    return frozenset(t for t in thresholds if used * 100 >= t * limit)


def status_for(used: Amount, limit: Amount, crossed: frozenset[int]) -> str:
    if used >= limit:
        return STATUS_EXCEEDED
    if crossed:
        return STATUS_WARNING
    return STATUS_OK


def evaluate(
    *, used: Amount, limit: Amount, thresholds: Iterable[int], announced: frozenset[int]
) -> Evaluation:
    """Which thresholds cross now that were not announced before in this period/limit.

    `announced` is what was already announced for the same period and limit;
    a raised limit is a new limit, so the caller passes the empty set and the
    status falls back to ok when usage is under every threshold.
    """
    crossed = crossed_thresholds(used, limit, thresholds)
    new = tuple(sorted(crossed - announced))
    return Evaluation(
        used=used, status=status_for(used, limit, crossed), newly_crossed=new, crossed=crossed
    )
