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

Token metrics only: a cost quota is priced from the month's rows per model
(tiers), which the store read provides; its alerts stay with the durable
check.
"""

from __future__ import annotations

from datetime import datetime

from tokenpulse.streams.quota_logic import Usage

At = tuple[bytes, datetime]  # (quota state key, period start)


def _plus(a: Usage, b: Usage) -> Usage:
    return Usage(a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens)


class PendingUsage:
    def __init__(self) -> None:
        self._base: dict[At, tuple[Usage, datetime]] = {}  # reading, period end
        # Per prepared batch (seq, ascending): [input, output] per (quota, period).
        self._batches: dict[int, dict[At, list[int]]] = {}
        self._outstanding: dict[At, list[int]] = {}

    def add(self, seq: int, at: At, input_tokens: int, output_tokens: int) -> None:
        """An accepted, not yet durable event of batch `seq` counts toward `at`."""
        mine = self._batches.setdefault(seq, {}).setdefault(at, [0, 0])
        mine[0] += input_tokens
        mine[1] += output_tokens
        total = self._outstanding.setdefault(at, [0, 0])
        total[0] += input_tokens
        total[1] += output_tokens

    def settle(self, upto_seq: int) -> None:
        """Batches up to `upto_seq` are durable (their read returned) or dropped.

        Completions run in sequence order, so a batch below a completed one
        that is still here was dropped (revoked, stopping): either way it
        leaves the bound.
        """
        for seq in [s for s in self._batches if s <= upto_seq]:
            for at, (inp, out) in self._batches.pop(seq).items():
                self._subtract(at, inp, out)

    def _subtract(self, at: At, input_tokens: int, output_tokens: int) -> None:
        total = self._outstanding.get(at)
        if total is None:  # only zeros were added (a total of 0 is dropped)
            return
        total[0] -= input_tokens
        total[1] -= output_tokens
        if total == [0, 0]:
            del self._outstanding[at]

    def observe(self, at: At, durable: Usage, end: datetime) -> None:
        """What the store returned for `at` (a period ending at `end`): durable events only."""
        self._base[at] = (durable, end)

    def with_outstanding(self, at: At, durable: Usage) -> Usage:
        """A store reading plus what is still on its way there."""
        total = self._outstanding.get(at)
        return durable if total is None else _plus(durable, Usage(total[0], total[1]))

    def lower_bound(self, at: At) -> Usage | None:
        """base + outstanding; None before the store was read for `at`."""
        base = self._base.get(at)
        return None if base is None else self.with_outstanding(at, base[0])

    def forget_quota(self, key: bytes) -> None:
        """A definition changed (model, metric, period...): its numbers may not apply."""
        for at in [at for at in self._base if at[0] == key]:
            del self._base[at]
        for batch in self._batches.values():
            for at in [at for at in batch if at[0] == key]:
                self._subtract(at, *batch.pop(at))

    def forget_ended(self, now: datetime) -> None:
        """Drop the bases of periods that ended (bounded memory across periods)."""
        for at in [at for at, (_, end) in self._base.items() if end <= now]:
            del self._base[at]

    def clear(self) -> None:
        self._base.clear()
        self._batches.clear()
        self._outstanding.clear()
