"""Drive the real pipeline with a simulated fleet (tokenpulse.fleet) through
the producer SDK, and say exactly what the pipeline must end up counting.

Valid, late and duplicate records go through `UsageProducer` (signed per
org when a keyring is given, as real agents would); malformed records, which
the SDK refuses to send, go through a bare Kafka producer so that the
worker's dead-letter path is exercised too.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenpulse.config import TOPIC_USAGE
from tokenpulse.errors import ServiceUnavailable
from tokenpulse.fleet import FleetConfig, RecordKind, generate
from tokenpulse.schemas import sign_record
from tokenpulse.sdk import ProducerConfig, UsageProducer

SIGNING_KEY_ID = "demo-1"


@dataclass
class Expected:
    """What the pipeline must count for one tenant: unique accepted events."""

    events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    late: int = 0


@dataclass
class SimulationResult:
    sent: Counter[str] = field(default_factory=Counter)  # by RecordKind
    expected: dict[str, Expected] = field(default_factory=dict)  # by tenant
    undelivered: int = 0
    elapsed_s: float = 0.0

    @property
    def expected_events(self) -> int:
        return sum(e.events for e in self.expected.values())

    @property
    def expected_dlq(self) -> int:
        return self.sent[RecordKind.MALFORMED]


def org_of(tenant_id: str) -> str:
    return tenant_id.split("/", 1)[0]


def ensure_keyring(path: Path, orgs: list[str]) -> dict[str, bytes]:
    """A keyring file with one key per org (created once, mode 0600)."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"tenants": {}}
    tenants = data.setdefault("tenants", {})
    changed = False
    for org in orgs:
        if org not in tenants:
            tenants[org] = {SIGNING_KEY_ID: "hex:" + secrets.token_hex(32)}
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return {org: bytes.fromhex(tenants[org][SIGNING_KEY_ID][4:]) for org in orgs}


async def run_simulation(
    config: FleetConfig,
    *,
    bootstrap_servers: str,
    topic: str = TOPIC_USAGE,
    org_secrets: dict[str, bytes] | None = None,
    rate_eps: float | None = None,
    progress: Callable[[int], None] | None = None,
    close_timeout_s: float = 60.0,
) -> SimulationResult:
    """Send the fleet's records; returns what the pipeline must count."""
    from aiokafka import AIOKafkaProducer

    result = SimulationResult()
    producers: dict[str, UsageProducer] = {}
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    seen: set[str] = set()
    started = time.perf_counter()
    await raw.start()
    try:
        for n, rec in enumerate(generate(config)):
            result.sent[rec.kind] += 1
            if rec.kind is RecordKind.MALFORMED:
                assert rec.raw is not None
                headers = org_headers(rec.raw, rec.tenant_id, org_secrets)
                await raw.send(topic, rec.raw, key=rec.tenant_id.encode(), headers=headers)
            else:
                assert rec.event is not None
                org = org_of(rec.tenant_id)
                producer = producers.get(org)
                if producer is None:
                    producer = UsageProducer(
                        _producer_config(bootstrap_servers, topic, org, org_secrets)
                    )
                    await producer.start()
                    producers[org] = producer
                await producer.record_event(rec.event)
                if rec.event.event_id not in seen:
                    seen.add(rec.event.event_id)
                    exp = result.expected.setdefault(rec.tenant_id, Expected())
                    exp.events += 1
                    exp.input_tokens += rec.event.input_tokens
                    exp.output_tokens += rec.event.output_tokens
                    exp.cached_input_tokens += rec.event.cached_input_tokens
                    exp.late += rec.kind is RecordKind.LATE
            if progress is not None and n % 1000 == 999:
                progress(n + 1)
            if rate_eps:
                ahead = (n + 1) / rate_eps - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await raw.flush()
    finally:
        await raw.stop()
        for producer in producers.values():
            report = await producer.close(close_timeout_s)
            result.undelivered += report.undelivered_count
    result.elapsed_s = time.perf_counter() - started
    if result.undelivered:
        raise ServiceUnavailable(
            f"{result.undelivered} simulated events could not be delivered to Kafka at "
            f"{bootstrap_servers}; is the broker up? (tokenpulse dev status)",
            details={"undelivered": result.undelivered},
        )
    return result


def _producer_config(
    bootstrap_servers: str, topic: str, org: str, org_secrets: dict[str, bytes] | None
) -> ProducerConfig:
    return signed_as_org(
        ProducerConfig(bootstrap_servers=bootstrap_servers, topic=topic), org, org_secrets
    )


def signed_as_org(
    config: ProducerConfig, org: str, org_secrets: Mapping[str, bytes] | None
) -> ProducerConfig:
    """`config` signing every record with `org`'s key (as is without secrets)."""
    if org_secrets is None:
        return config
    return replace(
        config,
        signing_tenant_id=org,
        signing_key_id=SIGNING_KEY_ID,
        signing_secret=org_secrets[org],
    )


def org_headers(
    value: bytes, tenant_id: str, org_secrets: Mapping[str, bytes] | None
) -> list[tuple[str, bytes]] | None:
    """Signature headers for a record sent without the SDK (a malformed one):
    signed by tenant_id's key when it is an org with one, else unsigned."""
    if not org_secrets or tenant_id not in org_secrets:
        return None
    return sign_record(
        value, tenant_id=tenant_id, key_id=SIGNING_KEY_ID, secret=org_secrets[tenant_id]
    )
