"""Shared machinery for tests that run the real worker as a subprocess.

A per-test `Env` (own topics, consumer group and ClickHouse database), the
`Worker` subprocess (kill -9 is a real crash), `wait_until` with a deadline,
a fleet load sent through the SDK with its expected totals computed from
the same deterministic generator, and `assert_exact`, the one check every
fault test ends with: usage_events, usage_by_minute_totals, the DLQ and the
quota alerts equal what was produced (0 lost, 0 counted twice).

The fault tests import it as `tests.faults.harness`; tests/integration can
import the same helpers instead of keeping their own copies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tokenpulse.config import ClickHouseTarget
from tokenpulse.fleet import FleetConfig, RecordKind, generate
from tokenpulse.reconcile import ReconcileOptions, reconcile
from tokenpulse.schemas import (
    QuotaDefinition,
    decode_dlq_record,
    decode_quota_alert,
    encode_quota_definition,
    quota_state_key,
)
from tokenpulse.simulate import SimulationResult, run_simulation
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.settings import TopicNames, WorkerSettings
from tokenpulse.streams.topics import ensure_topics


@dataclass(frozen=True)
class Mode:
    """How hard the fault tests push: TOKENPULSE_FAULTS=short (default, CI) or full."""

    name: str
    events: int  # records per test (valid + duplicates + malformed + late)
    tenants: int
    rate_eps: float  # producer pacing, so that faults hit a pipeline under load
    outage_s: float  # ClickHouse unreachable for this long

    @classmethod
    def from_env(cls) -> Mode:
        raw = os.environ.get("TOKENPULSE_FAULTS", "short").strip().lower() or "short"
        if raw == "short":
            return cls("short", events=3000, tenants=40, rate_eps=1000, outage_s=8)
        if raw == "full":
            return cls("full", events=30_000, tenants=400, rate_eps=2500, outage_s=30)
        raise pytest.UsageError(f"TOKENPULSE_FAULTS must be short or full, got {raw!r}")


MODE = Mode.from_env()
QUOTA_ORG = "acme"  # the fleet's first org; Zipf makes it the busiest
QUOTA_THRESHOLDS = (25, 50, 80)


@dataclass
class Env:
    bootstrap: str
    clickhouse_url: str  # server URL ending in '/', no database
    database: str
    topics: TopicNames
    group: str
    home: Path
    client: Any
    partitions: int = 4
    worker_clickhouse_url: str | None = None  # e.g. through a fault proxy

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            CLICKHOUSE_URL=(self.worker_clickhouse_url or self.clickhouse_url) + self.database,
            TOKENPULSE_HOME=str(self.home),
            TOKENPULSE_TOPIC_PREFIX=self.topics.usage.removesuffix("tokenpulse.usage.v1"),
            TOKENPULSE_WORKER_GROUP=self.group,
            TOKENPULSE_TOPIC_PARTITIONS=str(self.partitions),
            TOKENPULSE_VERIFY_SIGNATURES="false",
            TOKENPULSE_FLUSH_INTERVAL_MS="200",
            TOKENPULSE_BATCH_MAX_EVENTS="500",
            TOKENPULSE_LOGLEVEL="warning",
            # Several workers share this host (and other tests' workers too): no
            # fixed metrics port, which only one process could bind.
            TOKENPULSE_METRICS_PORT="0",
        )
        env.update(extra)
        return env

    def scalar(self, sql: str) -> Any:
        return self.client.query(sql).result_rows[0][0]

    def rows(self) -> int:
        return int(self.scalar(f"SELECT count() FROM {self.database}.usage_events"))


def make_env(
    *,
    bootstrap: str,
    clickhouse_url: str,
    client: Any,
    database: str,
    name: str,
    home: Path,
    partitions: int = 4,
) -> Env:
    """Migrate `database` and create the topics `name.tokenpulse.*` on `bootstrap`."""
    migrate(client, RenderOptions(database=database))
    topics = TopicNames.with_affixes(prefix=f"{name}.")
    settings = WorkerSettings(
        kafka_bootstrap_servers=bootstrap,
        clickhouse_url=clickhouse_url + database,
        topics=topics,
        partitions=partitions,
    )
    asyncio.run(ensure_topics(settings))
    return Env(
        bootstrap, clickhouse_url, database, topics, f"{name}-group", home, client, partitions
    )


class Worker:
    """`python -m tokenpulse worker` as a child process with its own log file."""

    def __init__(self, env: Env, name: str, **extra: str) -> None:
        self.log = env.home / f"{name}.log"
        self.name = name
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenpulse", "worker"],
            env=env.worker_env(TOKENPULSE_WORKER_DATA_DIR=str(env.home / name), **extra),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout_s: float = 90) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._fh.close()

    def tail(self) -> str:
        return log_tail(self.log)


def log_tail(log: Path, chars: int = 4000) -> str:
    """The end of a worker's log, and its first error line if the end no longer shows it.

    A worker that fails at start logs its cause first and then a cascade of
    shutdown errors (Faust's services stopping half started): the end alone
    hid the cause of one CI failure (round 15).
    """
    text = log.read_text(errors="replace")
    end = text[-chars:]
    markers = ('"level": "error"', "Traceback", "[ERROR]", "ERROR")
    first = next((ln for ln in text.splitlines() if any(m in ln for m in markers)), "")
    if not first or first in end:
        return end
    return f"first error line: {first[:chars]}\n... last {chars} characters:\n{end}"


def start_worker(
    env: Env, name: str, workers: list[Worker], members: int = 1, **extra: str
) -> Worker:
    """Start a worker and return once the group has `members` members (it has joined)."""
    w = Worker(env, name, **extra)
    workers.append(w)
    wait_until(lambda: group_members(env) >= members, 120, f"{name} to join the group", workers)
    return w


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    workers: list[Worker] | None = None,
    *,
    poll_s: float = 0.5,
) -> None:
    """Poll `check` until true; fail with the workers' logs on timeout or a worker crash."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for w in workers or ():
            if w.proc.poll() is not None and w.proc.returncode not in (0, -9):
                pytest.fail(f"worker {w.name} exited {w.proc.returncode}:\n{w.tail()}")
        time.sleep(poll_s)
    logs = "\n".join(f"--- {w.name}\n{w.tail()}" for w in workers or ())
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs}")


# --- the load --------------------------------------------------------------------------------


@dataclass
class Expected:
    """What the pipeline must end up with, computed from the generator itself."""

    per_tenant: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # events, in, out
    malformed: int = 0
    quota_input_this_month: int = 0  # QUOTA_ORG's input tokens in the current month

    @property
    def events(self) -> int:
        return sum(v[0] for v in self.per_tenant.values())


def fleet_config(events: int | None = None, *, seed: int = 11) -> FleetConfig:
    return FleetConfig(
        events=events or MODE.events, tenants=MODE.tenants, end=datetime.now(UTC), seed=seed
    )


def expected_for(config: FleetConfig) -> Expected:
    out = Expected()
    seen: set[str] = set()
    month = datetime.now(UTC).strftime("%Y-%m")
    sums: dict[str, list[int]] = {}
    for rec in generate(config):
        if rec.kind is RecordKind.MALFORMED:
            out.malformed += 1
            continue
        ev = rec.event
        assert ev is not None
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        s = sums.setdefault(ev.tenant_id, [0, 0, 0])
        s[0] += 1
        s[1] += ev.input_tokens
        s[2] += ev.output_tokens
        if ev.tenant_id.split("/")[0] == QUOTA_ORG and ev.occurred_at.strftime("%Y-%m") == month:
            out.quota_input_this_month += ev.input_tokens
    out.per_tenant = {t: (s[0], s[1], s[2]) for t, s in sums.items()}
    return out


def quota_for(expected: Expected) -> QuotaDefinition:
    """A monthly input-token quota on QUOTA_ORG that the load crosses at every threshold."""
    return QuotaDefinition(
        quota_id="q-faults",
        tenant_id=QUOTA_ORG,
        metric="input",
        period="month",
        limit=expected.quota_input_this_month * 10 // 9,  # 90 %: above the last threshold
        thresholds_pct=QUOTA_THRESHOLDS,
    )


async def _produce_raw(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def put_quota(env: Env, q: QuotaDefinition) -> None:
    value = encode_quota_definition(q)
    asyncio.run(
        _produce_raw(
            env.bootstrap, env.topics.quotas, [(quota_state_key(q.tenant_id, q.quota_id), value)]
        )
    )


class Load:
    """The fleet sent through the SDK (run_simulation) in a background thread."""

    def __init__(self, env: Env, config: FleetConfig, rate_eps: float | None) -> None:
        self.result: SimulationResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(env, config, rate_eps), daemon=True)

    def _run(self, env: Env, config: FleetConfig, rate_eps: float | None) -> None:
        try:
            self.result = asyncio.run(
                run_simulation(
                    config,
                    bootstrap_servers=env.bootstrap,
                    topic=env.topics.usage,
                    rate_eps=rate_eps,
                    close_timeout_s=120,
                )
            )
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Load:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout_s: float = 300) -> SimulationResult:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            pytest.fail(f"the load did not finish within {timeout_s:.0f} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# --- reading back ----------------------------------------------------------------------------


async def _group_lag(bootstrap: str, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(
            end - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
            for tp, end in ends.items()
        )
    finally:
        await consumer.stop()
        await admin.close()


def group_lag(env: Env) -> int:
    """Records of the usage topic not yet committed by the worker group (-1: unknown yet)."""
    try:
        return asyncio.run(_group_lag(env.bootstrap, env.group, env.topics.usage))
    except KafkaError:  # e.g. the coordinator is still moving after a broker restart
        return -1


async def _group_members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    # aiokafka returns the raw DescribeGroups response: groups[0] = (error, id, state,
    # protocol_type, protocol, members, ...).
    groups = described[0].groups if described else []
    return len(groups[0][5]) if groups else 0


def group_members(env: Env) -> int:
    """Members of the worker group right now (after a join completed; 0: unknown yet)."""
    return group_size(env.bootstrap, env.group)


def group_size(bootstrap: str, group: str) -> int:
    """Members of a consumer group right now (after a join completed; 0: unknown yet)."""
    try:
        return asyncio.run(_group_members(bootstrap, group))
    except KafkaError:  # e.g. GroupCoordinatorNotAvailable on a fresh broker
        return 0


async def _read_topic(bootstrap: str, topic: str, settle_s: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[Any] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for msgs in batch.values():
                out.extend(msgs)
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return out


def read_topic(env: Env, topic: str, settle_s: float = 3.0) -> list[Any]:
    """Everything on `topic`, read until it has been quiet for `settle_s`."""
    return asyncio.run(_read_topic(env.bootstrap, topic, settle_s))


def per_tenant(env: Env, table: str, count_expr: str) -> dict[str, tuple[int, int, int]]:
    rows = env.client.query(
        f"SELECT tenant_id, {count_expr}, sum(input_tokens), sum(output_tokens)"
        f" FROM {env.database}.{table} GROUP BY tenant_id"
    ).result_rows
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def wait_finished(env: Env, expected: Expected, workers: list[Worker], timeout_s: float) -> None:
    """The pipeline is done: every record committed and usage_events at the expected count.

    The deadline grows with the load (a floor of 50 events/s on a busy shared
    machine), so the full mode's bigger loads do not need their own numbers.
    """
    timeout_s = max(timeout_s, expected.events / 50)
    wait_until(
        lambda: env.rows() >= expected.events and group_lag(env) == 0,
        timeout_s,
        f"{expected.events} rows in usage_events and the usage topic fully committed",
        workers,
        poll_s=1.0,
    )


def assert_exact(
    env: Env, expected: Expected, sent: SimulationResult, *, dlq_exact: bool = True
) -> None:
    """0 lost, 0 counted twice: events, minute totals, DLQ and alerts."""
    assert sent.undelivered == 0
    assert sent.expected_events == expected.events, "the SDK load differs from the generator"
    doubled = env.client.query(
        f"SELECT event_id, count(), groupArray((kafka_partition, kafka_offset, ingested_at))"
        f" FROM {env.database}.usage_events GROUP BY event_id HAVING count() > 1"
        " ORDER BY event_id LIMIT 5"
    ).result_rows
    total_doubled = env.scalar(
        f"SELECT count() - uniqExact(event_id) FROM {env.database}.usage_events"
    )
    assert total_doubled == 0, f"{total_doubled} rows counted twice, e.g. {doubled}"
    assert per_tenant(env, "usage_events", "count()") == expected.per_tenant
    assert per_tenant(env, "usage_by_minute_totals", "sum(events)") == expected.per_tenant
    dlq = [decode_dlq_record(m.value) for m in read_topic(env, env.topics.dlq)]
    origins = {(d.topic, d.partition, d.offset) for d in dlq}
    if dlq_exact:
        assert len(origins) == expected.malformed
    else:
        # The fleet's malformed records go through a plain (non-idempotent)
        # producer; a broker restart can make it write one twice.
        assert len(origins) >= expected.malformed
    alerts = [decode_quota_alert(m.value) for m in read_topic(env, env.topics.alerts)]
    by_id = {a.alert_id: a for a in alerts}
    # A crash between alert and state may repeat an alert with the SAME alert_id
    # (documented; consumers dedupe), never a second id for one crossing.
    assert sorted(a.threshold_pct for a in by_id.values()) == list(QUOTA_THRESHOLDS)
    assert {a.tenant_id for a in by_id.values()} == {QUOTA_ORG}
    assert_reconciled(env)


def assert_reconciled(env: Env) -> None:
    """What an operator would run afterwards: `tokenpulse reconcile --strict` finds no difference.

    Strict: nothing may be pending either. The worker group's commits count as
    finished offsets, so a de-duplicated record at a partition's tail (no row,
    no DLQ record) is not "pending" once the group committed past it.
    """
    report = asyncio.run(
        reconcile(
            ReconcileOptions(
                kafka_bootstrap_servers=env.bootstrap,
                clickhouse=ClickHouseTarget.parse(env.clickhouse_url + env.database),
                since=datetime(2000, 1, 1, tzinfo=UTC),
                topic=env.topics.usage,
                dlq_topic=env.topics.dlq,
                strict=True,
                worker_group=env.group,
            )
        )
    )
    assert report.ok, f"reconcile found differences: {report.to_dict()['differences'][:5]}"
