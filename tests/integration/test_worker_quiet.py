"""Two workers: a quota that one worker alone writes is read less, and its alerts stay exact.

On the real services, two workers share four partitions. The agents'
quotas (each agent is one key, so one partition and one worker) pass the
quiet rule: reads that hold only the reader's own writes let the next
checks evaluate them without a read. The fleet's quota, which both
workers write, is read after every write and alerts once per crossing.
Another writer's rows under a trusted agent are found when its trust ends,
by a tick, although nothing touches that agent again.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.faults.harness import group_size
from tests.integration.test_worker import (
    Env,
    Worker,
    env,  # noqa: F401 - the fixture, reused
    event,
    produce,
    put_quota,
    read_all,
    record,
    wait_until,
    workers,  # noqa: F401 - the fixture, reused
)
from tests.integration.test_worker_observability import _free_port, scrape
from tokenpulse.schemas import QuotaAlert, QuotaDefinition, decode_quota_alert

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

QUIET_S = 8.0
CHECKED = "tokenpulse_quota_periods_checked_total"
# Keyed by tenant: a0, a3, a4, a5 land in partition 1, a1, a2, a7 in 0, a6 in
# 3 (Kafka's murmur2 over 4 partitions), so both workers have agents.
AGENTS = [f"fleet/a{i}" for i in range(8)]
WARM = 64  # warm-up tenants: every one of the 4 partitions gets some


def unique_alerts(pipeline: Env, count: int, timeout_s: float) -> dict[str, QuotaAlert]:
    """The alerts by alert_id once there are `count` distinct ones (a repeat is one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        msgs = read_all(pipeline.bootstrap, pipeline.topics.alerts, count + 4, timeout_s=2)
        alerts = {a.alert_id: a for a in (decode_quota_alert(m.value) for m in msgs)}
        if len(alerts) >= count or time.monotonic() > deadline:
            return alerts


def split_between(pipeline: Env, ports: list[int]) -> bool:
    """Whether each worker reports usage partitions of its own (none is alone any more)."""
    owned = [
        {k for k in scrape(p) if k.startswith("tokenpulse_consumer_lag{")
         and f'topic="{pipeline.topics.usage}"' in k}
        for p in ports
    ]  # fmt: skip
    return all(owned) and not owned[0] & owned[1]


def test_two_workers_read_quiet_quotas_less_and_alert_exactly(
    env: Env,  # noqa: F811 - the imported fixture
    workers: list[Worker],  # noqa: F811 - the imported fixture
) -> None:
    for tenant, limit, pcts in [(a, 2000, (50, 100)) for a in AGENTS] + [
        ("fleet", 16_000, (25, 50))
    ]:
        put_quota(env, QuotaDefinition(quota_id="q", tenant_id=tenant, metric="input",
                                       period="day", limit=limit, thresholds_pct=pcts))  # fmt: skip
    ports = [_free_port(), _free_port()]
    for name, port in zip(("w1", "w2"), ports, strict=True):
        workers.append(Worker(env, name, TOKENPULSE_METRICS_PORT=str(port),
                              TOKENPULSE_QUOTA_QUIET_REREAD_S=str(QUIET_S),
                              TOKENPULSE_QUOTA_CHECK_INTERVAL_S="1"))  # fmt: skip
    wait_until(lambda: group_size(env.bootstrap, env.group) == 2, 120, "both to join", workers)
    # Joined is not yet assigned: until the rebalance ends, the first worker
    # still owns every partition (the sole-owner rule, not this test's). A
    # worker reports a partition's lag once it processed a record of it.
    rounds = [0]

    def split() -> bool:
        i = rounds[0] = rounds[0] + 1
        produce(env.bootstrap, env.topics.usage,
                [record(event(f"warm/{t}", i)) for t in range(WARM)])  # fmt: skip
        time.sleep(0.5)
        return split_between(env, ports)

    wait_until(split, 120, "the partitions split", workers)
    base = WARM * rounds[0]  # no quota covers the warm-up tenants
    wait_until(lambda: env.rows() == base, 60, "the warm-up rows", workers)
    now = datetime.now(UTC)
    for i in range(10):  # a write per round and worker: every quota touched each time
        batch = [record(event(a, i, occurred_at=now, input_tokens=100)) for a in AGENTS]
        produce(env.bootstrap, env.topics.usage, batch)
        n = base + len(AGENTS) * (i + 1)
        wait_until(lambda n=n: env.rows() == n, 60, f"{n} rows", workers)
    # Each agent's 50 % at exactly 1,000 (its own worker's events); the
    # fleet's 25 % and 50 % once each (both workers may announce one: same id).
    expected = {(a, 50) for a in AGENTS} | {("fleet", 25), ("fleet", 50)}
    alerts = unique_alerts(env, len(expected), 60)
    assert sorted((a.tenant_id, a.threshold_pct) for a in alerts.values()) == sorted(expected)
    assert {int(a.used) for a in alerts.values() if a.tenant_id != "fleet"} == {1000}
    got = [scrape(p) for p in ports]
    quiet = sum(g.get(f'{CHECKED}{{source="quiet"}}', 0.0) for g in got)
    read = sum(g.get(f'{CHECKED}{{source="store"}}', 0.0) for g in got)
    assert read >= len(AGENTS), got  # every agent read at least once
    # 8 agents x 10 rounds: each read about twice, then quiet (the fleet is
    # read by every check of both workers). 34-89 here: a rebalance still
    # settling in the first rounds, or a round split over two writes, moves it.
    assert quiet >= 20, got
    assert sum(g.get(f'{CHECKED}{{source="sole_owner"}}', 0.0) for g in got) == 0, got
    # Another writer's 900 tokens of a0, then one more event of a0: its
    # worker's trusted base says 1,100 of 2,000; the store has 2,000. The
    # crossing is found when the trust ends (a tick reads it), exactly.
    env.client.insert(f"{env.database}.usage_events",
                      [["other-1", "fleet/a0", now, "m-large", 900, 0]],
                      column_names=["event_id", "tenant_id", "occurred_at", "model",
                                    "input_tokens", "output_tokens"])  # fmt: skip
    produce(env.bootstrap, env.topics.usage,
            [record(event("fleet/a0", 99, occurred_at=now, input_tokens=100))])  # fmt: skip
    late = [
        a for a in unique_alerts(env, len(expected) + 1, QUIET_S + 30).values()
        if a.threshold_pct == 100
    ]  # fmt: skip
    assert [(a.tenant_id, int(a.used)) for a in late] == [("fleet/a0", 2000)]
    for w in workers:
        assert w.terminate() == 0
