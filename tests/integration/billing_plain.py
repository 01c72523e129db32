"""The plain reference for the billing done-when tests: shares no code with sinks.billing.

Straight from the TOML and the raw events: tier arithmetic, token types,
late events, minimums, billing accounts (via a `who` function) and the
largest-remainder split, in plain Decimal and integer cents.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.synthetic import as_batches, random_events

MODELS = ("research-xl", "frontier-large", "small-fast")
OCT, NOV = date(2026, 10, 1), date(2026, 11, 1)
GRACE = timedelta(days=3)


def plain_cost(spec: Any, qty: int) -> Decimal:
    """Independent tier arithmetic, straight from the TOML."""
    if isinstance(spec, str):
        return Decimal(qty) * Decimal(spec) / 1_000_000
    bounds = [t.get("up_to") for t in spec["tiers"]]
    prices = [Decimal(t["price"]) for t in spec["tiers"]]
    if spec.get("mode", "graduated") == "volume":
        for b, p in zip(bounds, prices, strict=True):
            if b is None or qty <= b:
                return Decimal(qty) * p / 1_000_000
    total, lower = Decimal(0), 0
    for b, p in zip(bounds, prices, strict=True):
        top = qty if b is None else min(qty, b)
        if top > lower:
            total += Decimal(top - lower) * p / 1_000_000
        if b is None or qty <= b:
            break
        lower = b
    return total


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def month_of(d: datetime) -> date:
    return date(d.year, d.month, 1)


Key = tuple[str, str, str, str]  # (kind, model, token type, usage month)


def priced_parts(
    events: list[tuple[UsageEvent, datetime]], models: dict[str, Any], who: Callable[[str], str]
) -> tuple[dict[tuple[str, str, date, str], int], dict[tuple[str, str, date, str, str], int]]:
    """Tokens billed before November and on November, per (who, model, usage month, type)."""
    before: dict[tuple[str, str, date, str], int] = defaultdict(int)
    now: dict[tuple[str, str, date, str, str], int] = defaultdict(int)  # + tenant
    for ev, ingested in events:
        usage_m = month_of(ev.occurred_at)
        bill_m = max(usage_m, month_of(ingested - GRACE))
        if bill_m > NOV:
            continue
        prices = models[ev.model]
        parts = {
            "input": ev.input_tokens - ev.cached_input_tokens,
            "cached_input": ev.cached_input_tokens,
            "output": ev.output_tokens - ev.reasoning_tokens,
            "reasoning": ev.reasoning_tokens,
        }
        for ttype, n in parts.items():
            priced_as = ttype if ttype in prices else {"cached_input": "input"}.get(ttype, "output")
            if bill_m == NOV:
                now[(who(ev.tenant_id), ev.model, usage_m, priced_as, ev.tenant_id)] += n
            else:
                before[(who(ev.tenant_id), ev.model, usage_m, priced_as)] += n
    return before, now


def largest_remainder(cents: int, weights: dict[str, int]) -> dict[str, int]:
    """Plain largest remainder in integer cents: ties to the lower tenant id."""
    total = sum(weights.values())
    sign, cents = (-1, -cents) if cents < 0 else (1, cents)
    base = {t: cents * w // total for t, w in weights.items()}
    by_remainder = sorted(weights, key=lambda t: (-(cents * weights[t] % total), t))
    for t in by_remainder[: cents - sum(base.values())]:
        base[t] += 1
    return {t: sign * c for t, c in base.items()}


def expected_invoices(
    events: list[tuple[UsageEvent, datetime]],
    book: dict[str, Any],
    who: Callable[[str], str] = lambda t: t,
    split: dict[str, dict[tuple[Key, str], Decimal]] | None = None,
) -> dict[str, dict[Key, Decimal]]:
    """Invoice lines per `who` (tenant or account); `split` receives the per-tenant parts."""
    version = book["versions"][0]
    models = version["models"]
    before, now = priced_parts(events, models, who)
    qty: dict[tuple[str, str, date, str], int] = defaultdict(int)
    tenants: dict[tuple[str, str, date, str], dict[str, int]] = defaultdict(dict)
    for (acct, model, usage_m, ttype, tenant), n in now.items():
        qty[(acct, model, usage_m, ttype)] += n
        if n:
            tenants[(acct, model, usage_m, ttype)][tenant] = n
    out: dict[str, dict[Key, Decimal]] = defaultdict(dict)
    for (acct, model, usage_m, ttype), n in qty.items():
        if not n:
            continue
        spec = models[model][ttype]
        prior = before.get((acct, model, usage_m, ttype), 0)
        amount = cents(plain_cost(spec, prior + n)) - cents(plain_cost(spec, prior))
        kind = "usage" if usage_m == NOV else "adjustment"
        key = (kind, model, ttype, f"{usage_m:%Y-%m}")
        out[acct][key] = amount
        if split is not None:
            parts = largest_remainder(int(amount * 100), tenants[(acct, model, usage_m, ttype)])
            for tenant, c in parts.items():
                split.setdefault(acct, {})[(key, tenant)] = Decimal(c) / 100
    for acct in set(out) | set(version.get("tenant_minimums", {})):
        usage = sum((a for k, a in out[acct].items() if k[0] == "usage"), Decimal(0))
        minimum = Decimal(
            version.get("tenant_minimums", {}).get(acct, version["minimum_monthly_fee"])
        )
        if usage < minimum:
            out[acct][("minimum", "", "", "2026-11")] = cents(minimum - usage)
            if split is not None:
                split.setdefault(acct, {})[(("minimum", "", "", "2026-11"), acct)] = cents(
                    minimum - usage
                )
    return out


def waves(tenants: tuple[str, ...], scale: int = 1) -> list[tuple[list[UsageEvent], datetime]]:
    def gen(n: int, start: datetime, span: timedelta, seed: int, prefix: str) -> list[UsageEvent]:
        return random_events(
            n // scale,
            start=start,
            span=span,
            tenants=tenants,
            models=MODELS,
            seed=seed,
            prefix=prefix,
        )

    oct_start = datetime(2026, 10, 1, tzinfo=UTC)
    nov_start = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        # October usage billed in October, ingested on time
        (gen(12_000, oct_start, timedelta(days=31), 1, "oct"), datetime(2026, 10, 31, tzinfo=UTC)),
        # October usage arriving Nov 2 (within grace): still October's invoice
        (gen(1_500, oct_start, timedelta(days=31), 2, "oct-g"), datetime(2026, 11, 2, tzinfo=UTC)),
        # October usage arriving Nov 20, after October closed: November adjustments
        (gen(2_500, oct_start, timedelta(days=31), 3, "oct-l"), datetime(2026, 11, 20, tzinfo=UTC)),
        (gen(16_000, nov_start, timedelta(days=30), 4, "nov"), datetime(2026, 11, 30, tzinfo=UTC)),
        # November usage arriving Dec 2 (within grace): November's invoice
        (gen(1_000, nov_start, timedelta(days=30), 5, "nov-g"), datetime(2026, 12, 2, tzinfo=UTC)),
        # November usage arriving Dec 10: December's invoice, not this one
        (gen(700, nov_start, timedelta(days=30), 6, "nov-l"), datetime(2026, 12, 10, tzinfo=UTC)),
    ]


async def load(
    url: str, db: str, waves: list[tuple[list[UsageEvent], datetime]]
) -> list[tuple[UsageEvent, datetime]]:
    all_events: list[tuple[UsageEvent, datetime]] = []
    async with ClickHouseSink(url, database=db) as sink:
        for i, (events, ingested) in enumerate(waves):
            topic = f"usage-{i}"
            for batch in as_batches(events, topic=topic, batch_rows=4_000, ingested_at=ingested):
                await sink.write(batch)
            all_events += [(e, ingested) for e in events]
    return all_events
