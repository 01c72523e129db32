"""A simulated fleet of agents: the load `tokenpulse simulate`, the demo and
the benchmarks drive the real pipeline with.

Tenants are hierarchical (org/department/agent) with Zipf-distributed sizes,
several models and regions, a daily rhythm in event time, and the faults a
real fleet produces: duplicate sends (same event_id again), malformed
records and late events. Generation is deterministic for a seed, so a test
can compute the expected totals from the same generator the load came from.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from tokenpulse.schemas import UsageEvent

_ORGS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")
_DEPARTMENTS = ("research", "support", "sales", "platform")
# (model, provider, mean input tokens, mean output tokens) per call
# The models of examples/pricebook.toml and examples/serving.toml, so that
# every simulated event can be billed and sized.
_MODELS = (
    ("frontier-large", "openai", 2400, 600),
    ("research-xl", "anthropic", 3200, 800),
    ("small-fast", "self-hosted", 1600, 400),
)
_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
_MALFORMED = (
    b'{"event_id": "broken", "tenant_id": "acme/research"',  # truncated JSON
    b'{"event_id":"x","tenant_id":"acme","occurred_at":"2026-11-25T08:00:00",'
    b'"model":"m","input_tokens":1,"output_tokens":1}',  # timestamp without offset
    b'{"event_id":"y","tenant_id":"acme","occurred_at":"2026-11-25T08:00:00Z",'
    b'"model":"m","input_tokens":-5,"output_tokens":1}',  # negative tokens
    b"not json at all",
    b"[1, 2, 3]",
)


class RecordKind(StrEnum):
    VALID = "valid"
    DUPLICATE = "duplicate"  # the same event again: must be counted once
    LATE = "late"  # valid, occurred_at well in the past: counted, flagged late
    MALFORMED = "malformed"  # must land in the DLQ


@dataclass(frozen=True, slots=True)
class FleetRecord:
    kind: RecordKind
    tenant_id: str
    event: UsageEvent | None  # None for MALFORMED
    raw: bytes | None = None  # the bytes of a MALFORMED record


@dataclass(frozen=True)
class FleetConfig:
    """What the simulated fleet looks like.

    events: records to produce in all (valid + duplicates + malformed + late).
    tenants: leaf tenants (org/department/agent-N), Zipf-sized with `zipf_s`.
    span_s: event-time span ending at `end`, with a daily rhythm.
    """

    events: int = 10_000
    tenants: int = 60
    zipf_s: float = 1.1
    duplicate_pct: float = 1.0
    malformed_pct: float = 0.5
    late_pct: float = 0.5
    late_by_s: float = 3600.0
    span_s: float = 120.0  # inside the worker's default allowed lateness (300 s)
    end: datetime = field(default_factory=lambda: datetime.now(UTC))
    seed: int = 7


def tenant_ids(count: int) -> list[str]:
    """Leaf tenants spread over orgs and departments: acme/research/agent-1, ..."""
    out = []
    for i in range(count):
        org = _ORGS[i % len(_ORGS)]
        dept = _DEPARTMENTS[(i // len(_ORGS)) % len(_DEPARTMENTS)]
        out.append(f"{org}/{dept}/agent-{i + 1}")
    return out


def _daily_rhythm(rng: random.Random, end: datetime, span_s: float) -> datetime:
    """An event time in [end - span, end], denser in the working day (UTC)."""
    for _ in range(16):
        t = end - timedelta(seconds=rng.random() * span_s)
        hour = t.hour + t.minute / 60
        # Peak at 14:00 UTC, trough at 02:00; acceptance between 0.3 and 1.0.
        weight = 0.65 + 0.35 * math.cos((hour - 14) / 24 * 2 * math.pi)
        if rng.random() <= weight:
            return t
    return t


def generate(config: FleetConfig) -> Iterator[FleetRecord]:
    """Yield `config.events` records, deterministic for `config.seed`."""
    rng = random.Random(config.seed)  # noqa: S311 - a simulation, not a secret
    tenants = tenant_ids(config.tenants)
    weights = [1.0 / (rank + 1) ** config.zipf_s for rank in range(len(tenants))]
    recent: list[UsageEvent] = []
    for n in range(config.events):
        roll = rng.random() * 100
        if roll < config.malformed_pct:
            raw = _MALFORMED[n % len(_MALFORMED)]
            yield FleetRecord(RecordKind.MALFORMED, "acme", None, raw)
            continue
        if roll < config.malformed_pct + config.duplicate_pct and recent:
            again = recent[rng.randrange(len(recent))]
            yield FleetRecord(RecordKind.DUPLICATE, again.tenant_id, again)
            continue
        late = roll >= 100 - config.late_pct
        index = rng.choices(range(len(tenants)), weights)[0]
        tenant = tenants[index]
        model, provider, mean_in, mean_out = _MODELS[rng.randrange(len(_MODELS))]
        input_tokens = max(1, int(rng.expovariate(1 / mean_in)))
        output_tokens = max(1, int(rng.expovariate(1 / mean_out)))
        cached = input_tokens // 2 if rng.random() < 0.3 else 0
        occurred = _daily_rhythm(rng, config.end, config.span_s)
        if late:
            occurred -= timedelta(seconds=config.late_by_s)
        event = UsageEvent(
            event_id=f"sim-{config.seed}-{n:010d}",
            tenant_id=tenant,
            occurred_at=occurred,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached,
            agent_id=tenant.rsplit("/", 1)[-1],
            region=_REGIONS[index % len(_REGIONS)],
            provider=provider,
            operation="chat",
            gpu_seconds=round((input_tokens + output_tokens) / 4000, 3),
        )
        recent.append(event)
        if len(recent) > 1000:
            recent.pop(0)
        yield FleetRecord(RecordKind.LATE if late else RecordKind.VALID, tenant, event)
