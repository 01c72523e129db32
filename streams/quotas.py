"""The quota engine: definitions and states in memory, checks after each write.

Definitions come from tokenpulse.quotas.v1 and the last known state of every
quota from tokenpulse.quota.state.v1 (both compacted, read whole by every
worker). After a batch is durable the engine asks the store for the usage of
every touched (quota, period) in one batched read, and announces each newly
crossed threshold once. "Already announced" is derived from the last
published state (the thresholds its `used` had crossed at its limit), so a
replay after a crash announces nothing twice.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

from tokenpulse.schemas.quota import (
    QuotaAlert,
    QuotaDefinition,
    QuotaState,
    encode_quota_alert,
    encode_quota_state,
    quota_alert_id,
    quota_state_key,
)
from tokenpulse.schemas.usage import tenant_lineage
from tokenpulse.sinks.billing import PriceBook, PriceBookError
from tokenpulse.streams.cost import ModelUsage, PeriodCost, billing_month, period_cost
from tokenpulse.streams.quota_logic import (
    Amount,
    Usage,
    crossed_thresholds,
    evaluate,
    period_bounds,
)
from tokenpulse.streams.usage_query import (
    ModelUsageRequest,
    UsageReader,
    UsageRequest,
    gather_or_cancel,
)

log = logging.getLogger("tokenpulse.streams.quotas")

_WATCH_CACHE_MAX = 200_000


class Touch(NamedTuple):
    """An accepted (or replayed durable) event, as far as quotas care."""

    tenant_id: str
    model: str
    occurred_at: datetime
    event_id: str


Todo = dict[tuple[bytes, datetime], tuple[QuotaDefinition, datetime, str]]
# What the store said about one (quota, period): tokens, or rows to price; None
# for a cost quota without a price book (nothing to read).
Reading = Usage | list[ModelUsage] | None


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes
    value: bytes


class QuotaEngine:
    def __init__(
        self,
        reader: UsageReader,
        *,
        alerts_topic: str,
        state_topic: str,
        pricebook: PriceBook | None = None,
    ) -> None:
        self.reader = reader
        self.pricebook = pricebook  # prices metric=cost quotas; None: they stay unknown
        self._reported: dict[bytes, str] = {}  # last pricing problem logged per quota
        self.alerts_topic = alerts_topic
        self.state_topic = state_topic
        self.definitions: dict[bytes, QuotaDefinition] = {}
        self.states: dict[bytes, QuotaState] = {}
        self._by_tenant: dict[str, list[QuotaDefinition]] = defaultdict(list)
        self._watched: dict[str, bool] = {}  # watches() cache; cleared on definition changes
        self._recheck: set[bytes] = set()  # changed definitions: re-evaluate now
        self.alerts_sent = 0

    # -- topic readers feed these -------------------------------------------------
    def apply_definition(self, key: bytes, value: QuotaDefinition | None) -> None:
        old = self.definitions.pop(key, None)
        if value is not None:
            self.definitions[key] = value
            if (
                old is None
                or old.limit != value.limit
                or old.thresholds_pct != value.thresholds_pct
            ):
                self._recheck.add(key)
        self._by_tenant = defaultdict(list)
        for d in self.definitions.values():
            self._by_tenant[d.tenant_id].append(d)
        self._watched.clear()

    def watches(self, tenant_id: str) -> bool:
        """Whether any quota covers this tenant (on any level of its lineage).

        Cached per tenant: the processor asks once per accepted event and
        builds a Touch only for covered tenants, which is most of the cost of
        checking a batch in which few tenants have quotas.
        """
        watched = self._watched.get(tenant_id)
        if watched is None:
            by_tenant = self._by_tenant
            watched = self._watched[tenant_id] = any(
                level in by_tenant for level in tenant_lineage(tenant_id)
            )
            if len(self._watched) > _WATCH_CACHE_MAX:
                self._watched.clear()  # bounded: 10^5+ tenants just re-derive it
                self._watched[tenant_id] = watched
        return watched

    def apply_state(self, key: bytes, value: QuotaState | None) -> None:
        if value is None:
            self.states.pop(key, None)
            return
        current = self.states.get(key)
        # Keep the newest period's state: a late read of an older one never rolls back.
        if current is None or value.period_start >= current.period_start:
            self.states[key] = value

    # -- checks ---------------------------------------------------------------------
    def _matching(self, touch: Touch) -> Iterable[QuotaDefinition]:
        for level in tenant_lineage(touch.tenant_id):
            for d in self._by_tenant.get(level, ()):
                if d.model is None or d.model == touch.model:
                    yield d

    async def check(self, touches: Iterable[Touch], now: datetime | None = None) -> list[Outgoing]:
        """Alerts and states owed for these events (alerts first, then states)."""
        now = now or datetime.now(UTC)
        todo: Todo = {}
        for touch in touches:
            for d in self._matching(touch):
                start, end = period_bounds(d.period, touch.occurred_at, d.timezone)
                todo[(quota_state_key(d.tenant_id, d.quota_id), start)] = (d, end, touch.event_id)
        for key in sorted(self._recheck):
            d_opt = self.definitions.get(key)
            if d_opt is not None:
                start, end = period_bounds(d_opt.period, now, d_opt.timezone)
                todo.setdefault((key, start), (d_opt, end, ""))
        self._recheck.clear()
        return await self._run(todo, now)

    async def roll_periods(self, now: datetime | None = None) -> list[Outgoing]:
        """A period that ended resolves: publish the new period's (usually ok) state."""
        now = now or datetime.now(UTC)
        todo: Todo = {}
        for key, state in self.states.items():
            d = self.definitions.get(key)
            if d is not None and state.period_end <= now:
                start, end = period_bounds(d.period, now, d.timezone)
                todo[(key, start)] = (d, end, "")
        return await self._run(todo, now)

    def _closed(self, key: bytes, start: datetime) -> bool:
        """A late event of a period already closed: no alerts for the past."""
        state = self.states.get(key)
        return state is not None and start < state.period_start

    async def _run(self, todo: Todo, now: datetime) -> list[Outgoing]:
        ordered = sorted(todo.items(), key=lambda kv: kv[0])
        # Read everything before evaluating anything: a failed read leaves the
        # states untouched. The loop below moves a key's state only to the
        # period it visits, in ascending order, so it skips what is skipped
        # here; the quota feed may still change states during the read.
        readings = await self._read(
            [
                (key, start, d, end)
                for (key, start), (d, end, _) in ordered
                if not self._closed(key, start)
            ]
        )
        alerts: list[Outgoing] = []
        states: list[Outgoing] = []
        for (key, start), (d, end, event_id) in ordered:
            if (key, start) not in readings or self._closed(key, start):
                continue
            state = self.states.get(key)
            used, pricing, reason = self._measure(key, d, start, readings[(key, start)])
            announced: frozenset[int] = frozenset()
            if state is not None and state.period_start == start and state.limit == d.limit:
                announced = crossed_thresholds(state.used, d.limit, d.thresholds_pct)
            result = evaluate(
                used=used, limit=d.limit, thresholds=d.thresholds_pct, announced=announced
            )
            status = result.status
            if pricing == "unknown" or (pricing == "priced_partial" and status != "exceeded"):
                # A lower bound that is already over the limit is exceeded for
                # sure; anything less is not known to be ok.
                status = pricing
            for pct in result.newly_crossed:
                alert = QuotaAlert(
                    alert_id=quota_alert_id(d.tenant_id, d.quota_id, start, pct, d.limit),
                    tenant_id=d.tenant_id,
                    quota_id=d.quota_id,
                    period_start=start,
                    threshold_pct=pct,
                    used=used,
                    limit=d.limit,
                    crossed_at=now,
                    event_id=event_id,
                    hard=d.hard,
                )
                alerts.append(
                    Outgoing(self.alerts_topic, d.tenant_id.encode(), encode_quota_alert(alert))
                )
                self.alerts_sent += 1
                log.info(
                    "quota %s of %s crossed %d%% (%s/%s)",
                    d.quota_id,
                    d.tenant_id,
                    pct,
                    used,
                    d.limit,
                )
            changed = (
                state is None
                or state.period_start != start
                or state.limit != d.limit
                or state.status != status
                or state.reason != reason
                or bool(result.newly_crossed)
                or announced != result.crossed
            )
            if changed:
                new_state = QuotaState(
                    tenant_id=d.tenant_id,
                    quota_id=d.quota_id,
                    status=status,  # type: ignore[arg-type]
                    used=used,
                    limit=d.limit,
                    period_start=start,
                    period_end=end,
                    updated_at=now,
                    hard=d.hard,
                    model=d.model,
                    reason=reason,
                )
                self.states[key] = new_state
                states.append(Outgoing(self.state_topic, key, encode_quota_state(new_state)))
        return alerts + states

    async def _read(
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

    def _measure(
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
