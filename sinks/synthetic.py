"""Deterministic synthetic usage for tests, benchmarks and seeded examples."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch

INGESTED_AT = datetime(2026, 11, 25, tzinfo=UTC)


def random_events(
    n: int,
    *,
    start: datetime,
    span: timedelta,
    tenants: Sequence[str],
    models: Sequence[str],
    regions: Sequence[str] = ("eu-west", "us-east"),
    seed: int = 7,
    prefix: str = "ev",
) -> list[UsageEvent]:
    """n events spread uniformly over [start, start + span), reproducible by seed."""
    rng = random.Random(seed)  # noqa: S311 - test data, not crypto
    span_ms = int(span.total_seconds() * 1000)
    out = []
    for i in range(n):
        inp = rng.randint(0, 50_000)
        out_tok = rng.randint(0, 8_000)
        out.append(
            UsageEvent(
                event_id=f"{prefix}-{i}",
                tenant_id=rng.choice(tenants),
                occurred_at=start + timedelta(milliseconds=rng.randrange(span_ms)),
                model=rng.choice(models),
                input_tokens=inp,
                output_tokens=out_tok,
                cached_input_tokens=rng.randint(0, inp) if rng.random() < 0.4 else 0,
                reasoning_tokens=rng.randint(0, out_tok) if rng.random() < 0.3 else 0,
                region=rng.choice(regions),
                agent_id=f"agent-{rng.randint(1, 20)}",
                attributes={"k": str(i % 3)},
            )
        )
    return out


def as_batches(
    events: Sequence[UsageEvent],
    *,
    topic: str = "tokenpulse.usage.v1",
    partitions: int = 3,
    batch_rows: int = 5_000,
    ingested_at: datetime | None = None,
    late: bool = False,
) -> Iterator[SinkBatch]:
    """Round-robin events over partitions, then cut each partition into offset ranges."""
    per_part: list[list[AcceptedEvent]] = [[] for _ in range(partitions)]
    for i, ev in enumerate(events):
        p = i % partitions
        per_part[p].append(
            AcceptedEvent(
                event=ev,
                topic=topic,
                partition=p,
                offset=len(per_part[p]),
                ingested_at=ingested_at or INGESTED_AT,
                late=late,
            )
        )
    for p, accepted in enumerate(per_part):
        for lo in range(0, len(accepted), batch_rows):
            chunk = accepted[lo : lo + batch_rows]
            yield SinkBatch(topic, p, chunk[0].offset, chunk[-1].offset, tuple(chunk))
