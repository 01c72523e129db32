"""The benchmark's load: fleet backlogs through the SDK and a paced live load.

A backlog is produced before the worker starts, so the worker's drain rate
is its sustained throughput. The paced load runs beside a live worker and
remembers when each sampled event was produced (freshness) and when each
quota-crossing event was produced (alert latency).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tokenpulse.fleet import FleetConfig, FleetRecord, RecordKind, generate
from tokenpulse.schemas import UsageEvent
from tokenpulse.sdk import ProducerConfig, UsageProducer
from tokenpulse.simulate import org_headers, org_of, signed_as_org

FRESH_ORG = "fresh"
# The sampled events' tenants: the freshness poll reads only their primary-key
# range. Polling the whole org 20 times a second scanned every recent row and
# cost the embedded endpoint 4-5 us of CPU per event at 30k events/s.
PROBE_PREFIX = f"{FRESH_ORG}/probe-"
ALERT_ORG = "alerting"
# The paced generator sleeps once it is this far ahead of its schedule, not
# after every event: a sleep per event (tens of microseconds apart at 40k
# events/s) was a timer and a loop pass per event, a fifth of the
# generator's CPU, taken from the pipeline it measures on the same two cores.
_PACE_S = 0.002


@dataclass
class Backlog:
    records: int = 0
    expected_events: int = 0  # unique accepted events the pipeline must count
    malformed: int = 0
    produce_s: float = 0.0


def fleet(events: int, tenants: int, seed: int) -> list[FleetRecord]:
    """The simulated fleet (Zipf tenants, 3 models, 3 regions, 1 % duplicates,
    0.5 % malformed, 0.5 % late), generated before anything is timed."""
    return list(
        generate(FleetConfig(events=events, tenants=tenants, seed=seed, end=datetime.now(UTC)))
    )


def uniform_tenants(tenants: int, per_tenant: int, tag: str) -> list[FleetRecord]:
    """`per_tenant` events for each of `tenants` tenants: many active tenants at once."""
    now = datetime.now(UTC)
    out = []
    for i in range(per_tenant):
        for t in range(tenants):
            tenant = f"many/{t // 1000}/agent-{t}"
            ev = UsageEvent(
                event_id=f"{tag}-{i}-{t}",
                tenant_id=tenant,
                occurred_at=now,
                model="small-fast",
                input_tokens=100 + t % 50,
                output_tokens=20,
                region="eu-west-1",
            )
            out.append(FleetRecord(RecordKind.VALID, tenant, ev))
    return out


def _config(bootstrap: str, topic: str, envelope: bool) -> ProducerConfig:
    # A large buffer: the backlog is produced as fast as the SDK can, never dropped.
    return ProducerConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        envelope=envelope,
        buffer_max_events=200_000,
        block_timeout_s=120.0,
        linger_ms=20,
    )


async def produce_backlog(
    bootstrap: str,
    topic: str,
    records: list[FleetRecord],
    *,
    envelope: bool,
    org_secrets: Mapping[str, bytes] | None = None,
) -> Backlog:
    """Send `records` through the SDK (malformed ones through a bare producer).

    With `org_secrets` every record is signed by its org's key, as
    `tokenpulse simulate` signs: one UsageProducer per org (the SDK signs
    as one tenant), the malformed records with their tenant's key.
    """
    from aiokafka import AIOKafkaProducer

    out = Backlog(records=len(records))
    seen: set[str] = set()
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    producers: dict[str, UsageProducer] = {}
    started = time.perf_counter()
    await raw.start()
    try:
        for rec in records:
            if rec.kind is RecordKind.MALFORMED:
                assert rec.raw is not None
                out.malformed += 1
                headers = org_headers(rec.raw, rec.tenant_id, org_secrets)
                await raw.send(topic, rec.raw, key=rec.tenant_id.encode(), headers=headers)
                continue
            assert rec.event is not None
            org = org_of(rec.tenant_id) if org_secrets is not None else ""
            producer = producers.get(org)
            if producer is None:
                config = _config(bootstrap, topic, envelope)
                producer = UsageProducer(signed_as_org(config, org, org_secrets))
                await producer.start()
                producers[org] = producer
            await producer.record_event(rec.event)
            if rec.event.event_id not in seen:
                seen.add(rec.event.event_id)
                out.expected_events += 1
        for producer in producers.values():
            report = await producer.flush(timeout_s=300)
            if report.undelivered_count:
                raise RuntimeError(f"{report.undelivered_count} backlog events undelivered")
        await raw.flush()
    finally:
        await raw.stop()
        for producer in producers.values():
            await producer.close(60)
    out.produce_s = time.perf_counter() - started
    return out


@dataclass
class PacedResult:
    sent: int = 0
    cpu_s: float = 0.0  # the generator's own CPU, when it ran in a process of its own
    fresh_sent_at: dict[str, float] = field(default_factory=dict)  # event_id -> wall time
    crossing_sent_at: dict[str, float] = field(default_factory=dict)  # tenant -> wall time


async def produce_paced(
    bootstrap: str,
    topic: str,
    *,
    rate_eps: float,
    duration_s: float,
    sample_every: int,
    alert_tenants: list[str],
    alert_limit: int,
    result: PacedResult,
    id_prefix: str = "fresh",
) -> None:
    """Events at `rate_eps` for `duration_s`; the alert tenants cross their quota
    one after another, spread over the run. Event ids start with `id_prefix`:
    a second run needs its own, or its events are duplicates of the first's."""
    total = max(int(rate_eps * duration_s), 1)
    cross_every = max(total // (len(alert_tenants) + 1), 1) if alert_tenants else 0
    pending_alerts = list(alert_tenants)
    started = time.perf_counter()
    config = ProducerConfig(bootstrap_servers=bootstrap, topic=topic)  # the SDK defaults
    teams = [f"{FRESH_ORG}/team-{t}" for t in range(100)]
    probes = [f"{PROBE_PREFIX}{t}" for t in range(100)]  # spread over every partition
    # record() with keywords, as an agent runtime calls it: the SDK's own
    # fast path (occurred_at is now), no UsageEvent built per event.
    async with UsageProducer(config) as producer:
        record = producer.record
        for n in range(total):
            sampled = n % sample_every == 0
            event_id = await record(
                tenant_id=probes[n // sample_every % 100] if sampled else teams[n % 100],
                model="frontier-large",
                input_tokens=1000 + n % 500,
                output_tokens=200,
                event_id=f"{id_prefix}-{n}",
            )
            if sampled:
                result.fresh_sent_at[event_id] = time.time()
            if cross_every and n % cross_every == cross_every - 1 and pending_alerts:
                who = pending_alerts.pop(0)
                await record(
                    tenant_id=who,
                    model="frontier-large",
                    input_tokens=alert_limit,  # 100 % of the quota in one event
                    output_tokens=1,
                    event_id=f"cross-{who}",
                )
                result.crossing_sent_at[who] = time.time()
            result.sent = n + 1
            ahead = (n + 1) / rate_eps - (time.perf_counter() - started)
            if ahead >= _PACE_S:
                await asyncio.sleep(ahead)
        await producer.flush(timeout_s=60)
