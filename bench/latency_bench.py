"""Freshness and alert latency at one fixed paced rate, without the rest of the bench.

`tokenpulse bench` measures latency at half and quarter of the drain rate it
measured minutes before, so its latency rows move with that rate and with
the VM. This runs only the latency phase, at the rate given, on a fresh
pipeline: a worker with its alert quotas loaded (and read once by its quota
timer), then the paced generator in its own process for `--duration-s`,
with `--alert-quotas` tenants each crossing its quota once. One line of
table per run; bench/ab.sh pairs it with an older commit.

    .venv/bin/python bench/latency_bench.py 40000
    bench/ab.sh 1d57c71 3 latency_bench.py 40000
    .venv/bin/python bench/latency_bench.py 20000 --team-quotas   # a budget per team

`--team-quotas` also puts a day quota (never crossed) on each of the
generator's 100 teams, so that every write's quota check touches 100
quotas, as for a fleet with a budget per team. `--workers N` runs N
workers in one group (the worker column is the first; each team is one key,
so one partition and one worker).

Without KAFKA_BOOTSTRAP_SERVERS and CLICKHOUSE_URL a temporary local stack
is started.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
import uuid
from collections.abc import Callable

from tokenpulse.bench import load
from tokenpulse.bench.paced import PacedProcess
from tokenpulse.bench.run import (
    BenchConfig,
    Latency,
    _fresh_and_alerts,
    _put_alert_quotas,
    alert_tenants,
)
from tokenpulse.bench.services import Pipeline, jit_cpu_s, obtain_services, proc_cpu_s
from tokenpulse.cli.bench import sigterm_unwinds

try:
    from tokenpulse.bench.services import machine_times
except ImportError:  # an older tokenpulse (the old side of bench/ab.sh) measures no steal
    machine_times = None


def _machine_s() -> tuple[float, float]:
    """The machine's busy and stolen CPU seconds so far (stolen: nan when not measured)."""
    if machine_times is None:
        from tokenpulse.bench.services import machine_busy_s

        return machine_busy_s(), math.nan
    times = machine_times()
    return times.busy_s, times.stolen_s


# The worker's quota timer ticks every 5 s; its first tick reads every new
# quota's usage, which is what an early (pre-write) check compares against.
_QUOTA_TIMER_S = 6.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rate_eps", type=float)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--alert-quotas", type=int, default=50)
    parser.add_argument("--team-quotas", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    # A fresh broker spends much of its first minute compiling (C2): without a
    # warm-up, that JIT time is measured as the pipeline's (see jit_cpu_s).
    parser.add_argument("--warmup-s", type=float, default=20.0)
    args = parser.parse_args()
    config = BenchConfig(fresh_duration_s=args.duration_s, alert_quotas=args.alert_quotas)
    res = Latency("half")  # the tenants whose quotas the "half" phase crosses

    def say(line: str) -> None:
        sys.stderr.write(line + "\n")

    with sigterm_unwinds(), obtain_services() as services:
        pipe = Pipeline(services, "lat" + uuid.uuid4().hex[:8], "l")
        others = [pipe.sibling(f"l{i + 2}") for i in range(args.workers - 1)]
        try:
            pipe.setup()
            _put_alert_quotas(pipe, alert_tenants(config, res.load), limit=10_000)
            if args.team_quotas:
                teams = [f"{load.FRESH_ORG}/team-{t}" for t in range(100)]
                _put_alert_quotas(pipe, teams, limit=10**15)
            warmup = load.fleet(2_000, 50, seed=7)
            backlog = asyncio.run(
                load.produce_backlog(services.bootstrap, pipe.topics.usage, warmup, envelope=False)
            )
            worker = pipe.start_worker()
            named = {
                "worker": worker,
                "broker": services.broker_pid,
                "endpoint": services.store_pid,
            }
            for i, other in enumerate(others):
                named[f"worker {i + 2}"] = other.start_worker()
            pipe.wait_rows(backlog.expected_events, 300)
            pids = {name: pid for name, pid in named.items() if pid is not None}
            if args.warmup_s > 0:
                _warm_up(pipe, args.rate_eps, args.warmup_s, say)
            # What each process costs with no traffic (the worker caught up).
            idle0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
            time.sleep(_QUOTA_TIMER_S)
            idle = {k: (proc_cpu_s(pids[k]) - v) / _QUOTA_TIMER_S * 100 for k, v in idle0.items()}
            say(
                "idle CPU % of a core: "
                + ", ".join(f"{k} {v:.0f}" for k, v in sorted(idle.items()))
            )
            rows0, machine0, t0 = pipe.rows(), _machine_s(), time.time()
            cpu0, req0 = _cpu_s(pids), _endpoint_requests(services.clickhouse_url)
            _fresh_and_alerts(config, pipe, res, 1.0, args.rate_eps, say)
            rows1, machine1, t1 = pipe.rows(), _machine_s(), time.time()
            cpu1, req1 = _cpu_s(pids), _endpoint_requests(services.clickhouse_url)
        finally:
            for other in others:
                other.stop_worker()
            pipe.teardown()
    # CPU over the whole phase, including the tail after the generator stopped.
    per_event = {name: (cpu1[name] - cpu0[name]) / max(rows1 - rows0, 1) * 1e6 for name in cpu1}
    per_event["generator"] = res.generator_cpu_s / max(res.sent, 1) * 1e6
    worker_us = per_event["worker"]
    wall_s = max(t1 - t0, 1e-9)
    busy_pct, stolen_pct = ((b - a) / wall_s * 100 for a, b in zip(machine0, machine1, strict=True))
    print(
        "| rate events/s | freshness p50 | freshness p99 | alert p99 | alerts "
        "| worker us/event | machine busy | stolen |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {res.rate_eps:,.0f} | {res.p50_s:.2f} s | {res.p99_s:.2f} s "
        f"| {res.alert_p99_s:.2f} s | {res.alerts} | {worker_us:.1f} | {busy_pct:.0f} % "
        f"| {stolen_pct:.0f} % |"
    )
    # Who spent the two cores: CPU us an event, per process of the run.
    say("CPU us/event: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_event.items())))
    rates = {k: (req1[k] - req0.get(k, 0.0)) / max(t1 - t0, 1e-9) for k in req1}
    say("endpoint requests/s: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(rates.items())))
    return 0


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process, and of the broker's JIT compiler threads."""
    out = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    if "broker" in pids:
        out["broker JIT"] = jit_cpu_s(pids["broker"])
    return out


def _warm_up(
    pipe: Pipeline, rate_eps: float, duration_s: float, say: Callable[[str], None]
) -> None:
    """The paced load for duration_s through the whole pipeline, then caught up."""
    say(f"warm-up: {rate_eps:,.0f} events/s for {duration_s:.0f} s")
    before = pipe.rows()
    warm = PacedProcess(
        [
            "--bootstrap", pipe.services.bootstrap, "--topic", pipe.topics.usage,
            "--rate-eps", str(rate_eps), "--duration-s", str(duration_s),
            "--sample-every", str(1 << 40), "--id-prefix", "warm",
        ]
    )  # fmt: skip
    warm.start()
    while warm.is_alive():
        pipe.check_worker()
        time.sleep(0.5)
    warm.stop()
    pipe.wait_rows(before + warm.result.sent, 300)


def _endpoint_requests(url: str) -> dict[str, float]:
    """Requests the embedded endpoint answered so far, by kind (empty for another server)."""
    import re
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    # /metrics needs no credentials; urllib cannot take them in the URL.
    parts = urlsplit(url)
    metrics = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "/metrics", "", ""))
    try:
        # http(s): the URL of the stack the bench started or was given.
        with urllib.request.urlopen(metrics, timeout=5) as reply:  # noqa: S310
            text = reply.read().decode()
    except OSError:
        return {}
    found = re.findall(
        r'^tokenpulse_clickhouse_http_requests_total{kind="(\w+)"} (\S+)$', text, re.M
    )
    return {kind: float(n) for kind, n in found}


if __name__ == "__main__":
    sys.exit(main())
