"""What a quota used in one period, as the store says: tokens, or cost priced from rows.

The quota engine asks for every due (quota, period) of a check at once
(`read`: one batched read per kind) and turns each answer into the amount it
compares with the limit (`measure`): tokens as read, or the cost of the
period's rows at the billing price book's monthly tiers (streams/cost.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from tokenpulse.schemas.quota import QuotaDefinition
from tokenpulse.sinks.billing import PriceBook, PriceBookError
from tokenpulse.streams.cost import ModelUsage, PeriodCost, billing_month, period_cost
from tokenpulse.streams.quota_logic import Amount, Usage
from tokenpulse.streams.usage_query import (
    ModelUsageRequest,
    UsageReader,
    UsageRequest,
    gather_or_cancel,
)

log = logging.getLogger("tokenpulse.streams.quotas")

# What the store said about one (quota, period): tokens, or rows to price; None
# for a cost quota without a price book (nothing to read).
Reading = Usage | list[ModelUsage] | None


class QuotaUsage:
    def __init__(self, reader: UsageReader, pricebook: PriceBook | None) -> None:
        self.reader = reader
        self.pricebook = pricebook  # prices metric=cost quotas; None: they stay unknown
        self._reported: dict[bytes, str] = {}  # last pricing problem logged per quota

    async def read(
        self, due: list[tuple[bytes, datetime, QuotaDefinition, datetime]]
    ) -> dict[tuple[bytes, datetime], Reading]:
        """The store's answer for each due (quota, period): one batched read per kind."""
        readings: dict[tuple[bytes, datetime], Reading] = {}
        plain: list[tuple[tuple[bytes, datetime], UsageRequest]] = []
        priced: list[tuple[tuple[bytes, datetime], ModelUsageRequest]] = []
        for key, start, d, end in due:
            if d.metric != "cost":
                plain.append(((key, start), UsageRequest(d.tenant_id, d.model, start, end)))
            elif self.pricebook is None:
                readings[(key, start)] = None
            else:
                # Tiers are monthly: the month's usage before the period sets its margin.
                month = billing_month(start)
                since = datetime(month.year, month.month, 1, tzinfo=UTC)
                priced.append(
                    ((key, start), ModelUsageRequest(d.tenant_id, d.model, since, start, end))
                )
        reads: list[Callable[[], Awaitable[Sequence[Reading]]]] = []
        if plain:
            reads.append(functools.partial(self.reader.usage_many, [r for _, r in plain]))
        if priced:
            reads.append(functools.partial(self.reader.usage_by_model_many, [r for _, r in priced]))
        # A failure propagates unchanged and before any state moved (the
        # ClickHouse reader itself waits out retriable ones, query by query).
        results = iter(await gather_or_cancel(reads))
        for batch in (plain, priced):
            if batch:
                readings.update(zip((at for at, _ in batch), next(results), strict=True))
        return readings

    def measure(
        self, key: bytes, d: QuotaDefinition, start: datetime, reading: Reading
    ) -> tuple[Amount, str | None, str | None]:
        """(used, pricing status or None, reason) of one quota in one period."""
        if isinstance(reading, Usage):
            return reading.metric(d.metric), None, None
        if self.pricebook is None or reading is None:
            reason = "no price book: start the worker with --pricebook or TOKENPULSE_PRICEBOOK"
            self._report(key, d, reason)
            return Decimal(0), "unknown", reason
        rows = reading
        month = billing_month(start)
        assert d.currency is not None  # QuotaDefinition requires it for metric=cost
        try:
            cost = period_cost(self.pricebook, d.currency, month, rows)
        except PriceBookError as exc:
            cost = PeriodCost(Decimal(0), (), False, exc.message)
        if cost.reason is not None:
            self._report(key, d, cost.reason)
            return cost.amount, "unknown", cost.reason
        if cost.unpriced_models:
            reason = (
                f"no price for model(s) {', '.join(cost.unpriced_models)} in "
                f"{self.pricebook.source}; used counts only priced usage"
            )
            self._report(key, d, reason)
            return cost.amount, ("priced_partial" if cost.priced_any else "unknown"), reason
        self._reported.pop(key, None)
        return cost.amount, None, None

    def _report(self, key: bytes, d: QuotaDefinition, reason: str) -> None:
        # Once per quota and problem, not once per batch.
        if self._reported.get(key) != reason:
            self._reported[key] = reason
            log.error(
                "cost quota %s of %s cannot be priced fully: %s", d.quota_id, d.tenant_id, reason
            )
