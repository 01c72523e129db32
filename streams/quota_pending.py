"""Quota usage before ClickHouse has it: a lower bound for alerts at prepare time.

The quota engine reads a period's usage from the store after each durable
write, so an alert waited for the write (the write interval, the insert,
the read): at half load that was most of its 1.7-1.9 s. This keeps, per
(quota, period), the last usage the store returned (`base`) and the tokens
of events this worker accepted since but has not written yet (`outstanding`,
per prepared batch). base + outstanding is a lower bound of the usage the
store will hold once those events land:

- base counts only durable events; outstanding only events that are not
  durable yet (a batch leaves it when the read that follows its write
  returns, `settle`), so nothing is counted twice;
- other workers' events are missing from outstanding, and usage within a
  period only grows, so the bound is low, never high.

A threshold that the lower bound crosses is crossed for sure, so the alert
can go out as soon as the batch is prepared. What is only a bound is never
harmful: dropping entries (a revoked batch, a failed read, a changed
definition) makes the bound lower and the alert waits for the durable check.

A base can also be *exact* for a while (`exact`): while this worker is the
only one writing usage (it owns every partition), or while its reads show
that no other worker writes the period (`confirms`: the engine's quiet
rule), its last reading plus this worker's durable writes folded in since
(`settle`) is the store's total, and the engine evaluates it without
reading again.

Tokens are kept per (tenant, model) and kind (input, cached input, output,
reasoning), raw as the events carry them, so the bound serves both kinds of
reading: token totals (`Usage`) and the rows a cost quota prices
(`ModelUsage`: the pending tokens join the period's `within` of their row,
priced at the month's margin like the rest).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from datetime import datetime

from tokenpulse.streams.cost import ModelUsage
from tokenpulse.streams.quota_logic import Usage

At = tuple[bytes, datetime]  # (quota state key, period start)
Bound = Usage | list[ModelUsage]  # what a store reading and a lower bound are made of
# (tenant_id, model) -> [input, cached_input, output, reasoning] tokens as in
# the events (cached within input, reasoning within output: the contract's rule).
Split = dict[tuple[str, str], list[int]]


def _add(split: Split, key: tuple[str, str], tokens: tuple[int, int, int, int]) -> None:
    acc = split.get(key)
    if acc is None:
        split[key] = list(tokens)
    else:
        for i, n in enumerate(tokens):
            acc[i] += n


class PendingUsage:
    def __init__(self) -> None:
        # Reading, period end, the engine's read round it came from, and until
        # when (the engine's clock) it is exact about every writer (see `exact`).
        self._base: dict[At, tuple[Bound, datetime, int, float]] = {}
        # Per prepared batch (seq, ascending) and (quota, period): its tokens.
        self._batches: dict[int, dict[At, Split]] = {}
        self._outstanding: dict[At, Split] = {}

    def add(
        self, seq: int, at: At, tenant_id: str, model: str, tokens: tuple[int, int, int, int]
    ) -> None:
        """An accepted, not yet durable event of batch `seq` counts toward `at`.

        `tokens`: input, cached input, output and reasoning tokens of the event.
        """
        key = (tenant_id, model)
        _add(self._batches.setdefault(seq, {}).setdefault(at, {}), key, tokens)
        _add(self._outstanding.setdefault(at, {}), key, tokens)

    def settle(self, upto_seq: int, *, durable: Collection[int] = ()) -> None:
        """Batches up to `upto_seq` are durable (their read returned) or dropped.

        Completions run in sequence order, so a batch below a completed one
        that is still here was dropped (revoked, stopping): either way it
        leaves the bound.

        The tokens of the `durable` batches join the base of every (quota,
        period) they count toward: the base was read before this write, so
        base + this worker's own durable writes since is still exact about
        this worker's events. For a period the read after this write left
        out (the engine's cap, an exact base), that is its new bound; for
        one it read, the reading replaces the base right after, and the two
        agreeing shows that no other writer added to it in between
        (`confirms`). A dropped batch never joins a base.
        """
        for seq in [s for s in self._batches if s <= upto_seq]:
            for at, split in self._batches.pop(seq).items():
                self._subtract(at, split)
                if seq in durable and at in self._base:
                    reading, end, read_round, exact_until_s = self._base[at]
                    self._base[at] = (_plus(reading, split), end, read_round, exact_until_s)

    def _subtract(self, at: At, split: Split) -> None:
        total = self._outstanding.get(at)
        if total is None:
            return
        for key, tokens in split.items():
            acc = total.get(key)
            if acc is None:
                continue
            for i, n in enumerate(tokens):
                acc[i] -= n
            if not any(acc):
                del total[key]
        if not total:
            del self._outstanding[at]

    def observe(
        self,
        at: At,
        durable: Bound,
        end: datetime,
        read_round: int = 0,
        exact_until_s: float = -math.inf,
    ) -> None:
        """What the store returned for `at` (a period ending at `end`): durable events only.

        `exact_until_s`: until then the base, with this worker's durable
        writes folded in (`settle`), is the store's total: no other writer
        can add to it (the engine's sole-owner rule). Never, by default.
        """
        self._base[at] = (durable, end, read_round, exact_until_s)

    def confirms(self, at: At, reading: Bound, since_round: int) -> bool:
        """Whether `reading` holds exactly `at`'s base with this worker's writes folded in.

        True only for a base read at `since_round` or later (the current
        ownership): then no other writer added tokens to the period between
        the two reads (usage only grows; this worker's durable writes are in
        both), which is what lets the engine trust a base for a while
        without a worker being alone (its quiet rule).
        """
        base = self._base.get(at)
        return base is not None and base[2] >= since_round and _total(base[0]) == _total(reading)

    def exact(self, at: At, now_s: float) -> bool:
        """Whether `at`'s base is still the store's total at `now_s` (no read needed)."""
        return now_s < self.trusted_until(at)

    def trusted_until(self, at: At) -> float:
        """Until when `at`'s base is exact (-inf: it is not, or there is none)."""
        base = self._base.get(at)
        return -math.inf if base is None else base[3]

    def drop_exactness(self) -> None:
        """Another writer may have joined (a rebalance): every base is only a bound again."""
        for at, (reading, end, read_round, exact_until_s) in list(self._base.items()):
            if exact_until_s != -math.inf:
                self._base[at] = (reading, end, read_round, -math.inf)

    def read_round(self, at: At) -> int:
        """The read round of `at`'s base; -1 if the store was never read for it."""
        base = self._base.get(at)
        return -1 if base is None else base[2]

    def with_outstanding(self, at: At, durable: Bound) -> Bound:
        """A store reading plus what is still on its way there."""
        split = self._outstanding.get(at)
        return _plus(durable, split) if split else durable

    def lower_bound(self, at: At) -> Bound | None:
        """base + outstanding; None before the store was read for `at`."""
        base = self._base.get(at)
        return None if base is None else self.with_outstanding(at, base[0])

    def forget_quota(self, key: bytes) -> None:
        """A definition changed (model, metric, period...): its numbers may not apply."""
        for at in [at for at in self._base if at[0] == key]:
            del self._base[at]
        for batch in self._batches.values():
            for at in [at for at in batch if at[0] == key]:
                self._subtract(at, batch.pop(at))

    def forget_ended(self, now: datetime) -> None:
        """Drop the bases of periods that ended (bounded memory across periods)."""
        for at in [at for at, (_, end, _, _) in self._base.items() if end <= now]:
            del self._base[at]


def _total(bound: Bound) -> int:
    """Every token a reading or bound counts, whatever its kind."""
    if isinstance(bound, Usage):
        return bound.input_tokens + bound.output_tokens
    return sum(sum(r.before.values()) + sum(r.within.values()) for r in bound)


def _plus(bound: Bound, split: Split) -> Bound:
    """`bound` with the tokens of `split` added (each kind where the reading keeps it)."""
    if isinstance(bound, Usage):
        return Usage(
            bound.input_tokens + sum(t[0] for t in split.values()),
            bound.output_tokens + sum(t[2] for t in split.values()),
        )
    rows = {(r.tenant_id, r.model): r for r in bound}
    for (tenant_id, model), (inp, cached, out, reasoning) in split.items():
        row = rows.get((tenant_id, model))
        # The priced kinds, as the store's query splits them (usage_query).
        more = {
            "input": inp - cached,
            "cached_input": cached,
            "output": out - reasoning,
            "reasoning": reasoning,
        }
        within = dict(row.within) if row is not None else {}
        for kind, n in more.items():
            within[kind] = within.get(kind, 0) + n
        before = row.before if row is not None else {}
        rows[(tenant_id, model)] = ModelUsage(tenant_id, model, before, within)
    return list(rows.values())
