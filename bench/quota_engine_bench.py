"""The quota engine's own CPU, without a broker or a store: definitions and per-event checks.

Usage: .venv/bin/python bench/quota_engine_bench.py [--quotas 10000] [--batches 40] [--runs 3]
                                                    [--sole-owner]
       bench/ab.sh REV 2 quota_engine_bench.py        (commit REV against the working tree)

A fleet of `--quotas` tenants (`fleet/agent-N`), a day quota on each that
is never crossed, and a store that answers every read with no usage at
once (so only the engine's work is timed). Measured, medians of `--runs`:
- applying every definition, as the quota feed does at a worker's start;
- applying them all again (new limits) while a check has left all but
  200 of them deferred, as when a TOML file of quotas is loaded;
- `early` and the durable `check` per event, on batches of 2,000 events
  over the fleet with Zipf-distributed tenants (as `drain_bench.py
  --tenants` produces them), 10 models, spread over two minutes.
With `--sole-owner` the engine runs as a worker that owns every usage
partition (a quota read once is exact from then on; round 17 on).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tokenpulse.schemas import QuotaDefinition, UsageEvent
from tokenpulse.schemas.quota import quota_state_key
from tokenpulse.streams.quota_logic import Usage
from tokenpulse.streams.quotas import QuotaEngine
from tokenpulse.streams.usage_query import UsageRequest

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
BATCH = 2_000


class NoUsage:
    """A store with nothing in it, answering at once."""

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        return [Usage() for _ in requests]


def _definitions(n: int, limit: int) -> list[tuple[bytes, QuotaDefinition]]:
    out = []
    for i in range(n):
        d = QuotaDefinition(
            quota_id="day", tenant_id=f"fleet/agent-{i}", metric="total", period="day", limit=limit
        )
        out.append((quota_state_key(d.tenant_id, d.quota_id), d))
    return out


def _batches(n_tenants: int, batches: int) -> list[list[UsageEvent]]:
    rng = random.Random(7)
    weights = [1 / (k + 1) for k in range(n_tenants)]
    out = []
    for b in range(batches):
        tenants = rng.choices(range(n_tenants), weights=weights, k=BATCH)
        out.append(
            [
                UsageEvent(
                    event_id=f"e{b}-{j}",
                    tenant_id=f"fleet/agent-{t}",
                    occurred_at=NOW + timedelta(milliseconds=b * 3_000 + j),
                    model=f"model-{t % 10}",
                    input_tokens=100 + j % 50,
                    output_tokens=10 + j % 7,
                )
                for j, t in enumerate(tenants)
            ]
        )
    return out


async def _run(
    n: int, batches: list[list[UsageEvent]], sole_owner: bool
) -> tuple[float, float, float, float]:
    # Passed only when asked: older engines (bench/ab.sh) lack these parameters.
    alone = {"sole_owner": lambda: 1, "reread_s": 3600.0} if sole_owner else {}
    engine = QuotaEngine(NoUsage(), alerts_topic="a", state_topic="s", max_reads_per_check=200,  # type: ignore[arg-type]
                         **alone)  # fmt: skip
    defs = _definitions(n, 10**15)
    t0 = time.perf_counter()
    for key, d in defs:
        engine.apply_definition(key, d)
    apply_s = time.perf_counter() - t0
    await engine.check((), NOW)  # the definitions' first check: 200 read, the rest deferred
    t0 = time.perf_counter()
    for key, d in _definitions(n, 10**15 + 1):
        engine.apply_definition(key, d)
    reapply_s = time.perf_counter() - t0
    await engine.check((), NOW)
    early_s = check_s = 0.0
    events = 0
    for seq, batch in enumerate(batches, start=1):
        t0 = time.perf_counter()
        engine.early(seq, batch, NOW)
        t1 = time.perf_counter()
        await engine.check(batch, NOW, settle_upto=seq, durable_seqs={seq})
        t2 = time.perf_counter()
        early_s += t1 - t0
        check_s += t2 - t1
        events += len(batch)
    return apply_s, reapply_s, early_s / events, check_s / events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quotas", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sole-owner", action="store_true")
    args = ap.parse_args()
    batches = _batches(args.quotas, args.batches)
    runs = [asyncio.run(_run(args.quotas, batches, args.sole_owner)) for _ in range(args.runs)]
    apply_s, reapply_s, early_s, check_s = (statistics.median(r[i] for r in runs) for i in range(4))
    alone = " sole-owner" if args.sole_owner else ""
    print(f"quotas={args.quotas} batches={args.batches}x{BATCH} runs={args.runs}{alone} (medians)")
    print()
    print("| apply all, ms | apply all again, ms | early, us/event | check, us/event |")
    print("| --- | --- | --- | --- |")
    ms = f"| {apply_s * 1e3:,.0f} | {reapply_s * 1e3:,.0f}"
    print(f"{ms} | {early_s * 1e6:.2f} | {check_s * 1e6:.2f} |")


if __name__ == "__main__":
    main()
