"""Worker settings side by side: the same fleet backlog drained once per variant.

Each variant gets a fresh pipeline (topics, database), the same 300,000
fleet records (one event per record), and one `tokenpulse worker` started
with the variant's environment on top of the defaults. Printed: events/s
(5 % -> 100 % of the rows), the ratio to the first variant, and where the
CPU went (worker, ClickHouse endpoint, Kafka broker: us per event; the
machine's busy %, and the % the hypervisor stole from it: a drain with
much stolen is slow for that reason). One run, one table; read the ratios,
not the digits.

    .venv/bin/python bench/drain_bench.py                      # defaults vs 1 MiB fetches
    .venv/bin/python bench/drain_bench.py "" TOKENPULSE_WRITE_MAX_RECORDS=1 ...
    .venv/bin/python bench/drain_bench.py --tenants 2000 --quotas 2000 \
        "" TOKENPULSE_QUOTA_MAX_READS_PER_CHECK=1000000    # budgeted agents: the read cap

`--quotas N` puts a day quota (never crossed) on N of the fleet's tenants
before the worker starts, so every write's quota check touches them.
`--envelopes` sends the backlog as the SDK batches it (envelopes of many
events per record) instead of one event per record. `--workers N` drains it
with N workers in one group (the worker column is one of them).

A variant is "" (the defaults) or NAME=VALUE[,NAME=VALUE...]; the item
`signed` signs the backlog with one key per org and has the worker verify
every record (its default; the other variants trust the broker's ACLs, as
`tokenpulse bench` does); `unverified` sends the same signed backlog (one
SDK producer per org, signature headers) to a worker that does not verify:
against `signed` it is the MAC check's cost, against "" the backlog's. Without
KAFKA_BOOTSTRAP_SERVERS and CLICKHOUSE_URL a temporary local stack is started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tokenpulse.bench import load
from tokenpulse.bench.run import DrainCpu, _put_alert_quotas, drain_backlog
from tokenpulse.bench.services import Pipeline, Services, obtain_services
from tokenpulse.cli.bench import sigterm_unwinds
from tokenpulse.fleet import FleetRecord
from tokenpulse.simulate import org_of

Drained = tuple[float, DrainCpu]  # events/s, where the CPU went

# What each default replaced, measured on the 2-core bench VM (BENCHMARKS.md).
DEFAULT_VARIANTS = (
    "",
    "TOKENPULSE_PARTITION_FETCH_BYTES=1048576",
    "TOKENPULSE_WRITE_MAX_RECORDS=2000",
    "TOKENPULSE_GC_GEN0_THRESHOLD=0",
)


@contextmanager
def environment(changes: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `changes` (the worker inherits it), restored afterwards."""
    old = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SIGNED = "signed"
UNVERIFIED = "unverified"


def parse_variant(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        if item in (SIGNED, UNVERIFIED):
            out[item] = "1"
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("TOKENPULSE_"):
            raise SystemExit(f"variant item {item!r}: expected TOKENPULSE_NAME=VALUE")
        out[name] = value
    return out


def drain(
    services: Services,
    records: list[FleetRecord],
    env: Mapping[str, str],
    quotas: list[str],
    envelope: bool = False,
    workers: int = 1,
) -> Drained:
    """One fresh pipeline, the backlog, `workers` workers with `env` on top of the defaults.

    With several, the others start first, in the same group: the measured
    one (its CPU is the worker column) joins them when the drain starts.
    """
    pipe = Pipeline(services, "drain" + uuid.uuid4().hex[:8], "d")
    others: list[Pipeline] = []
    env = dict(env)
    secrets = None
    verify = bool(env.pop(SIGNED, None))
    if verify or env.pop(UNVERIFIED, None):
        orgs = (org_of(r.tenant_id) for r in records)
        secrets = pipe.sign_with_org_keys(orgs, verify=verify)
    try:
        pipe.setup()
        if quotas:
            _put_alert_quotas(pipe, quotas, limit=10**15)
        backlog = asyncio.run(
            load.produce_backlog(
                services.bootstrap, pipe.topics.usage, records, envelope=envelope,
                org_secrets=secrets,
            )
        )  # fmt: skip
        with environment(env):  # the workers inherit it
            for i in range(workers - 1):
                others.append(pipe.sibling(f"d{i + 2}"))
                others[-1].start_worker()
            return drain_backlog(pipe, backlog.expected_events, None)
    finally:
        for other in others:
            other.stop_worker()
        pipe.teardown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--quotas", type=int, default=0)
    parser.add_argument("--envelopes", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    variants = [(v or "defaults", parse_variant(v)) for v in args.variants]
    records = load.fleet(args.events, args.tenants, seed=5)
    quotas = list(dict.fromkeys(r.tenant_id for r in records))[: args.quotas]
    rows: list[tuple[str, Drained]] = []
    with sigterm_unwinds(), obtain_services() as services:
        for name, env in variants:
            result = drain(services, records, env, quotas, args.envelopes, args.workers)
            rows.append((name, result))
            sys.stderr.write(f"{name}: {result[0]:,.0f} events/s\n")
    base = rows[0][1][0]

    def stolen(cpu: DrainCpu) -> str:
        # An older tokenpulse (the old side of bench/ab.sh) does not measure it.
        pct = getattr(cpu, "stolen_pct", None)
        return "n/a" if pct is None else f"{pct:.0f} %"

    def us(cpu_s_per_100k: float | None) -> str:
        return "n/a" if cpu_s_per_100k is None else f"{cpu_s_per_100k * 10:.1f}"

    print("| variant | events/s | x first | worker us/event | ClickHouse us/event "
          "| Kafka us/event | machine busy | stolen |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (eps, cpu) in rows:
        print(
            f"| {name} | {eps:,.0f} | {eps / base:.2f} | {us(cpu.worker)} "
            f"| {us(cpu.store)} | {us(cpu.broker)} | {cpu.machine_busy_pct:.0f} % "
            f"| {stolen(cpu)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
