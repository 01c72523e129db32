"""A worker that owns every usage partition reads each quota once, then counts its own writes.

On the real services: the worker's answer to "am I alone?" (Faust's
assignment against the topic's partitions, the consumer generation) lets
its durable checks evaluate quotas without a store read, and the alerts are
exactly those of a read after every write. Rows another writer puts in the
store are found once TOKENPULSE_QUOTA_REREAD_S has passed since the read
(a tick reads a quota touched while trusted, touched again or not).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

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
from tokenpulse.schemas import QuotaDefinition, decode_quota_alert

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REREAD_S = 4.0
CHECKED = "tokenpulse_quota_periods_checked_total"


def test_a_sole_owner_alerts_exactly_without_reads_and_rereads_for_other_writers(
    env: Env,  # noqa: F811 - the imported fixture
    workers: list[Worker],  # noqa: F811 - the imported fixture
) -> None:
    agents = [f"fleet/a{i}" for i in range(4)]
    for tenant, limit in [(a, 1000) for a in agents] + [("fleet", 10_000)]:
        q = QuotaDefinition(quota_id="q", tenant_id=tenant, metric="input", period="day",
                            limit=limit, thresholds_pct=(50, 100))  # fmt: skip
        put_quota(env, q)
    port = _free_port()
    workers.append(Worker(env, "w1", TOKENPULSE_METRICS_PORT=str(port),
                          TOKENPULSE_QUOTA_REREAD_S=str(REREAD_S)))  # fmt: skip
    now = datetime.now(UTC)
    for i in range(10):  # a write per round: every quota touched each time
        batch = [record(event(a, i, occurred_at=now, input_tokens=100)) for a in agents]
        produce(env.bootstrap, env.topics.usage, batch)
        wait_until(lambda n=4 * (i + 1): env.rows() == n, 60, f"{4 * (i + 1)} rows", workers)
    expected = sorted([(a, pct) for a in agents for pct in (50, 100)])
    alerts = [decode_quota_alert(m.value) for m in read_all(env.bootstrap, env.topics.alerts, 8)]
    assert sorted((a.tenant_id, a.threshold_pct) for a in alerts) == expected
    assert {int(a.used) for a in alerts if a.threshold_pct == 100} == {1000}
    got = scrape(port)
    exact = got[f'{CHECKED}{{source="sole_owner"}}']
    read = got[f'{CHECKED}{{source="store"}}']
    # 5 quotas x 10 writes were checked; each read about once (plus a re-read
    # for any write that came REREAD_S after its read on a slow machine).
    assert exact >= 20, got
    assert read < exact, got
    # Another writer's 6,000 tokens: not this worker's, so not in its count
    # until the quota is read again. The fleet's quota was touched while
    # trusted, so a tick reads it once REREAD_S has passed since its last
    # read, although nothing touches it again.
    env.client.insert(f"{env.database}.usage_events",
                      [["other-1", "fleet/other", now, "m-large", 6000, 0]],
                      column_names=["event_id", "tenant_id", "occurred_at", "model",
                                    "input_tokens", "output_tokens"])  # fmt: skip
    msgs = read_all(env.bootstrap, env.topics.alerts, 10, timeout_s=REREAD_S + 30)
    alerts = [decode_quota_alert(m.value) for m in msgs]
    fleet = sorted((a.threshold_pct, int(a.used)) for a in alerts if a.tenant_id == "fleet")
    assert fleet == [(50, 10_000), (100, 10_000)]
    assert len({a.alert_id for a in alerts}) == 10
    assert workers[0].terminate() == 0
