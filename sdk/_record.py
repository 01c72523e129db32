"""The caller-side half of record(): build, validate and encode one event.

Kept free of I/O so its cost is what the agent pays per model call: one
struct, one msgspec encode plus decode (the processors' own rules), a UUIDv7.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from tokenpulse.schemas.usage import UsageEvent, checked_encoding
from tokenpulse.sdk._uuid7 import uuid7

_NO_ATTRIBUTES: dict[str, str] = {}


def build_event(
    *,
    tenant_id: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    reasoning_tokens: int = 0,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    agent_id: str | None = None,
    region: str | None = None,
    provider: str | None = None,
    operation: str | None = None,
    gpu_seconds: float | None = None,
    attributes: Mapping[str, str] | None = None,
) -> tuple[UsageEvent, bytes]:
    """A validated event and its wire bytes; raises InvalidRecord naming the field."""
    event = UsageEvent(
        event_id=uuid7() if event_id is None else event_id,
        tenant_id=tenant_id,
        occurred_at=datetime.now(UTC) if occurred_at is None else occurred_at,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        reasoning_tokens=reasoning_tokens,
        agent_id=agent_id,
        region=region,
        provider=provider,
        operation=operation,
        gpu_seconds=gpu_seconds,
        attributes=_NO_ATTRIBUTES if attributes is None else dict(attributes),
    )
    return checked_encoding(event)
