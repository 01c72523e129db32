"""The end-to-end benchmark: its phases and what each measures (the table: result.py).

Phases, on one broker and one ClickHouse:
1. raw limit: ProducerPerformance into a scratch topic;
2. a fleet backlog (one event per record) is produced; ConsumerPerformance and
   the quixstreams peer read the same topic; then one worker drains it:
   sustained events/s and CPU seconds per 100,000 events; once the store's
   merges settle, ConsumerPerformance reads it again (the ratio's raw limit
   is the mean of both runs);
3. with that worker live: a paced load at half its rate, then at a quarter,
   freshness (produced -> queryable) of sampled events and alert latency
   (crossing event produced -> alert on the alerts topic) under each;
4. many active tenants: peak RSS of the same worker;
5. the same backlog in SDK batch envelopes into a fresh pipeline: events/s;
6. the single-record backlog signed by each org's key, into a fresh pipeline
   whose worker verifies every signature (the worker's default; phases 2-5
   run it with TOKENPULSE_VERIFY_SIGNATURES=false, broker ACLs as the trust
   model): events/s;
7. the envelope backlog signed the same way, into a fresh verifying worker:
   events/s (an envelope is one signature for many events);
8. each of the four backlogs again (`drains` - 1 times, in the order of 2,
   5, 6, 7), each time the same records produced into a fresh pipeline and
   drained by a fresh worker: a throughput row is the median of its drains.
   A drain of 300,000 events lasts about 3 s, and drains of one backlog
   minutes apart moved by up to 1.6x (BENCHMARKS.md, round 22).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenpulse.bench import load, raw
from tokenpulse.bench.paced import PacedProcess
from tokenpulse.bench.result import BenchResult, DrainCpu, Latency
from tokenpulse.bench.services import (
    Pipeline,
    Services,
    machine_times,
    proc_cpu_s,
    proc_rss_mb,
)
from tokenpulse.bench.vm import unit_ms
from tokenpulse.errors import ServiceUnavailable
from tokenpulse.schemas import QuotaDefinition, encode_quota_definition, quota_state_key
from tokenpulse.schemas.signing import Keyring
from tokenpulse.simulate import org_of
from tokenpulse.streams.settings import env_bool


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    events: int = 300_000  # fleet backlog records
    # The envelope backlog is larger: SDK envelopes hold many events per record,
    # and a backlog drained in one or two batches gives no rate to measure.
    envelope_events: int = 600_000
    fleet_tenants: int = 200
    fresh_duration_s: float = 30.0
    alert_quotas: int = 50
    many_tenants: int = 100_000
    raw_records: int = 1_000_000
    vm_speed_s: float = 5.0  # the VM's speed is read this long before and after the drains
    drains: int = 3  # drains of each backlog; a throughput row is their median
    profile_path: Path | None = None  # py-spy collapsed stacks of the worker while draining

    @classmethod
    def quick_run(cls) -> BenchConfig:
        return cls(
            quick=True,
            events=20_000,
            envelope_events=100_000,
            fleet_tenants=100,
            fresh_duration_s=6.0,
            alert_quotas=5,
            many_tenants=5_000,
            raw_records=100_000,
            vm_speed_s=1.0,
            drains=1,
        )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


Say = Callable[[str], None]


def run_bench(config: BenchConfig, services: Services, say: Say) -> BenchResult:
    res = BenchResult()
    run_id = "bench" + uuid.uuid4().hex[:8]
    single = Pipeline(services, run_id, "single")
    envelope = Pipeline(services, run_id, "envelope")
    signed = Pipeline(services, run_id, "signed")
    signed_envelope = Pipeline(services, run_id, "signedenv")
    # The workers inherit this environment and build their keyring by the same rule.
    wanted = env_bool(os.environ, "TOKENPULSE_NATIVE_SIGNATURE_CHECK", True)
    res.signature_check = "C" if Keyring(native=wanted).native else "Python"
    try:
        res.vm_unit_ms_before = unit_ms(config.vm_speed_s)
        say(f"VM speed: a fixed unit of Python takes {res.vm_unit_ms_before:.2f} ms of CPU")
        _raw_produce(config, services, single, res, say)
        _single(config, services, single, res, say)
        settled_s = single.wait_merges()
        say(f"  merges after the drain settled in {settled_s:.1f} s")
        # The raw limit again, once the endpoint's merges are done (the worker
        # is caught up and idle): the ratio takes the mean of both runs.
        res.raw_consume_after_rps, res.raw_stolen_after_pct = _stolen_during(
            raw.consumer_perf, services.bootstrap, single.topics.usage, config.events
        )
        say(f"  raw kafka-consumer-perf-test again: {res.raw_consume_after_rps:,.0f}/s")
        _fresh_and_alerts(config, single, res.half, 0.5, res.single_eps, say)
        # The paced load is produced on the same two cores through the SDK
        # (~12 us of CPU per event, docs/sdk.md): at half a fast drain the
        # generator, the worker, the endpoint and Kafka can saturate them. A
        # quarter shows the pipeline's latency on a machine that is not.
        _fresh_and_alerts(config, single, res.quarter, 0.25, res.single_eps, say)
        _many_tenants(config, single, res, say)
        single.stop_worker()
        _envelope(config, envelope, res, say)
        _signed(config, signed, res, say, envelope=False)
        _signed(config, signed_envelope, res, say, envelope=True)
        for n in range(2, config.drains + 1):
            for drains, name, envelope_shape, sign in (
                (res.single, "single", False, False),
                (res.envelope, "envelope", True, False),
                (res.signed, "signed", False, True),
                (res.signed_envelope, "signedenv", True, True),
            ):
                again = Pipeline(services, run_id, f"{name}{n}")
                try:
                    eps, cpu = _produce_and_drain(config, again, envelope_shape, sign)
                finally:
                    again.teardown()
                drains.add(eps, cpu)
                say(f"{name} backlog, drain {n}: {eps:,.0f} events/s; {cpu.describe()}")
    finally:
        for pipe in (single, envelope, signed, signed_envelope):
            pipe.teardown()
    # With the pipelines' databases dropped: no merge of theirs can share the
    # cores and caches with the unit.
    res.vm_unit_ms_after = unit_ms(config.vm_speed_s)
    say(f"VM speed after the drains: {res.vm_unit_ms_after:.2f} ms")
    return res


def _raw_produce(
    config: BenchConfig, services: Services, pipe: Pipeline, res: BenchResult, say: Say
) -> None:
    pipe.setup()
    say(f"raw: kafka-producer-perf-test, {config.raw_records:,} records of 400 B")
    # The DLQ topic of this pipeline is a scratch topic until the worker runs;
    # the records are deleted with the pipeline's topics at the end.
    scratch = pipe.prefix + "raw-perf"
    asyncio.run(_create_topic(services.bootstrap, scratch, pipe.partitions))
    res.raw_produce_rps = raw.producer_perf(services.bootstrap, scratch, config.raw_records, 400)


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


def alert_tenants(config: BenchConfig, load_name: str) -> list[str]:
    """The tenants whose quota one paced phase crosses (each phase its own)."""
    return [f"{load.ALERT_ORG}/{load_name}-t{i}" for i in range(config.alert_quotas)]


def _put_alert_quotas(pipe: Pipeline, tenants: list[str], limit: int) -> None:
    from aiokafka import AIOKafkaProducer

    async def put() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=pipe.services.bootstrap, acks="all")
        await producer.start()
        try:
            for t in tenants:
                q = QuotaDefinition(
                    quota_id="bench", tenant_id=t, metric="input", period="day",
                    limit=limit, thresholds_pct=(100,),
                )  # fmt: skip
                await producer.send_and_wait(
                    pipe.topics.quotas, encode_quota_definition(q), key=quota_state_key(t, "bench")
                )
        finally:
            await producer.stop()

    asyncio.run(put())


def drain_backlog(
    pipe: Pipeline, expected: int, res_profile: BenchConfig | None
) -> tuple[float, DrainCpu]:
    """Start the worker on a produced backlog; events/s and where the CPU went."""
    pid = pipe.start_worker()
    t0 = pipe.wait_rows(max(expected // 20, 1), 600, poll_s=0.05)
    known = {
        "worker": pid, "store": pipe.services.store_pid, "broker": pipe.services.broker_pid,
        "bench": os.getpid(),
    }  # fmt: skip
    pids = {k: p for k, p in known.items() if p is not None}
    rows0 = pipe.rows()
    cpu0 = {k: proc_cpu_s(p) for k, p in pids.items()}
    machine0 = machine_times()
    prof: subprocess.Popen[bytes] | None = None
    if res_profile is not None and res_profile.profile_path is not None:
        prof = _start_profile(pid, res_profile.profile_path)
    t1 = pipe.wait_rows(expected, 1800, poll_s=0.1)
    cpu1 = {k: proc_cpu_s(p) for k, p in pids.items()}
    busy_pct, stolen_pct = machine_times().pct_since(machine0, t1 - t0)
    if prof is not None:
        prof.wait(120)
    done = expected - rows0
    per_100k = {k: (cpu1[k] - cpu0[k]) / max(done, 1) * 100_000 for k in cpu0}
    cpu = DrainCpu(
        worker=per_100k["worker"],
        store=per_100k.get("store"),
        broker=per_100k.get("broker"),
        bench=per_100k["bench"],
        machine_busy_pct=busy_pct,
        stolen_pct=stolen_pct,
    )
    if done >= expected // 2:
        return done / max(t1 - t0, 1e-9), cpu
    # Most of the backlog landed before the first look (SDK envelopes: a few
    # batches of many events): time the batches by their own ingested_at.
    return _rate_from_batches(pipe), cpu


def _stolen_during(measure: Callable[..., float], *args: Any) -> tuple[float, float]:
    """`measure(*args)` and the % of one core the hypervisor stole meanwhile.

    A raw consumer run is a second or two: a burst of steal in it moves
    its rate, and with it the ratio row, by up to 2x (BENCHMARKS.md, round 20).
    """
    before, t0 = machine_times(), time.monotonic()
    value = measure(*args)
    return value, machine_times().pct_since(before, time.monotonic() - t0)[1]


def _rate_from_batches(pipe: Pipeline) -> float:
    """Events after the first batch / time from the first batch to the last.

    Every event of a batch shares its ingested_at (the moment the worker
    prepared it), so this is the steady rate between batches.
    """
    table = f"{pipe.database}.usage_events"
    first, last, total, in_first = pipe.client.query(
        f"SELECT min(ingested_at), max(ingested_at), count(),"
        f" countIf(ingested_at = (SELECT min(ingested_at) FROM {table})) FROM {table}"
    ).result_rows[0]
    span_s = (last - first).total_seconds()
    if span_s <= 0:
        raise ServiceUnavailable(
            f"the backlog of {total:,} events was written in one batch: no rate to measure; "
            "run with more --events"
        )
    return float(total - in_first) / float(span_s)


def _start_profile(pid: int, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
         "--duration", "15", "--rate", "50", "--format", "raw", "--output", str(path),
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _single(
    config: BenchConfig, services: Services, pipe: Pipeline, res: BenchResult, say: Say
) -> None:
    _put_alert_quotas(
        pipe, alert_tenants(config, "half") + alert_tenants(config, "quarter"), limit=10_000
    )
    records = load.fleet(config.events, config.fleet_tenants, seed=5)
    say(f"backlog: {len(records):,} fleet records, one event per record")
    backlog = asyncio.run(
        load.produce_backlog(services.bootstrap, pipe.topics.usage, records, envelope=False)
    )
    say(f"  produced in {backlog.produce_s:.1f} s; raw kafka-consumer-perf-test on it")
    res.raw_consume_rps, res.raw_stolen_pct = _stolen_during(
        raw.consumer_perf, services.bootstrap, pipe.topics.usage, backlog.records
    )
    say("  quixstreams peer on the same topic")
    _peer(services, pipe, backlog.records, res)
    say("  one tokenpulse worker drains it")
    res.single.add(*drain_backlog(pipe, backlog.expected_events, config))
    say(
        f"  raw consume {res.raw_consume_rps:,.0f}/s, peer {res.peer_rps:,.0f}/s, worker "
        f"{res.single_eps:,.0f} events/s"
    )
    say(f"  {res.cpu.describe()}")
    if config.profile_path is not None and config.profile_path.exists():
        res.profile_top = top_frames(config.profile_path)


def _peer(services: Services, pipe: Pipeline, records: int, res: BenchResult) -> None:
    argv = [
        sys.executable, "-m", "tokenpulse.bench.peer",
        "--bootstrap", services.bootstrap, "--topic", pipe.topics.usage,
        "--records", str(records), "--clickhouse-url", services.clickhouse_url,
        "--database", pipe.database, "--group", pipe.prefix + "quix-peer",
        "--state-dir", str(services.home / "quix-state"),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        res.peer_note = f"failed: {why[:120]}"
        return
    out = json.loads(lines[-1])
    res.peer_rps = float(out["rate_rps"])


# The freshness poll's period. A poll costs the embedded endpoint about 7 ms of
# CPU however few rows it reads (a query's fixed cost over many small parts):
# 20 a second were a tenth of a core at 30k events/s. A sample is seen up to
# one period late, so a longer period overstates freshness, never understates.
_POLL_S = 0.1
# Every tenant that starts with the probe prefix, and no other.
_PROBE_LO = load.PROBE_PREFIX
_PROBE_HI = _PROBE_LO[:-1] + chr(ord(_PROBE_LO[-1]) + 1)


def _fresh_and_alerts(
    config: BenchConfig,
    pipe: Pipeline,
    res: Latency,
    fraction: float,
    drain_eps: float,
    say: Say,
) -> None:
    rate = max(drain_eps * fraction, 50.0)
    res.rate_eps = rate
    res.duration_s = config.fresh_duration_s
    say(
        f"freshness and alerts, {res.load} load: {rate:,.0f} events/s "
        f"for {config.fresh_duration_s:.0f} s"
    )
    tenants = alert_tenants(config, res.load)
    alerts_at: dict[str, float] = {}
    made_at: dict[str, float] = {}  # the alert record's Kafka timestamp (the worker's produce)
    seen_at: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_alerts, args=(pipe, alerts_at, made_at, stop), daemon=True
    )
    watcher.start()
    # Its own process, like an agent runtime (see tokenpulse/bench/paced.py).
    producer = PacedProcess(
        [
            "--bootstrap", pipe.services.bootstrap, "--topic", pipe.topics.usage,
            "--rate-eps", str(rate), "--duration-s", str(config.fresh_duration_s),
            "--sample-every", str(max(int(rate // 20), 1)),
            "--alert-tenants", ",".join(tenants), "--alert-limit", "10000",
            "--id-prefix", f"fresh-{res.load}",
        ]
    )  # fmt: skip
    paced = producer.result
    producer.start()
    deadline = time.monotonic() + config.fresh_duration_s + 60
    while time.monotonic() < deadline:
        sent = dict(paced.fresh_sent_at)
        pending = [i for i in sent if i not in seen_at]
        if pending:
            # The probe tenants' range and the occurred_at bound keep each poll
            # on a few granules of the primary key (tenant_id, occurred_at):
            # scanning every fresh row 20 times a second cost the endpoint as
            # much as the inserts.
            since = datetime.fromtimestamp(min(sent[i] for i in pending) - 30, UTC)
            found = pipe.client.query(
                f"SELECT event_id FROM {pipe.database}.usage_events"
                " WHERE tenant_id >= {lo:String} AND tenant_id < {hi:String}"
                " AND occurred_at >= {since:DateTime64(3, 'UTC')}"
                " AND has({ids:Array(String)}, event_id)",
                parameters={"ids": pending, "since": since, "lo": _PROBE_LO, "hi": _PROBE_HI},
            ).result_rows
            now = time.time()
            for (event_id,) in found:
                seen_at[str(event_id)] = now
        finished = not producer.is_alive()
        if (
            finished
            and len(seen_at) >= len(paced.fresh_sent_at)
            and all(t in alerts_at for t in tenants)
        ):
            break
        pipe.check_worker()
        time.sleep(_POLL_S)
    stop.set()
    watcher.join(10)
    producer.stop()
    res.sent, res.generator_cpu_s = paced.sent, paced.cpu_s
    fresh = [seen_at[i] - t for i, t in paced.fresh_sent_at.items() if i in seen_at]
    res.samples = len(fresh)
    res.p50_s = _median(fresh)
    res.p99_s = _pct(fresh, 0.99)
    lat = [alerts_at[t] - s for t, s in paced.crossing_sent_at.items() if t in alerts_at]
    res.alerts = len(lat)
    res.alert_p99_s = _pct(lat, 0.99)
    # Where an alert's time went: up to the worker's prepare (the SDK's buffer,
    # Kafka, the fetch: the crossing row's ingested_at), up to its produce.
    made = [made_at[t] - s for t, s in paced.crossing_sent_at.items() if t in made_at]
    first_sent = min(paced.fresh_sent_at.values(), default=0.0)
    prepared_at = _ingested_at(pipe, [f"cross-{t}" for t in paced.crossing_sent_at])
    prepared = [
        prepared_at[f"cross-{t}"] - s
        for t, s in paced.crossing_sent_at.items()
        if f"cross-{t}" in prepared_at
    ]
    say(
        f"  freshness p50 {res.p50_s:.2f} s p99 {res.p99_s:.2f} s; "
        f"alert p50 {_median(lat):.2f} s "
        f"p99 {res.alert_p99_s:.2f} s over {res.alerts} alerts "
        f"(crossing sent -> prepared by the worker: p50 {_median(prepared):.2f} s "
        f"p99 {_pct(prepared, 0.99):.2f} s; -> alert produced: p50 {_median(made):.2f} s "
        f"p99 {_pct(made, 0.99):.2f} s)"
    )
    # The slowest alerts, each with its split: a slow prepare is the way in
    # (generator, Kafka, fetch); a slow produce after it is the worker's.
    slowest = sorted(
        ((alerts_at[t] - s, t, s) for t, s in paced.crossing_sent_at.items() if t in alerts_at),
        reverse=True,
    )[:3]
    say(
        "  slowest alerts (sent -> prepared / produced / seen): "
        + "; ".join(
            f"{prepared_at.get(f'cross-{t}', float('nan')) - s:.2f} / "
            f"{made_at.get(t, float('nan')) - s:.2f} / {late:.2f} s at +{s - first_sent:.1f} s"
            for late, t, s in slowest
        )
    )


def _ingested_at(pipe: Pipeline, event_ids: list[str]) -> dict[str, float]:
    """When the worker prepared these events (their rows' ingested_at, epoch seconds)."""
    if not event_ids:
        return {}
    rows = pipe.client.query(
        f"SELECT event_id, toUnixTimestamp64Milli(ingested_at) FROM {pipe.database}.usage_events"
        " WHERE has({ids:Array(String)}, event_id)",
        parameters={"ids": event_ids},
    ).result_rows
    return {str(event_id): int(ms) / 1000 for event_id, ms in rows}


def _watch_alerts(
    pipe: Pipeline,
    alerts_at: dict[str, float],
    made_at: dict[str, float],
    stop: threading.Event,
) -> None:
    from aiokafka import AIOKafkaConsumer

    from tokenpulse.schemas import decode_quota_alert

    async def watch() -> None:
        consumer = AIOKafkaConsumer(
            pipe.topics.alerts,
            bootstrap_servers=pipe.services.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for msgs in batch.values():
                    for m in msgs:
                        alert = decode_quota_alert(m.value)
                        alerts_at.setdefault(alert.tenant_id, now)
                        made_at.setdefault(alert.tenant_id, m.timestamp / 1000)
        finally:
            await consumer.stop()

    asyncio.run(watch())


def _many_tenants(config: BenchConfig, pipe: Pipeline, res: BenchResult, say: Say) -> None:
    say(f"many tenants: {config.many_tenants:,} tenants x 2 events")
    records = load.uniform_tenants(config.many_tenants, 2, tag="many")
    before = pipe.rows()
    asyncio.run(
        load.produce_backlog(pipe.services.bootstrap, pipe.topics.usage, records, envelope=False)
    )
    pipe.wait_rows(before + len(records), 1800)
    assert pipe.worker is not None
    res.rss_mb = proc_rss_mb(pipe.worker.pid, "VmHWM")
    res.many_tenants = config.many_tenants
    say(f"  peak RSS {res.rss_mb:,.0f} MB")


def _envelope(config: BenchConfig, pipe: Pipeline, res: BenchResult, say: Say) -> None:
    say(f"backlog: {config.envelope_events:,} fleet records in SDK batch envelopes")
    eps, cpu = _produce_and_drain(config, pipe, envelope=True, sign=False)
    res.envelope.add(eps, cpu)
    say(f"  one worker drains it: {eps:,.0f} events/s")
    say(f"  {cpu.describe()}")


def _signed(
    config: BenchConfig, pipe: Pipeline, res: BenchResult, say: Say, *, envelope: bool
) -> None:
    """A backlog signed by each org's key, into a worker that verifies every
    record: the worker's default (the other drains trust the broker's ACLs,
    TOKENPULSE_VERIFY_SIGNATURES=false). One event per record, or envelopes."""
    events = config.envelope_events if envelope else config.events
    shape = "in SDK batch envelopes" if envelope else "one event per record"
    say(f"backlog: {events:,} fleet records, {shape}, signed")
    eps, cpu = _produce_and_drain(config, pipe, envelope=envelope, sign=True)
    (res.signed_envelope if envelope else res.signed).add(eps, cpu)
    say(f"  one verifying worker drains it: {eps:,.0f} events/s")
    say(f"  {cpu.describe()}")


def _produce_and_drain(
    config: BenchConfig, pipe: Pipeline, envelope: bool, sign: bool
) -> tuple[float, DrainCpu]:
    """The fleet backlog (the same records every time) into `pipe`, fresh, and
    one worker that drains it (verifying every record's signature if `sign`):
    events/s and where the CPU went. The worker is stopped afterwards."""
    pipe.setup()
    records = load.fleet(
        config.envelope_events if envelope else config.events, config.fleet_tenants, seed=5
    )
    secrets = pipe.sign_with_org_keys(org_of(r.tenant_id) for r in records) if sign else None
    backlog = asyncio.run(
        load.produce_backlog(
            pipe.services.bootstrap, pipe.topics.usage, records, envelope=envelope,
            org_secrets=secrets,
        )
    )  # fmt: skip
    try:
        return drain_backlog(pipe, backlog.expected_events, None)
    finally:
        pipe.stop_worker()


def top_frames(path: Path, limit: int = 8) -> list[str]:
    """The functions most often on top of the worker's stack (py-spy raw format)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(n)
        total += int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [f"{n / max(total, 1) * 100:5.1f} %  {frame}" for frame, n in ranked]
