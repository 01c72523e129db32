"""The caller-side half of record(): build, validate and encode one event.

Kept free of I/O so its cost is what the agent pays per model call. The rules
are the processors' own: the wire bytes are decoded with the same msgspec
decoder and cross-field checks (tokenpulse.schemas.usage), so whatever
record() accepts, the processors accept.

Fast path: the JSON object is encoded straight from the keyword arguments
(no intermediate UsageEvent), with exactly the fields, order and omissions
that encoding a UsageEvent gives, so the bytes are identical to the reference
path (`checked_encoding(UsageEvent(...))`, pinned by a differential test).
Anything unusual (a non-UTC datetime, a non-finite gpu_seconds, a value
msgspec cannot encode, a rejected event) goes through the reference path,
which produces the canonical InvalidRecord with its reason and field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas.usage import UsageEvent, checked_encoding, decode_usage_event
from tokenpulse.sdk._uuid7 import uuid7

_NO_ATTRIBUTES: dict[str, str] = {}
_ENCODE = msgspec.json.Encoder().encode
_now = datetime.now


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
    if event_id is None:
        event_id = uuid7()
    if occurred_at is None:
        occurred_at = _now(UTC)
    elif type(occurred_at) is not datetime or occurred_at.tzinfo is not UTC:
        # Offsets are normalised (and naive or foreign values named) by UsageEvent.
        return reference_event(**_args(locals()))
    attrs = _NO_ATTRIBUTES
    if attributes is not None:
        attrs = attributes if type(attributes) is dict else _as_dict(attributes)
    # Same keys, order and omissions as encoding the UsageEvent (omit_defaults:
    # an exact int 0, None, an empty dict); schema_version is always the default.
    obj = {
        "event_id": event_id,
        "tenant_id": tenant_id,
        "occurred_at": occurred_at,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    if not (type(cached_input_tokens) is int and cached_input_tokens == 0):
        obj["cached_input_tokens"] = cached_input_tokens
    if not (type(reasoning_tokens) is int and reasoning_tokens == 0):
        obj["reasoning_tokens"] = reasoning_tokens
    if agent_id is not None:
        obj["agent_id"] = agent_id
    if region is not None:
        obj["region"] = region
    if provider is not None:
        obj["provider"] = provider
    if operation is not None:
        obj["operation"] = operation
    if gpu_seconds is not None:
        if type(gpu_seconds) is float and not math.isfinite(gpu_seconds):
            return reference_event(**_args(locals()))  # msgspec would write null
        obj["gpu_seconds"] = gpu_seconds
    if attrs:
        obj["attributes"] = attrs
    try:
        data = _ENCODE(obj)
        return decode_usage_event(data), data
    except (InvalidRecord, TypeError, ValueError, OverflowError):
        # The reference path raises the canonical error (reason, field).
        return reference_event(**_args(locals()))


_FIELDS = (
    "tenant_id",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "event_id",
    "occurred_at",
    "agent_id",
    "region",
    "provider",
    "operation",
    "gpu_seconds",
    "attributes",
)


def _wrong_type(field: str, expected: str, value: object) -> InvalidRecord:
    # Python-API type errors the wire format cannot express (a str is not a datetime).
    return InvalidRecord(
        f"invalid usage event in field {field!r}: expected {expected}, got "
        f"{type(value).__name__} [wrong_type]; fix the producer (see docs/sdk.md)",
        reason="wrong_type",
        field=field,
    )


def _as_dict(attributes: object) -> dict[str, str]:
    if not isinstance(attributes, Mapping):
        raise _wrong_type("attributes", "a mapping of str to str", attributes)
    return dict(attributes)


def _args(scope: dict[str, Any]) -> dict[str, Any]:
    return {name: scope[name] for name in _FIELDS}


def reference_event(
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
    """The reference path: a UsageEvent, then the schemas' checked_encoding."""
    if occurred_at is not None and not isinstance(occurred_at, datetime):
        raise _wrong_type("occurred_at", "a timezone-aware datetime", occurred_at)
    event = UsageEvent(
        event_id=uuid7() if event_id is None else event_id,
        tenant_id=tenant_id,
        occurred_at=_now(UTC) if occurred_at is None else occurred_at,
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
        attributes=_NO_ATTRIBUTES if attributes is None else _as_dict(attributes),
    )
    return checked_encoding(event)
