"""The worker end to end on real Kafka and the real ClickHouse engine.

Each test gets its own topics (prefix), consumer group and database. The
worker runs as a subprocess (`python -m tokenpulse worker`), so kill -9 is
a real crash. Every wait polls with a deadline; nothing asserts timings.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.faults.harness import group_size, log_tail
from tokenpulse.schemas import (
    QuotaAlert,
    QuotaDefinition,
    UsageEvent,
    decode_dlq_record,
    decode_quota_alert,
    decode_quota_state,
    encode_quota_definition,
    quota_state_key,
    sign_record,
)
from tokenpulse.schemas.usage import encode_usage_event
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.streams.settings import TopicNames, WorkerSettings
from tokenpulse.streams.topics import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET = b"integration-secret-0123456789abcdef"


@dataclass
class Env:
    bootstrap: str
    clickhouse_url: str
    database: str
    topics: TopicNames
    group: str
    home: Path
    client: Any

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            CLICKHOUSE_URL=self.clickhouse_url + self.database,
            TOKENPULSE_HOME=str(self.home),
            TOKENPULSE_TOPIC_PREFIX=self.topics.usage.removesuffix("tokenpulse.usage.v1"),
            TOKENPULSE_WORKER_GROUP=self.group,
            TOKENPULSE_TOPIC_PARTITIONS="4",
            TOKENPULSE_VERIFY_SIGNATURES="false",
            TOKENPULSE_FLUSH_INTERVAL_MS="200",
            TOKENPULSE_BATCH_MAX_EVENTS="500",
            TOKENPULSE_LOGLEVEL="warning",
            TOKENPULSE_METRICS_PORT="0",  # parallel workers on one host: no port clash
        )
        env.update(extra)
        return env

    def scalar(self, sql: str) -> Any:
        return self.client.query(sql).result_rows[0][0]

    def rows(self) -> int:
        """Rows in usage_events."""
        return int(self.scalar(f"SELECT count() FROM {self.database}.usage_events"))

    def totals(self) -> tuple[int, int, int, int]:
        row = self.client.query(
            f"SELECT count(), uniqExact(event_id), sum(input_tokens), sum(output_tokens)"
            f" FROM {self.database}.usage_events"
        ).result_rows[0]
        return int(row[0]), int(row[1]), int(row[2] or 0), int(row[3] or 0)


@pytest.fixture
def env(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    unique_name: str,
    tmp_path: Path,
) -> Env:
    migrate(clickhouse_client, RenderOptions(database=clickhouse_database))
    topics = TopicNames.with_affixes(prefix=f"{unique_name}.")
    settings = WorkerSettings(
        kafka_bootstrap_servers=services.kafka_bootstrap,
        clickhouse_url=services.clickhouse_url + clickhouse_database,
        topics=topics,
        partitions=4,
    )
    asyncio.run(ensure_topics(settings))
    return Env(
        services.kafka_bootstrap,
        services.clickhouse_url,
        clickhouse_database,
        topics,
        f"{unique_name}-group",
        tmp_path,
        clickhouse_client,
    )


class Worker:
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


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, workers: list[Worker] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for w in workers or ():
            if w.proc.poll() is not None and w.proc.returncode not in (0, -9):
                pytest.fail(f"worker {w.name} exited {w.proc.returncode}:\n{w.tail()}")
        time.sleep(0.5)
    logs = "\n".join(f"--- {w.name}\n{w.tail()}" for w in workers or ())
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def event(
    tenant: str,
    i: int,
    *,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    model: str = "m-large",
    input_tokens: int | None = None,
) -> UsageEvent:
    return UsageEvent(
        event_id=event_id or str(uuid.uuid4()),
        tenant_id=tenant,
        occurred_at=occurred_at or datetime.now(UTC),
        model=model,
        input_tokens=100 + i % 7 if input_tokens is None else input_tokens,
        output_tokens=10 + i % 3,
    )


Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


def record(ev: UsageEvent, *, signed: bool = False) -> Record:
    value = encode_usage_event(ev)
    headers = (
        sign_record(value, tenant_id=ev.tenant_id.split("/")[0], key_id="k1", secret=SECRET)
        if signed
        else []
    )
    return ev.tenant_id.encode(), value, headers


async def _produce(bootstrap: str, topic: str, records: list[Record], pause_every: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for n, (key, value, headers) in enumerate(records):
            futures.append(await producer.send(topic, value, key=key, headers=headers))
            if pause_every and n % pause_every == pause_every - 1:
                await asyncio.gather(*futures)
                futures = []
                await asyncio.sleep(0.05)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, records: list[Record], pause_every: int = 0) -> None:
    asyncio.run(_produce(bootstrap, topic, records, pause_every))


async def _read_all(bootstrap: str, topic: str, expect: int, timeout_s: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(msgs)
            if len(out) >= expect:
                # settle: anything beyond `expect` would be a duplicate
                batch = await consumer.getmany(timeout_ms=1500)
                for msgs in batch.values():
                    out.extend(msgs)
                break
    finally:
        await consumer.stop()
    return out


def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 60) -> list[Any]:
    return asyncio.run(_read_all(bootstrap, topic, expect, timeout_s))


def put_quota(env: Env, q: QuotaDefinition | None, *, tenant: str = "", quota_id: str = "") -> None:
    key = quota_state_key(q.tenant_id, q.quota_id) if q else quota_state_key(tenant, quota_id)
    value = encode_quota_definition(q) if q else None
    produce(env.bootstrap, env.topics.quotas, [(key, value, [])])


def alerts_before_the_write(env: Env, expect: int) -> list[QuotaAlert]:
    """The alerts of a crossing whose write a long write interval holds back.

    Still one row in the store when they arrive: they came from the early
    check, not from the durable one after the write.
    """
    alerts = [
        decode_quota_alert(m.value)
        for m in read_all(env.bootstrap, env.topics.alerts, expect, timeout_s=20)
    ]
    assert env.rows() == 1, (
        "the alerts were meant to come before the write; raise the interval if CI is this slow"
    )
    return alerts


# ---------------------------------------------------------------------------------------------


def test_mixed_records_exact_totals_and_dlq(
    env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    keyring = tmp_path / "keyring.toml"
    keyring.write_text(
        f'[tenants.acme]\nk1 = "hex:{SECRET.hex()}"\n[tenants.beta]\nk1 = "hex:{SECRET.hex()}"\n'
    )
    now = datetime.now(UTC)
    valid = [
        event(t, i, occurred_at=now) for i in range(150) for t in ("acme/a", "acme/b", "beta")
    ][:300]
    records = [record(ev, signed=True) for ev in valid]
    records += [record(ev, signed=True) for ev in valid[:40]]  # redelivered duplicates
    late_ev = event("acme/a", 1, occurred_at=now - timedelta(hours=2))
    bad: list[tuple[Record, str]] = [
        ((b"acme", b"{not json", []), "malformed_json"),
        ((b"acme", b'{"event_id": "x"}', []), "missing_field"),
        ((b"acme", None, []), "malformed_json"),
        (
            record(
                event("acme/a", 0, input_tokens=5).__class__(
                    event_id="c1",
                    tenant_id="acme/a",
                    occurred_at=now,
                    model="m",
                    input_tokens=5,
                    output_tokens=1,
                    cached_input_tokens=9,
                )
            ),
            "cached_exceeds_input",
        ),
        (record(event("acme/a", 0)), "missing_signature"),
        (
            (
                lambda ev: (
                    b"beta",
                    encode_usage_event(ev),
                    sign_record(
                        encode_usage_event(ev), tenant_id="acme", key_id="k1", secret=SECRET
                    ),
                )
            )(event("beta", 0)),
            "bad_signature",
        ),
    ]
    # cached_exceeds_input must reach the worker unsigned-or-signed: sign it so that
    # the decode rule, not the signature, rejects it.
    key, value, _ = bad[3][0]
    assert value is not None
    bad[3] = (
        (key, value, sign_record(value, tenant_id="acme", key_id="k1", secret=SECRET)),
        "cached_exceeds_input",
    )
    workers.append(
        Worker(env, "w1", TOKENPULSE_VERIFY_SIGNATURES="true", TOKENPULSE_KEYRING_FILE=str(keyring))
    )
    produce(env.bootstrap, env.topics.usage, records + [b for b, _ in bad])
    produce(env.bootstrap, env.topics.usage, [record(late_ev, signed=True)])
    expected = [*valid, late_ev]
    want = (
        len(expected),
        len(expected),
        sum(e.input_tokens for e in expected),
        sum(e.output_tokens for e in expected),
    )
    wait_until(lambda: env.totals() == want, 120, "exact usage_events", workers)
    assert env.scalar(f"SELECT countIf(late) FROM {env.database}.usage_events") == 1
    dlq = [decode_dlq_record(m.value) for m in read_all(env.bootstrap, env.topics.dlq, len(bad))]
    assert sorted(d.reason for d in dlq) == sorted(r for _, r in bad)
    assert all(d.topic == env.topics.usage and d.offset >= 0 for d in dlq)
    originals = {d.original() for d in dlq}
    assert b"{not json" in originals
    assert workers[0].terminate() == 0


def _load(n_tenants: int, per_tenant: int, dup_every: int) -> tuple[list[UsageEvent], list[Record]]:
    now = datetime.now(UTC)
    events = [
        event(f"org{t}/team", i, occurred_at=now)
        for i in range(per_tenant)
        for t in range(n_tenants)
    ]
    records = [record(ev) for ev in events]
    records += [record(ev) for ev in events[::dup_every]]
    return events, records


def test_kill9_then_restart_counts_each_event_once(env: Env, workers: list[Worker]) -> None:
    events, records = _load(n_tenants=8, per_tenant=1500, dup_every=17)
    total_in = sum(e.input_tokens for e in events)
    # One quota that the load crosses: its thresholds must be announced once each.
    put_quota(
        env,
        QuotaDefinition(
            quota_id="q-day",
            tenant_id="org0",
            metric="input",
            period="day",
            limit=total_in // 8 // 2 * 2,
            thresholds_pct=(25, 50, 90),
        ),
    )
    workers.append(Worker(env, "w1"))
    produce(env.bootstrap, env.topics.usage, records[: len(records) // 3])

    wait_until(lambda: env.rows() > 1000, 120, "first rows", workers)
    producer_thread_records = records[len(records) // 3 :]
    # Crash mid-load: produce the rest while the worker is being killed.
    import threading

    t = threading.Thread(
        target=produce, args=(env.bootstrap, env.topics.usage, producer_thread_records, 500)
    )
    t.start()
    wait_until(lambda: env.rows() > len(events) // 2, 120, "half the rows", workers)
    workers[0].kill9()
    t.join(120)
    workers.append(Worker(env, "w2"))
    want = (len(events), len(events), total_in, sum(e.output_tokens for e in events))
    wait_until(lambda: env.totals() == want, 150, "exact totals after restart", workers)
    alerts = [decode_quota_alert(m.value) for m in read_all(env.bootstrap, env.topics.alerts, 3)]
    assert sorted(a.threshold_pct for a in alerts) == [25, 50, 90]
    assert len({a.alert_id for a in alerts}) == 3
    assert workers[1].terminate() == 0


def test_two_workers_rebalance_under_load_exact(env: Env, workers: list[Worker]) -> None:
    events, records = _load(n_tenants=12, per_tenant=800, dup_every=13)
    workers.append(Worker(env, "a"))
    import threading

    # Paced (50 records, then 50 ms): the load lasts while b joins and a
    # leaves. The first half goes before b has joined, the second after.
    half = len(records) // 2
    first = threading.Thread(
        target=produce, args=(env.bootstrap, env.topics.usage, records[:half], 50)
    )
    first.start()

    wait_until(lambda: env.rows() > 500, 120, "first rows", workers)
    workers.append(Worker(env, "b"))  # joins: rebalance under load
    wait_until(lambda: group_size(env.bootstrap, env.group) == 2, 120, "b to join", workers)
    first.join(120)
    second = threading.Thread(
        target=produce, args=(env.bootstrap, env.topics.usage, records[half:], 50)
    )
    second.start()
    wait_until(
        lambda: env.rows() > len(events) * 3 // 4, 120, "three quarters of the rows", workers
    )
    assert workers[0].terminate() == 0  # leaves: another rebalance under load
    second.join(120)
    want = (
        len(events),
        len(events),
        sum(e.input_tokens for e in events),
        sum(e.output_tokens for e in events),
    )
    wait_until(lambda: env.totals() == want, 150, "exact totals after rebalances", workers)
    assert workers[1].terminate() == 0


def test_quota_crossings_alert_once_and_raised_limit_resolves(
    env: Env, workers: list[Worker]
) -> None:
    q = QuotaDefinition(
        quota_id="q1",
        tenant_id="acme",
        metric="total",
        period="day",
        limit=1000,
        thresholds_pct=(50, 80, 100),
        hard=True,
    )
    put_quota(env, q)
    workers.append(Worker(env, "w1"))
    now = datetime.now(UTC)
    # 110 tokens per event over two sub-tenants (hierarchy): 10 events = 1100 >= 100 %.
    evs = [event(f"acme/t{i % 2}", 0, occurred_at=now, input_tokens=100) for i in range(10)]
    for ev in evs:  # one by one so that each threshold is crossed in a different batch
        produce(env.bootstrap, env.topics.usage, [record(ev)])
    alerts = [decode_quota_alert(m.value) for m in read_all(env.bootstrap, env.topics.alerts, 3)]
    assert sorted(a.threshold_pct for a in alerts) == [50, 80, 100]
    assert {a.tenant_id for a in alerts} == {"acme"}

    def latest_state() -> Any:
        msgs = read_all(env.bootstrap, env.topics.state, 1, timeout_s=10)
        return decode_quota_state(msgs[-1].value) if msgs else None

    wait_until(
        lambda: (s := latest_state()) is not None and s.status == "exceeded",
        60,
        "exceeded state",
        workers,
    )
    put_quota(
        env,
        QuotaDefinition(
            quota_id="q1",
            tenant_id="acme",
            metric="total",
            period="day",
            limit=100_000,
            thresholds_pct=(50, 80, 100),
            hard=True,
        ),
    )
    wait_until(
        lambda: (s := latest_state()) is not None and s.status == "ok" and s.limit == 100_000,
        90,
        "resolved state after raising the limit",
        workers,
    )
    assert workers[0].terminate() == 0


def test_quota_reads_over_the_cap_still_alert_every_crossing_once(
    env: Env, workers: list[Worker]
) -> None:
    """Seven quotas, at most two read per check: each crossing alerts once.

    The six agents' crossings are this worker's own events (counted exactly
    while their quota waits for its read); the fleet's 100 % needs rows
    another writer put in the store, found when its read comes round.
    """
    agents = [f"fleet/a{i}" for i in range(6)]
    for tenant, limit in [(a, 1000) for a in agents] + [("fleet", 10_000)]:
        q = QuotaDefinition(quota_id="q", tenant_id=tenant, metric="input", period="day",
                            limit=limit, thresholds_pct=(50, 100))  # fmt: skip
        put_quota(env, q)
    # TOKENPULSE_QUOTA_REREAD_S=0 and _QUIET_REREAD_S=0: another writer is
    # what the sole-owner and quiet rules (no read needed for a while)
    # exclude; their re-reads are tested in test_worker_sole_owner.py and
    # test_worker_quiet.py.
    workers.append(Worker(env, "w1", TOKENPULSE_QUOTA_MAX_READS_PER_CHECK="2",
                          TOKENPULSE_QUOTA_CHECK_INTERVAL_S="1",
                          TOKENPULSE_QUOTA_REREAD_S="0",
                          TOKENPULSE_QUOTA_QUIET_REREAD_S="0"))  # fmt: skip
    now = datetime.now(UTC)
    for i in range(10):  # a batch per round: every agent's quota touched each time
        batch = [record(event(a, i, occurred_at=now, input_tokens=100)) for a in agents]
        produce(env.bootstrap, env.topics.usage, batch)
    expected = sorted([(a, pct) for a in agents for pct in (50, 100)] + [("fleet", 50)])
    alerts = [decode_quota_alert(m.value) for m in read_all(env.bootstrap, env.topics.alerts, 13)]
    assert sorted((a.tenant_id, a.threshold_pct) for a in alerts) == expected
    # The agents' whole usage is 1,000 each: counted once, never twice.
    assert {int(a.used) for a in alerts if a.tenant_id != "fleet" and a.threshold_pct == 100} == {
        1000
    }
    # Another writer's 4,000 tokens, then one batch touching four quotas.
    env.client.insert(f"{env.database}.usage_events",
                      [["other-1", "fleet/other", now, "m-large", 4000, 0]],
                      column_names=["event_id", "tenant_id", "occurred_at", "model",
                                    "input_tokens", "output_tokens"])  # fmt: skip
    produce(env.bootstrap, env.topics.usage,
            [record(event(t, 0, occurred_at=now, input_tokens=1))
             for t in ("fleet/a0", "fleet/a1", "fleet/a2", "fleet/new")])  # fmt: skip
    alerts = [decode_quota_alert(m.value) for m in read_all(env.bootstrap, env.topics.alerts, 14)]
    assert sorted((a.tenant_id, a.threshold_pct) for a in alerts) == sorted(
        [*expected, ("fleet", 100)]
    )
    assert len({a.alert_id for a in alerts}) == 14
    assert [int(a.used) for a in alerts if a.threshold_pct == 100 and a.tenant_id == "fleet"] == [
        10_004
    ]
    assert workers[0].terminate() == 0


def test_a_token_quota_alerts_before_its_crossing_event_is_written(
    env: Env, workers: list[Worker]
) -> None:
    """The early check: the alert goes out while the event's write still waits.

    A 25 s write interval holds the crossing event's write back; the alert
    must not wait for it (the lower bound: the store's reading + the
    accepted, unwritten event), and the write then confirms it once.
    """
    put_quota(
        env,
        QuotaDefinition(
            quota_id="q-early",
            tenant_id="early",
            metric="input",
            period="day",
            limit=1000,
            thresholds_pct=(50, 100),
        ),
    )
    workers.append(Worker(env, "w1", TOKENPULSE_WRITE_MIN_INTERVAL_MS="25000"))

    def last_used() -> int | None:
        msgs = read_all(env.bootstrap, env.topics.state, 1, timeout_s=5)
        return int(decode_quota_state(msgs[-1].value).used) if msgs else None

    now = datetime.now(UTC)
    produce(
        env.bootstrap,
        env.topics.usage,
        [record(event("early/a", 0, occurred_at=now, input_tokens=100))],
    )
    # The first write goes at once (no write before it). The quota was read
    # at the worker's start (a state of 0 tokens, the bound's base); the
    # first event's 100 tokens count in the bound as outstanding until the
    # check after their write reads them back (100 tokens, still "ok": the
    # state is published only when it changes, so it may still say 0).
    wait_until(
        lambda: env.rows() == 1 and last_used() in (0, 100),
        120,
        "the first event and the quota's state",
        workers,
    )
    produce(
        env.bootstrap,
        env.topics.usage,
        [record(event("early/b", 0, occurred_at=now, input_tokens=900))],
    )
    alerts = alerts_before_the_write(env, 2)
    assert sorted(a.threshold_pct for a in alerts) == [50, 100]
    assert {int(a.used) for a in alerts} == {1000}
    wait_until(lambda: env.rows() == 2, 60, "the crossing event's write", workers)
    time.sleep(2)  # the durable check after that write: it must announce nothing again
    alerts = [
        decode_quota_alert(m.value)
        for m in read_all(env.bootstrap, env.topics.alerts, 2, timeout_s=10)
    ]
    assert sorted(a.threshold_pct for a in alerts) == [50, 100]
    assert last_used() == 1000
    assert workers[0].terminate() == 0


def test_a_quota_read_at_start_alerts_early_on_its_first_event(
    env: Env, workers: list[Worker]
) -> None:
    """The start read: a quota never touched before has its base from the start.

    The quota timer is set to a minute, so only the worker's read at start
    can have read this quota when its first event, which crosses it, is
    prepared; the 25 s write interval holds that event's write back.
    """
    put_quota(
        env,
        QuotaDefinition(
            quota_id="q-start", tenant_id="fresh", metric="input", period="day", limit=1000
        ),
    )
    workers.append(
        Worker(
            env,
            "w1",
            TOKENPULSE_WRITE_MIN_INTERVAL_MS="25000",
            TOKENPULSE_QUOTA_CHECK_INTERVAL_S="60",
        )
    )

    now = datetime.now(UTC)
    # Another tenant's event takes the first write, which goes at once.
    produce(env.bootstrap, env.topics.usage, [record(event("other", 0, occurred_at=now))])
    wait_until(lambda: env.rows() == 1, 120, "the first write", workers)
    produce(
        env.bootstrap,
        env.topics.usage,
        [record(event("fresh/a", 0, occurred_at=now, input_tokens=1000))],
    )
    alerts = alerts_before_the_write(env, 3)
    assert sorted(a.threshold_pct for a in alerts) == [50, 80, 100]
    assert {(a.tenant_id, int(a.used)) for a in alerts} == {("fresh", 1000)}
    assert workers[0].terminate() == 0


def test_a_changed_quota_definition_is_checked_at_once_not_at_the_next_tick(
    env: Env, workers: list[Worker]
) -> None:
    """A limit set below what a tenant already used alerts within seconds.

    Nothing of the tenant arrives after the definition, and the quota timer
    is set to 10 minutes: only the check a definition change starts can
    read the tenant's usage and alert.
    """
    workers.append(Worker(env, "w1", TOKENPULSE_QUOTA_CHECK_INTERVAL_S="600"))
    now = datetime.now(UTC)
    produce(
        env.bootstrap,
        env.topics.usage,
        [record(event("spent/a", 0, occurred_at=now, input_tokens=900))],
    )
    wait_until(lambda: env.rows() == 1, 120, "the usage written", workers)
    put_quota(
        env,
        QuotaDefinition(
            quota_id="q-new", tenant_id="spent", metric="input", period="day", limit=1000
        ),
    )
    alerts = [
        decode_quota_alert(m.value)
        for m in read_all(env.bootstrap, env.topics.alerts, 2, timeout_s=20)
    ]
    assert sorted(a.threshold_pct for a in alerts) == [50, 80]
    assert {(a.tenant_id, a.quota_id, int(a.used)) for a in alerts} == {("spent", "q-new", 900)}
    assert workers[0].terminate() == 0
