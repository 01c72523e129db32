"""The quota engine: definitions and states in memory, checks before and after each write.

Definitions come from tokenpulse.quotas.v1 and the last known state of every
quota from tokenpulse.quota.state.v1 (both compacted, read whole by every
worker). After a batch is durable the engine asks the store for the usage of
every touched (quota, period) in one batched read, and announces each newly
crossed threshold once. "Already announced" is derived from the last
published state (the thresholds its `used` had crossed at its limit), so a
replay after a crash announces nothing twice.

Quotas are also checked when a batch is prepared (`early`), against a
lower bound of their usage (quota_pending.py): a threshold crossed by the
bound is announced then, without waiting for the write and the read.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from tokenpulse.schemas.quota import (
    QuotaAlert,
    QuotaDefinition,
    QuotaState,
    encode_quota_alert,
    encode_quota_state,
    quota_alert_id,
    quota_state_key,
)
from tokenpulse.schemas.usage import UsageEvent, tenant_lineage
from tokenpulse.sinks.billing import PriceBook
from tokenpulse.streams.quota_logic import (
    Amount,
    crossed_thresholds,
    evaluate,
    minute_period_bounds,
    on_whole_minutes,
    period_bounds,
)
from tokenpulse.streams.quota_pending import At, PendingUsage
from tokenpulse.streams.quota_reads import Entry, Plan, ReadPlanner, Todo
from tokenpulse.streams.quota_usage import QuotaUsage, Reading
from tokenpulse.streams.usage_query import UsageReader

log = logging.getLogger("tokenpulse.streams.quotas")

_WATCH_CACHE_MAX = 200_000


class Touch(NamedTuple):
    """An accepted (or replayed durable) event, as far as quotas care."""

    tenant_id: str
    model: str
    occurred_at: datetime
    event_id: str


class Counted(Protocol):
    """What the quota engine reads of an event (a UsageEvent or a Touch)."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def event_id(self) -> str: ...


# A quota period an event counts toward: (state key, start), definition, end.
Period = tuple[At, QuotaDefinition, datetime]


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
        max_reads_per_check: int | None = None,
        sole_owner: Callable[[], int | None] | None = None,
        reread_s: float = 0.0,
        generation: Callable[[], int | None] | None = None,
        quiet_reread_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        ended_grace_s: float = 300.0,
    ) -> None:
        self.reader = reader
        self.pending = PendingUsage()  # lower bounds of usage (tokens and cost) for `early`
        # What each durable check reads, and what it trusts without a read
        # (quota_reads.py: the cap on reads per check, the sole-owner and
        # quiet rules). Reads were up to 200 a check, one check a write, at
        # ~2 ms of endpoint CPU each.
        self.reads = ReadPlanner(
            self.pending,
            closed=self._closed,
            current=self._current,
            max_reads_per_check=max_reads_per_check,
            sole_owner=sole_owner,
            reread_s=reread_s,
            generation=generation,
            quiet_reread_s=quiet_reread_s,
            clock=clock,
        )
        self.usage = QuotaUsage(reader, pricebook)
        self.alerts_topic = alerts_topic
        self.state_topic = state_topic
        self.definitions: dict[bytes, QuotaDefinition] = {}
        self.states: dict[bytes, QuotaState] = {}
        # The state each quota had when it moved on to a newer period, kept
        # until `ended_grace_s` after that period's end: a batch of its last
        # seconds written after the move (new-period events or the timer's
        # roll-over came first) still announces what it crossed, against
        # the thresholds this state announced. Not published: the state
        # topic's record of a quota is its newest period.
        self.ended: dict[bytes, QuotaState] = {}
        self.ended_grace = timedelta(seconds=ended_grace_s)
        self._by_tenant: dict[str, list[tuple[bytes, QuotaDefinition]]] = defaultdict(list)
        # watches() cache, cleared on definition changes: the tenants asked
        # about, and those of them that a quota covers.
        self._asked: set[str] = set()
        self._covered: set[str] = set()
        # _matching() cache, cleared on definition changes too.
        self._matches: dict[tuple[str, str], list[tuple[bytes, QuotaDefinition]]] = {}
        self._recheck: set[bytes] = set()  # changed definitions: re-evaluate now
        self.alerts_sent = 0

    # Quota periods checks read from the store, and evaluated without a read
    # by the sole-owner and the quiet rule (exported as metrics).
    @property
    def periods_read(self) -> int:
        return self.reads.periods_read

    @property
    def periods_exact(self) -> int:
        return self.reads.periods_exact

    @property
    def periods_quiet(self) -> int:
        return self.reads.periods_quiet

    # -- topic readers feed these -------------------------------------------------
    def apply_definition(self, key: bytes, value: QuotaDefinition | None) -> None:
        # Incremental, not rebuilt from every definition: a file of 10,000
        # quotas arrives as 10,000 records (quadratic when each rebuilt it).
        old = self.definitions.pop(key, None)
        if old is not None:
            mine = [e for e in self._by_tenant[old.tenant_id] if e[1] is not old]
            if mine:
                self._by_tenant[old.tenant_id] = mine
            else:
                del self._by_tenant[old.tenant_id]
            # A deferred read of the old definition is dropped when it is due
            # (`check`): an index here would cost every check more than this.
            if value is None or _scope(old) != _scope(value):
                self.pending.forget_quota(key)  # its numbers measured something else
                if value is not None:
                    # So did the state's `used`: a check starts from the new
                    # measure (states never go down within a period).
                    self.states.pop(key, None)
                self.ended.pop(key, None)
        # (A key without a definition has no bounds: they are only kept for
        # the current definitions, and a delete forgot them.)
        if value is not None:
            self.definitions[key] = value
            # With its state key: asked per event, built once here.
            state_key = quota_state_key(value.tenant_id, value.quota_id)
            self._by_tenant[value.tenant_id].append((state_key, value))
            if (
                old is None
                or old.limit != value.limit
                or old.thresholds_pct != value.thresholds_pct
            ):
                self._recheck.add(key)
        self._asked.clear()
        self._covered.clear()
        self._matches.clear()

    def watches(self, tenant_id: str) -> bool:
        """Whether any quota covers this tenant (on any level of its lineage)."""
        return bool(self.covered({tenant_id}))

    def covered(self, tenant_ids: set[str]) -> set[str]:
        """The tenants among `tenant_ids` that a quota covers (on any level of their lineage).

        Asked with the distinct tenants of a batch, in set operations, and
        cached per tenant until the definitions change: a batch in which no
        tenant has a quota costs no per-event work for quotas at all (~0.4 us
        an event, of the worker's ~7-10, when each event asked).
        """
        unknown = tenant_ids - self._asked
        if unknown:
            if len(self._asked) + len(unknown) > _WATCH_CACHE_MAX:
                # Bounded: past 200,000 tenants they are just derived again
                # (all of this call's, so that none is forgotten midway).
                self._asked.clear()
                self._covered.clear()
                unknown = tenant_ids
            by_tenant = self._by_tenant
            self._asked |= unknown
            self._covered |= {
                t for t in unknown if any(level in by_tenant for level in tenant_lineage(t))
            }
        return tenant_ids & self._covered

    def apply_state(self, key: bytes, value: QuotaState | None) -> None:
        if value is None:
            self.states.pop(key, None)
            self.ended.pop(key, None)
            return
        current, d = self.states.get(key), self.definitions.get(key)
        if current is None or _supersedes(value, current, d):
            self._move(key, current, value)
            return
        # Another worker's (or an earlier) state of the period this one left.
        ended = self.ended.get(key)
        if ended is None or ended.period_start != value.period_start:
            return
        if _supersedes(value, ended, d):
            self.ended[key] = value

    # -- checks ---------------------------------------------------------------------
    def _matching(self, tenant_id: str, model: str) -> list[tuple[bytes, QuotaDefinition]]:
        """(state key, definition) of every quota that counts this tenant's model.

        Remembered per (tenant, model) until the definitions change: asked
        per distinct (tenant, model, minute) of every batch, twice.
        """
        found = self._matches.get((tenant_id, model))
        if found is None:
            found = [
                (key, d)
                for level in tenant_lineage(tenant_id)
                for key, d in self._by_tenant.get(level, ())
                if d.model is None or d.model == model
            ]
            if len(self._matches) >= _WATCH_CACHE_MAX:
                self._matches.clear()  # bounded, like the watches cache
            self._matches[(tenant_id, model)] = found
        return found

    def _periods(
        self, tenant_id: str, model: str, occurred_at: datetime
    ) -> tuple[list[Period], bool]:
        """The quota periods an event counts toward, and whether all of them hold its UTC minute.

        They do when their bounds are whole minutes; a zone's historic offset
        with seconds (Amsterdam before 1937) can split a minute.
        """
        found: list[Period] = []
        whole = True
        for key, d in self._matching(tenant_id, model):
            bounds = minute_period_bounds(d.period, occurred_at, d.timezone)
            whole = whole and on_whole_minutes(bounds)
            found.append(((key, bounds[0]), d, bounds[1]))
        return found, whole

    def _counted(
        self, events: Sequence[Counted], tokens: bool
    ) -> Iterator[tuple[list[Period], _Group]]:
        """The batch's events per (tenant, model, UTC minute), each group with its quota periods.

        A batch's events of one tenant mostly share their minute, so the
        periods are worked out once per group, not per event. A group whose
        periods do not hold its whole minute is split back into its events.
        """
        groups = _by_minute(events, tokens)
        split: set[_Minute] = set()
        for minute, g in groups.items():
            sample = g[1]
            found, whole = self._periods(sample.tenant_id, sample.model, sample.occurred_at)
            if whole:
                yield found, g
            else:
                split.add(minute)
        if split:
            for i, ev in enumerate(events):
                if _minute_of(ev) in split:
                    found, _ = self._periods(ev.tenant_id, ev.model, ev.occurred_at)
                    yield found, _group(i, ev, tokens)

    async def check(
        self,
        touches: Iterable[Counted],
        now: datetime | None = None,
        *,
        settle_upto: int | None = None,
        durable_seqs: Collection[int] = (),
    ) -> list[Outgoing]:
        """Alerts and states owed for these events (alerts first, then states).

        `settle_upto`: the batches up to this `early` seq are durable now (or
        were dropped); the read that follows their write takes them over
        from the lower bounds. `durable_seqs`: those of them written just now
        (a quota the read leaves out keeps counting their tokens).
        Quotas a previous check left unread are due again.
        """
        now = now or datetime.now(UTC)
        todo: Todo = {}
        last: dict[At, int] = {}  # the batch's last event of each period names it
        for found, g in self._counted(list(touches), tokens=False):
            for at, d, end in found:
                if last.get(at, -1) < g[0]:
                    last[at] = g[0]
                    todo[at] = (d, end, g[2])
        rechecks: set[At] = set()
        for key in sorted(self._recheck):
            d_opt = self.definitions.get(key)
            if d_opt is not None:
                start, end = period_bounds(d_opt.period, now, d_opt.timezone)
                todo.setdefault((key, start), (d_opt, end, ""))
                rechecks.add((key, start))
        self._recheck.clear()
        return await self._run(todo, now, settle_upto, durable_seqs, rechecks)

    async def roll_periods(self, now: datetime | None = None) -> list[Outgoing]:
        """A period that ended resolves: publish the new period's (usually ok) state."""
        now = now or datetime.now(UTC)
        todo: Todo = {}
        for key, state in self.states.items():
            d = self.definitions.get(key)
            if d is not None and state.period_end <= now:
                start, end = period_bounds(d.period, now, d.timezone)
                todo[(key, start)] = (d, end, "")
        self.pending.forget_ended(now)
        for key in [k for k, st in self.ended.items() if st.period_end + self.ended_grace <= now]:
            del self.ended[key]
        return await self._run(todo, now)

    def _move(self, key: bytes, current: QuotaState | None, new: QuotaState) -> None:
        """`new` is the quota's state; the one it leaves behind in an older period is kept."""
        self.states[key] = new
        if current is not None and current.period_start < new.period_start:
            self.ended[key] = current

    def _closed(self, at: At) -> bool:
        """A period already closed: no alerts for the past.

        The quota's state is in a newer period, and `at` is not the period it
        left within the grace (`ended`): later than that, an event is late.
        """
        state = self.states.get(at[0])
        if state is None or at[1] >= state.period_start:
            return False
        ended = self.ended.get(at[0])
        return ended is None or ended.period_start != at[1]

    def _current(self, at: At, entry: Entry) -> bool:
        """Whether a waiting read's entry still has the quota's definition."""
        return self.definitions.get(at[0]) is entry[0]

    def early(
        self, seq: int, events: Iterable[UsageEvent], now: datetime | None = None
    ) -> list[Outgoing]:
        """Alerts and states owed by accepted, not yet durable events of batch `seq`.

        Their tokens join the lower bound of every quota they count toward
        (until `check(..., settle_upto >= seq)`); a quota whose bound crosses
        a threshold announces it now. A quota the store was not read for yet
        in this period waits for the durable check, and so does a cost quota
        without a price book (its state is unknown either way).
        """
        now = now or datetime.now(UTC)
        priced = self.usage.pricebook is not None
        todo: Todo = {}
        last: dict[At, int] = {}  # the batch's last event of each period names it
        # The batch's tokens per (quota period, tenant, model), added to the
        # bounds once each: the same sums as an add per event, for less work.
        sums: dict[tuple[At, str, str], list[int]] = {}
        # A tenant no quota covers matches no quota: no periods, nothing to add
        # (the processor passes only covered tenants' events anyway).
        for found, g in self._counted(list(events), tokens=True):
            sample = g[1]
            for at, d, end in found:
                if (d.metric == "cost" and not priced) or self._closed(at):
                    continue
                acc = sums.get((at, sample.tenant_id, sample.model))
                if acc is None:
                    sums[(at, sample.tenant_id, sample.model)] = g[3:7]
                else:
                    acc[0] += g[3]
                    acc[1] += g[4]
                    acc[2] += g[5]
                    acc[3] += g[6]
                if last.get(at, -1) < g[0]:
                    last[at] = g[0]
                    todo[at] = (d, end, g[2])
        for (at, tenant_id, model), (inp, cached, out, reasoning) in sums.items():
            self.pending.add(seq, at, tenant_id, model, (inp, cached, out, reasoning))
        alerts: list[Outgoing] = []
        states: list[Outgoing] = []
        for at, (d, end, event_id) in sorted(todo.items(), key=lambda kv: kv[0]):
            bound = self.pending.lower_bound(at)
            if bound is not None:
                used, pricing, reason = self.usage.measure(at[0], d, at[1], bound)
                self._evaluate_one(at, d, end, event_id, used, pricing, reason, now, alerts, states)
        return alerts + states

    def _lower_bounds(
        self, readings: dict[tuple[bytes, datetime], Reading], todo: Todo, plan: Plan
    ) -> None:
        """Durable readings become the bounds' bases, and count what is on its way.

        A base is trusted without a read for a while if a rule allows it
        (ReadPlanner.trusted_until) and the ownership held during the read.
        """
        epoch = self.reads.held(plan)
        for at, reading in readings.items():
            if reading is None:
                continue
            d, end, _ = todo[at]
            current = self.definitions.get(at[0])
            # A definition that changed what it measures during the read made
            # this reading another quota's: it must not become the base.
            if current is not None and _scope(current) == _scope(d):
                until = -math.inf
                # A cost quota without prices gets no tokens from `early`: its
                # base could not follow this worker's writes.
                if epoch is not None and (d.metric != "cost" or self.usage.pricebook is not None):
                    until = self.reads.trusted_until(at, reading, epoch, plan.now_s)
                self.pending.observe(at, reading, end, self.reads.read_round, until)
            readings[at] = self.pending.with_outstanding(at, reading)

    async def _run(
        self,
        todo: Todo,
        now: datetime,
        settle_upto: int | None = None,
        durable_seqs: Collection[int] = (),
        rechecks: Collection[At] = (),
    ) -> list[Outgoing]:
        """Read (up to the cap), then evaluate `todo` and the deferred reads read now.

        A deferred read that nothing touched since is evaluated only when
        read: its bound has not moved since it was evaluated. Neither is a
        trusted one (the sole-owner or quiet rule) unless its definition changed
        (`rechecks`): `early` evaluated it at this value or a higher one
        when the batches that moved it were prepared (or, had it no base
        then, the check whose read gave it one did, their tokens included).
        """
        plan = self.reads.plan(todo)
        read, later, exact = plan.read, plan.later, plan.exact
        # Read everything before evaluating anything: a failed read leaves the
        # states untouched. The loop below moves a key's state only to the
        # period it visits, in ascending order, so it skips what is skipped
        # here; the quota feed may still change states during the read.
        done = False
        try:
            readings = await self.usage.read([(*at, *todo[at][:2]) for at in read])
            done = True
        finally:
            # Left for later whether the read worked or not; a failed read's
            # quotas wait with them (a tick or the next write reads them).
            self.reads.defer(todo, later if done else read + later)
            if settle_upto is not None:
                # The batches written before this read are in it (or dropped);
                # with no await from here on, `early` cannot run in between.
                # The bases keep the tokens this write made durable.
                self.pending.settle(settle_upto, durable=durable_seqs)
        self._lower_bounds(readings, todo, plan)
        for at in later + [at for at in exact if at in rechecks]:
            # Exact about this worker's events; other workers' wait for the read.
            bound = self.pending.lower_bound(at)
            if bound is not None:
                readings[at] = bound
        alerts: list[Outgoing] = []
        states: list[Outgoing] = []
        for at in sorted(readings):
            if self._closed(at):
                continue
            d, end, event_id = todo[at]
            used, pricing, reason = self.usage.measure(at[0], d, at[1], readings[at])
            self._evaluate_one(at, d, end, event_id, used, pricing, reason, now, alerts, states)
        return alerts + states

    def _evaluate_one(
        self,
        at: tuple[bytes, datetime],
        d: QuotaDefinition,
        end: datetime,
        event_id: str,
        used: Amount,
        pricing: str | None,
        reason: str | None,
        now: datetime,
        alerts: list[Outgoing],
        states: list[Outgoing],
    ) -> None:
        """Evaluate one quota in one period at `used`; owed alerts and state join the lists."""
        key, start = at
        state = self.states.get(key)
        # A period the quota moved on from (within the grace, see `_closed`):
        # judged against the state it ended with, which stays unpublished.
        ended = state is not None and start < state.period_start
        if ended:
            state = self.ended.get(key)
        announced: frozenset[int] = frozenset()
        if state is not None and state.period_start == start and state.limit == d.limit:
            announced = crossed_thresholds(state.used, d.limit, d.thresholds_pct)
            # Usage within a period only grows. A reading below the last state
            # misses tokens still on their way: a batch announced early by a
            # worker that died before writing it is replayed and written by
            # the next. Taking the lower reading would forget the thresholds
            # announced and announce them again once the replay lands.
            if used < state.used:
                used = state.used
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
                "quota %s of %s crossed %d%% (%s/%s)", d.quota_id, d.tenant_id, pct, used, d.limit
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
            if ended:
                self.ended[key] = new_state
                return
            self._move(key, state, new_state)
            states.append(Outgoing(self.state_topic, key, encode_quota_state(new_state)))


# (tenant, model, UTC day ordinal, hour, minute): the events that share their quota periods.
_Minute = tuple[str, str, int, int, int]
# [index of the group's last event, its first event, the last event's id, then,
# when tokens are summed: input, cached input, output, reasoning tokens].
_Group = list[Any]


def _minute_of(ev: Counted) -> _Minute:
    at = ev.occurred_at
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return (ev.tenant_id, ev.model, at.toordinal(), at.hour, at.minute)


def _group(i: int, ev: Any, tokens: bool) -> _Group:
    if tokens:
        return [
            i,
            ev,
            ev.event_id,
            ev.input_tokens,
            ev.cached_input_tokens,
            ev.output_tokens,
            ev.reasoning_tokens,
        ]
    return [i, ev, ev.event_id]


def _by_minute(events: Sequence[Any], tokens: bool) -> dict[_Minute, _Group]:
    """`events` grouped by `_minute_of` (inlined: this runs per event)."""
    groups: dict[_Minute, _Group] = {}
    for i, ev in enumerate(events):
        at = ev.occurred_at
        if at.tzinfo is not UTC:
            at = at.astimezone(UTC)
        minute = (ev.tenant_id, ev.model, at.toordinal(), at.hour, at.minute)
        g = groups.get(minute)
        if g is None:
            groups[minute] = _group(i, ev, tokens)
            continue
        g[0] = i
        g[2] = ev.event_id
        if tokens:
            g[3] += ev.input_tokens
            g[4] += ev.cached_input_tokens
            g[5] += ev.output_tokens
            g[6] += ev.reasoning_tokens
    return groups


def _scope(d: QuotaDefinition) -> tuple[object, ...]:
    """What a quota measures (its limit, thresholds and hardness are not part of it)."""
    return (d.tenant_id, d.model, d.metric, d.period, d.timezone, d.currency)


def _supersedes(new: QuotaState, current: QuotaState, d: QuotaDefinition | None) -> bool:
    """Whether `new` replaces `current` as the last known state of one quota.

    A newer period's state does; an older one, read late, never rolls back.
    Within one period the state at the current limit stands, then the one
    with the higher `used`. States come back from the compacted topic late and out of order (this
    worker's early state and the durable one after it, another worker's of a
    prefix quota). Usage within a period only grows, so the higher `used` is
    the later truth; taking a lower one back would forget a threshold already
    announced and announce it again (same alert_id, but a needless repeat).
    """
    if new.period_start != current.period_start:
        return new.period_start > current.period_start
    if d is not None and (new.limit == d.limit) != (current.limit == d.limit):
        return new.limit == d.limit
    return new.used >= current.used
