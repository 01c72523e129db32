"""Which quota periods a durable check reads from the store, and which it trusts without a read.

A read costs the store ~2 ms of CPU a quota period, and a check comes after
every write, so the quota engine asks this planner what to read:

- the cap: at most `max_reads_per_check` periods a check; the others are
  deferred and read at a later check or tick, the never read first, then
  the longest unread (their lower bound counts this worker's own events
  exactly meanwhile);
- the sole-owner rule: while this worker is assigned every usage partition
  (`sole_owner()` gives the consumer generation), no other worker writes
  usage, so a period's last reading plus this worker's durable writes since
  is the store's total: it is trusted for `reread_s` after its read (a
  safety net for rows written outside the pipeline);
- the quiet rule: with other workers in the group (`generation()`), a
  period whose reading holds exactly its previous reading of the same
  generation plus this worker's own writes since was written by no one
  else (a tenant's events share one key, so one partition): it is trusted
  for `quiet_reread_s`. A reading with other tokens starts over;
- a period touched while trusted is read once its trust ends, touched
  again or not (a tick does it), so a crossing its last touch made with
  tokens this worker had not seen is found then.

A rebalance (another generation, or none) ends every trust. The bases and
their trust live in PendingUsage (quota_pending.py); this keeps the order.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from tokenpulse.schemas.quota import QuotaDefinition
from tokenpulse.streams.quota_pending import At, Bound, PendingUsage

Entry = tuple[QuotaDefinition, datetime, str]  # definition, period end, the naming event
Todo = dict[At, Entry]
Epoch = tuple[int, bool]  # (consumer generation, alone)


class Plan(NamedTuple):
    read: list[At]  # read now (sorted); deferred entries read now joined `todo`
    later: list[At]  # of `todo`, left for a later check by the cap
    exact: list[At]  # of `todo`, trusted: no read owed
    epoch: Epoch | None  # the ownership the plan was made in
    now_s: float


class ReadPlanner:
    def __init__(
        self,
        pending: PendingUsage,
        *,
        closed: Callable[[At], bool],
        current: Callable[[At, Entry], bool],
        max_reads_per_check: int | None = None,
        sole_owner: Callable[[], int | None] | None = None,
        reread_s: float = 0.0,
        generation: Callable[[], int | None] | None = None,
        quiet_reread_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pending = pending
        # A period already closed (no alerts for the past), and whether a
        # waiting read's entry still has its quota's definition.
        self.closed = closed
        self.current = current
        self.max_reads_per_check = max_reads_per_check  # None: no cap
        self.sole_owner = sole_owner
        self.reread_s = reread_s  # 0: the sole-owner rule is off
        self.generation = generation
        self.quiet_reread_s = quiet_reread_s  # 0: the quiet rule is off
        self.clock = clock
        # The deferred reads: the entry per period, and a heap of (read
        # round, order, at) that gives the longest unread first. The heap
        # may hold stale items (read or dropped since): skipped when they come
        # up, so a check costs what it touches plus the cap, not the fleet's
        # thousands of deferred quotas.
        self.deferred: Todo = {}
        self._queue: list[tuple[int, int, At]] = []
        self._order = 0
        self.read_round = 0
        # The ownership at the last check, and the first read round in it.
        self._epoch: Epoch | None = None
        self._epoch_round = 0
        # Periods touched while trusted, not read since, and a heap of
        # (trusted until, order, at) that gives the first trust to end.
        self._trusted: Todo = {}
        self._trust_ends: list[tuple[float, int, At]] = []
        # Periods checks read, and evaluated without a read by each rule (metrics).
        self.periods_read = 0
        self.periods_exact = 0
        self.periods_quiet = 0

    def ownership(self) -> Epoch | None:
        """(generation, alone) while a rule may trust a base without a read, else None."""
        if self.sole_owner is not None and self.reread_s > 0:
            alone = self.sole_owner()
            if alone is not None:
                return alone, True
        if self.generation is not None and self.quiet_reread_s > 0:
            gen = self.generation()
            if gen is not None:
                return gen, False
        return None

    def plan(self, todo: Todo) -> Plan:
        """What this check reads, leaves for later and trusts; the read round starts.

        Read: up to the cap, the never read first (-1: no lower bound to
        stand in), then the longest unread, from `todo`, the deferred reads
        of earlier checks (first on a tie: they waited) and the touched
        trusted periods whose trust ended. One of those that is read joins
        `todo`; one that is no longer `current` (its definition changed) or
        whose period is `closed` is dropped.
        """
        epoch = self.ownership()
        if epoch != self._epoch:
            # Ownership changed (a rebalance, a new generation): another worker
            # may have written since any base was read.
            self.pending.drop_exactness()
            self._epoch = epoch
            self._epoch_round = self.read_round + 1
        now_s = self.clock()
        due = [at for at in todo if not self.closed(at)]
        for at in due:
            self.deferred.pop(at, None)  # touched again: `todo` has its newest entry
        exact: list[At] = []
        if epoch is not None:
            need: list[At] = []
            for at in due:
                (exact if self.pending.exact(at, now_s) else need).append(at)
            due = need
            self._trust(todo, exact)
        due += self._trust_ended(todo, now_s)
        read, later = self._capped(todo, due)
        read.sort()
        for at in read:
            self._trusted.pop(at, None)  # its trust starts again from this read, if at all
        self.read_round += 1
        self.periods_read += len(read)
        if epoch is not None and epoch[1]:
            self.periods_exact += len(exact)
        else:
            self.periods_quiet += len(exact)
        return Plan(read, later, exact, epoch, now_s)

    def _capped(self, todo: Todo, due: list[At]) -> tuple[list[At], list[At]]:
        cap = self.max_reads_per_check
        if cap is None:
            return due, []
        round_of = self.pending.read_round
        fresh = sorted(due, key=round_of)  # stable: ties keep their order
        read: list[At] = []
        i = 0
        queue = self._queue
        while len(read) < cap:
            while queue and queue[0][2] not in self.deferred:
                heapq.heappop(queue)  # stale: read or dropped since
            if i < len(fresh) and (not queue or round_of(fresh[i]) < queue[0][0]):
                read.append(fresh[i])
                i += 1
            elif queue:
                at = heapq.heappop(queue)[2]
                entry = self.deferred.pop(at)
                if self._still_due(at, entry):
                    todo[at] = entry
                    read.append(at)
            else:
                break
        return read, fresh[i:]

    def _trust(self, todo: Todo, exact: list[At]) -> None:
        """Remember trusted periods touched now, to read each when its trust ends."""
        for at in exact:
            if at not in self._trusted:
                self._order += 1
                until = self.pending.trusted_until(at)
                heapq.heappush(self._trust_ends, (until, self._order, at))
            self._trusted[at] = todo[at]

    def _trust_ended(self, todo: Todo, now_s: float) -> list[At]:
        """Touched trusted periods whose trust ended since: due for a read (they join `todo`)."""
        due: list[At] = []
        ends = self._trust_ends
        while ends and ends[0][0] <= now_s:
            at = heapq.heappop(ends)[2]
            entry = self._trusted.get(at)
            if entry is None or self.pending.exact(at, now_s):
                # Read since; or read, trusted and touched again: its newer item stands.
                continue
            del self._trusted[at]
            if at not in todo and self._still_due(at, entry):
                todo[at] = entry  # (one touched now is read, or deferred, with `todo`)
                due.append(at)
        return due

    def _still_due(self, at: At, entry: Entry) -> bool:
        """A waiting read is still owed: same definition, period not closed."""
        return self.current(at, entry) and not self.closed(at)

    def defer(self, todo: Todo, later: list[At]) -> None:
        """These periods of `todo` wait for a later check's read."""
        for at in later:
            if at not in self.deferred:
                self._order += 1
                heapq.heappush(self._queue, (self.pending.read_round(at), self._order, at))
            self.deferred[at] = todo[at]

    def held(self, plan: Plan) -> Epoch | None:
        """The plan's ownership if it still holds after the read, else None (trust nothing)."""
        return plan.epoch if plan.epoch is not None and self.ownership() == plan.epoch else None

    def trusted_until(self, at: At, reading: Bound, epoch: Epoch, now_s: float) -> float:
        """Until when `at`'s new reading, made in `epoch` from `now_s`, is trusted (-inf: not)."""
        if epoch[1]:
            return now_s + self.reread_s
        if self.pending.confirms(at, reading, self._epoch_round):
            return now_s + self.quiet_reread_s
        return -math.inf
