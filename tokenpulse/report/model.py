"""What the report shows, as plain data: filled from ClickHouse (and Kafka), rendered to HTML.

Keeping the data apart from the markup lets the renderer be tested on
hand-made (and hostile) values without any service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from tokenpulse.schemas.quota import QuotaDefinition
from tokenpulse.sinks.capacity import Capacity


@dataclass(frozen=True)
class TokenSeries:
    """Tokens (input + output) per day of one tenant and model."""

    tenant_id: str
    model: str
    by_day: dict[date, int]

    @property
    def total(self) -> int:
        return sum(self.by_day.values())


@dataclass(frozen=True)
class QuotaBurn:
    """Cumulative usage of one quota's period, bucket by bucket, against its limit."""

    definition: QuotaDefinition
    period_start: datetime
    period_end: datetime
    bucket_s: int
    cumulative: tuple[tuple[datetime, int], ...]  # (bucket end, used so far)

    @property
    def used(self) -> int:
        return self.cumulative[-1][1] if self.cumulative else 0

    @property
    def used_pct(self) -> float:
        limit = int(self.definition.limit)
        return 100.0 * self.used / limit if limit else 0.0


@dataclass(frozen=True)
class DepartmentCost:
    department: str
    tokens: int
    cost: Decimal
    prev_cost: Decimal


@dataclass(frozen=True)
class Section:
    """A section's data, or why it is missing (shown as a visible note)."""

    note: str | None = None


@dataclass(frozen=True)
class ReportData:
    month: date
    database: str
    generated_at: datetime
    as_of: datetime  # end of the month, or now if the month is running
    days: tuple[date, ...]
    series: tuple[TokenSeries, ...]
    events: int
    quotas: tuple[QuotaBurn, ...] = ()
    quota_note: str | None = None
    costs: tuple[DepartmentCost, ...] = ()
    currency: str = ""
    cost_note: str | None = None
    capacity: tuple[Capacity, ...] = ()
    capacity_window: tuple[datetime, datetime] | None = None
    capacity_headroom: float = 0.0
    capacity_sizing: str = "p99"
    capacity_note: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_tokens(self) -> int:
        return sum(s.total for s in self.series)

    def top_tenants(self, n: int = 10) -> list[tuple[str, int]]:
        totals: dict[str, int] = {}
        for s in self.series:
            totals[s.tenant_id] = totals.get(s.tenant_id, 0) + s.total
        return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
