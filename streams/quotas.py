"""The quota engine: definitions and states in memory, checks after each write.

Definitions come from tokenpulse.quotas.v1 and the last known state of every
quota from tokenpulse.quota.state.v1 (both compacted, read whole by every
worker). After a batch is durable the engine asks the store for the usage of
each touched (quota, period), and announces each newly crossed threshold
once. "Already announced" is derived from the last published state (the
thresholds its `used` had crossed at its limit), so a replay after a crash
announces nothing twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

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
from tokenpulse.streams.cost import PeriodCost, billing_month, period_cost
from tokenpulse.streams.quota_logic import Amount, crossed_thresholds, evaluate, period_bounds
from tokenpulse.streams.usage_query import UsageReader

log = logging.getLogger("tokenpulse.streams.quotas")


@dataclass(frozen=True, slots=True)
class Touch:
    """An accepted (or replayed durable) event, as far as quotas care."""

    tenant_id: str
    model: str
    occurred_at: datetime
    event_id: str


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
        todo: dict[tuple[bytes, datetime], tuple[QuotaDefinition, datetime, str]] = {}
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
        todo: dict[tuple[bytes, datetime], tuple[QuotaDefinition, datetime, str]] = {}
        for key, state in self.states.items():
            d = self.definitions.get(key)
            if d is not None and state.period_end <= now:
                start, end = period_bounds(d.period, now, d.timezone)
                todo[(key, start)] = (d, end, "")
        return await self._run(todo, now)

    async def _run(
        self,
        todo: dict[tuple[bytes, datetime], tuple[QuotaDefinition, datetime, str]],
        now: datetime,
    ) -> list[Outgoing]:
        alerts: list[Outgoing] = []
        states: list[Outgoing] = []
        for (key, start), (d, end, event_id) in sorted(todo.items(), key=lambda kv: kv[0]):
            state = self.states.get(key)
            if state is not None and start < state.period_start:
                continue  # a late event of a period already closed: no alerts for the past
            used, pricing, reason = await self._measure(key, d, start, end)
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

    async def _measure(
        self, key: bytes, d: QuotaDefinition, start: datetime, end: datetime
    ) -> tuple[Amount, str | None, str | None]:
        """(used, pricing status or None, reason) of one quota in one period."""
        if d.metric != "cost":
            usage = await self.reader.usage(d.tenant_id, d.model, start, end)
            return usage.metric(d.metric), None, None
        if self.pricebook is None:
            reason = "no price book: start the worker with --pricebook or TOKENPULSE_PRICEBOOK"
            self._report(key, d, reason)
            return Decimal(0), "unknown", reason
        month = billing_month(start)
        since = datetime(month.year, month.month, 1, tzinfo=UTC)
        rows = await self.reader.usage_by_model(d.tenant_id, d.model, since, start, end)
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
