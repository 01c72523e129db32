"""Billing accounts (who receives an invoice) and the exact split of a line over tenants.

Finance bills a customer (an org, a department), not each agent: a tenant id
such as `globex/research/agent-2` is billed to its billing account, and tiers
and minimums apply to the account's total usage.

- `account_level = N` (price book, or `bill --account-level N`): the account
  is the tenant's ancestor with N path components (`globex` for N = 1);
  a tenant with fewer components is its own account; 0 = the leaf tenant.
- `[accounts]` maps tenant prefixes to account ids explicitly and wins over
  the level; a prefix matches whole path components (`acme/research` covers
  `acme/research` and `acme/research/...`, not `acme/researchers`), and the
  longest matching prefix wins.

`allocate_cents` splits an account line's amount over its tenants in
proportion to their tokens, rounded to the cent by largest remainder, so the
parts always add up exactly to the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from tokenpulse.errors import ConfigError

SEPARATOR = "/"
CENTS = 100


@dataclass(frozen=True)
class AccountMap:
    """tenant id -> billing account id."""

    level: int = 0  # path components kept; 0 = the leaf tenant is the account
    explicit: Mapping[str, str] = field(default_factory=dict)  # tenant prefix -> account id

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) or self.level < 0:
            raise ConfigError(
                f"account_level {self.level!r} must be an integer >= 0"
                " (0 bills each tenant, 1 its top-level org, ...)"
            )
        for prefix, account in self.explicit.items():
            if not prefix or prefix != prefix.strip(SEPARATOR) or not account:
                raise ConfigError(
                    f"[accounts] {prefix!r} = {account!r}: use a tenant prefix without a leading"
                    ' or trailing "/" and a non-empty account id'
                )

    def account_for(self, tenant_id: str) -> str:
        parts = tenant_id.split(SEPARATOR)
        # Longest prefix first: `acme/research/x` checks `acme/research/x`,
        # `acme/research`, then `acme`.
        for n in range(len(parts), 0, -1):
            account = self.explicit.get(SEPARATOR.join(parts[:n]))
            if account is not None:
                return account
        if self.level == 0:
            return tenant_id
        return SEPARATOR.join(parts[: self.level])

    def can_produce(self, account_id: str) -> bool:
        """Whether some tenant id could be billed to `account_id` (for validating minimums)."""
        if self.level == 0 or account_id in self.explicit.values():
            return True
        return len(account_id.split(SEPARATOR)) <= self.level


def allocate_cents(amount: Decimal, weights: Sequence[int]) -> list[Decimal]:
    """Split a cent amount in proportion to integer weights; the parts sum to it exactly.

    Largest remainder: each part gets the floor of its exact share (in cents,
    towards zero), then the cents left over go one each to the parts with the
    largest remainders; ties go to the earlier part, so callers that pass the
    parts in a fixed order (tenant id) get the same split on every run.
    A negative amount (a volume tier making a late adjustment a credit) is
    split as its magnitude and negated. All-zero weights split evenly.
    """
    cents = amount * CENTS
    if cents != cents.to_integral_value():
        raise ValueError(f"amount {amount} is not a whole number of cents")
    if not weights:
        raise ValueError("nothing to allocate to")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    total_cents = int(cents)
    sign = -1 if total_cents < 0 else 1
    magnitude = abs(total_cents)
    ws = list(weights) if any(weights) else [1] * len(weights)
    total_w = sum(ws)
    floors = [magnitude * w // total_w for w in ws]
    # Remainders as integers (numerators over total_w): exact, no Decimal context.
    remainders = [magnitude * w % total_w for w in ws]
    left = magnitude - sum(floors)
    order = sorted(range(len(ws)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        floors[i] += 1
    return [Decimal(sign * c).scaleb(-2) for c in floors]
