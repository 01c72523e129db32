"""UsageEvent v1: the one model of a usage event, its wire codec and its rules.

Shared by the SDK (validate before enqueue) and the stream processors (decode
what arrives). Type, presence and per-field bounds are enforced by msgspec in
C while decoding; only the cross-field rules run in Python afterwards, so a
valid event costs one msgspec decode plus a handful of comparisons.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas._reasons import RejectReason

SCHEMA_VERSION: Final = 1
MAX_RECORD_BYTES: Final = 1024 * 1024  # one Kafka record; larger -> record_too_large
MAX_TOKENS: Final = 10**9
MAX_ID_CHARS: Final = 128  # event_id, tenant_id, model, and the optional string fields
TENANT_ID_PATTERN: Final = r"^[A-Za-z0-9._:/-]+$"
TENANT_SEPARATOR: Final = "/"  # acme/research/agent-7: a child of acme/research and acme
MAX_ATTRIBUTES: Final = 64
MAX_ATTRIBUTE_KEY_CHARS: Final = 128
MAX_ATTRIBUTE_VALUE_CHARS: Final = 1024
MAX_ATTRIBUTES_TOTAL_CHARS: Final = 16 * 1024  # keys + values, in characters (code points)

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
_OptStr = Annotated[str, Meta(max_length=MAX_ID_CHARS)] | None
# TENANT_ID_PATTERN is checked in _check_cross_field, with a cache: as a
# msgspec `pattern` it ran the regex for every event (0.7 us of a 1.9 us
# decode), although a fleet sends the same few thousand tenant ids again
# and again.
_TenantId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
# TENANT_ID_PATTERN in Python's semantics: there "$" also matches before a
# trailing newline ("acme\n"), which the JSON Schema (ECMA) refuses; "\Z" does not.
TENANT_ID_PATTERN_PY: Final = TENANT_ID_PATTERN.removesuffix("$") + r"\Z"
_TENANT_RE: Final = re.compile(TENANT_ID_PATTERN_PY)
_VALID_TENANTS: set[str] = set()  # ids that matched TENANT_ID_PATTERN
_VALID_TENANTS_MAX: Final = 65_536  # bounded: beyond it, ids are matched every time
_Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_Attributes = Annotated[
    dict[
        Annotated[str, Meta(max_length=MAX_ATTRIBUTE_KEY_CHARS)],
        Annotated[str, Meta(max_length=MAX_ATTRIBUTE_VALUE_CHARS)],
    ],
    Meta(max_length=MAX_ATTRIBUTES),
]


class UsageEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One model call's token usage. See docs/sdk.md for each field's rule.

    gc=False: instances are not tracked by the cyclic garbage collector.
    Safe because an event can never be part of a reference cycle (its fields
    are strings, numbers, a datetime and a str -> str dict), and it saves
    the worker about 2 us per event of collector passes over the events of
    the batches in flight.

    reasoning_tokens is an extension beyond the DESIGN table: the part of
    output_tokens spent on hidden reasoning (OpenAI o-series), so it is
    bounded by output_tokens and never added on top of it.
    """

    event_id: _Id
    tenant_id: _TenantId
    occurred_at: Annotated[datetime, Meta(tz=True)]
    model: _Id
    input_tokens: _Tokens
    output_tokens: _Tokens
    cached_input_tokens: _Tokens = 0
    reasoning_tokens: _Tokens = 0
    agent_id: _OptStr = None
    region: _OptStr = None
    provider: _OptStr = None
    operation: _OptStr = None
    gpu_seconds: Annotated[float, Meta(ge=0)] | None = None
    attributes: _Attributes = {}
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Normalise to UTC once, here, so windows and ClickHouse never see offsets.
        # A naive datetime (only possible from Python code) is left for
        # validate_event to reject with a clear reason.
        dt = self.occurred_at
        if dt.tzinfo is not UTC and isinstance(dt, datetime) and dt.utcoffset() is not None:
            # e.g. 0001-01-01T00:00+01:00 overflows: rejected as invalid_timestamp later.
            with contextlib.suppress(OverflowError):
                msgspec.structs.force_setattr(self, "occurred_at", dt.astimezone(UTC))


class _Envelope(msgspec.Struct):
    """The SDK batch envelope {"batch": [event, ...], "schema_version": 1}."""

    batch: list[msgspec.Raw]
    schema_version: int = SCHEMA_VERSION
    # A single event that happens to carry an unknown "batch" field is still an event.
    event_id: Any = msgspec.UNSET


class _EnvelopeOfEvents(msgspec.Struct):
    """_Envelope whose events all decode: the whole envelope in one msgspec call."""

    batch: list[UsageEvent]
    schema_version: int = SCHEMA_VERSION
    event_id: Any = msgspec.UNSET


class _BatchOut(msgspec.Struct):
    batch: Sequence[UsageEvent]
    schema_version: int = SCHEMA_VERSION


_DECODER: Final = msgspec.json.Decoder(UsageEvent)
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_Envelope)
_ENVELOPE_EVENTS_DECODER: Final = msgspec.json.Decoder(_EnvelopeOfEvents)
_ENCODER: Final = msgspec.json.Encoder()
_MISSING_RE: Final = re.compile(r"missing required field `([^`]+)`")
_PATH_RE: Final = re.compile(r"at `\$\.([A-Za-z0-9_]+)|in `\$\.([A-Za-z0-9_]+)`")
_BATCH_MARKER: Final = b'"batch"'
# How every envelope of the SDK starts (join_batch, encode_batch): such a
# record is decoded as an envelope first. Trying it as one event first parsed
# the whole envelope for nothing (5 % of the worker's samples in an SDK drain).
ENVELOPE_PREFIX: Final = b'{"batch":['


def _reject(reason: RejectReason, detail: str, field: str | None = None) -> InvalidRecord:
    where = f" in field {field!r}" if field else ""
    return InvalidRecord(
        f"invalid usage event{where}: {detail} [{reason}]; fix the producer (see docs/sdk.md)",
        reason=str(reason),
        field=field,
    )


def _from_validation_error(exc: msgspec.ValidationError) -> InvalidRecord:
    """Map msgspec's message to a stable reason code and field name."""
    msg = str(exc)
    missing = _MISSING_RE.search(msg)
    if missing:
        return _reject(RejectReason.MISSING_FIELD, msg, missing.group(1))
    path = _PATH_RE.search(msg)
    field = (path.group(1) or path.group(2)) if path else None
    if field is None:
        if msg.startswith("Expected `object`"):
            return _reject(RejectReason.NOT_AN_OBJECT, msg)
        return _reject(RejectReason.WRONG_TYPE, msg)
    if field == "tenant_id":
        reason = RejectReason.INVALID_TENANT_ID
    elif field == "occurred_at":
        reason = RejectReason.INVALID_TIMESTAMP
    elif field == "attributes":
        has_length = "of length" in msg
        reason = RejectReason.ATTRIBUTES_TOO_LARGE if has_length else RejectReason.WRONG_TYPE
    elif ", got `" in msg:
        reason = RejectReason.WRONG_TYPE
    else:
        reason = RejectReason.OUT_OF_RANGE
    return _reject(reason, msg, field)


def _check_cross_field(ev: UsageEvent) -> UsageEvent:
    """The rules msgspec cannot express (or not cheaply); raises InvalidRecord."""
    tenant = ev.tenant_id
    if tenant not in _VALID_TENANTS:
        if _TENANT_RE.match(tenant) is None:
            raise _reject(
                RejectReason.INVALID_TENANT_ID,
                f"tenant_id {tenant!r} does not match {TENANT_ID_PATTERN!r}",
                "tenant_id",
            )
        if len(_VALID_TENANTS) < _VALID_TENANTS_MAX:
            _VALID_TENANTS.add(tenant)
    if ev.schema_version != SCHEMA_VERSION:
        raise _reject(
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {ev.schema_version!r} is not supported (this reader knows "
            f"{SCHEMA_VERSION})",
            "schema_version",
        )
    if ev.cached_input_tokens > ev.input_tokens:
        raise _reject(
            RejectReason.CACHED_EXCEEDS_INPUT,
            f"cached_input_tokens {ev.cached_input_tokens} > input_tokens {ev.input_tokens}",
            "cached_input_tokens",
        )
    if ev.reasoning_tokens > ev.output_tokens:
        raise _reject(
            RejectReason.REASONING_EXCEEDS_OUTPUT,
            f"reasoning_tokens {ev.reasoning_tokens} > output_tokens {ev.output_tokens}",
            "reasoning_tokens",
        )
    if ev.occurred_at.tzinfo is not UTC:
        raise _reject(
            RejectReason.INVALID_TIMESTAMP,
            "occurred_at must be RFC 3339 with an offset within years 1..9999 in UTC",
            "occurred_at",
        )
    attrs = ev.attributes
    if attrs:
        total = sum(map(len, attrs)) + sum(map(len, attrs.values()))
        if total > MAX_ATTRIBUTES_TOTAL_CHARS:
            raise _reject(
                RejectReason.ATTRIBUTES_TOO_LARGE,
                f"attributes hold {total} characters, limit {MAX_ATTRIBUTES_TOTAL_CHARS}",
                "attributes",
            )
    return ev


def _decode_one(data: bytes | msgspec.Raw) -> UsageEvent:
    try:
        ev = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _from_validation_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _reject(RejectReason.MALFORMED_JSON, str(exc)) from None
    return _check_cross_field(ev)


def _too_large(size: int) -> InvalidRecord:
    return _reject(
        RejectReason.RECORD_TOO_LARGE, f"record is {size} bytes, limit {MAX_RECORD_BYTES}"
    )


def decode_usage_event(data: bytes) -> UsageEvent:
    """Decode and validate one single-event record; raises InvalidRecord."""
    if len(data) > MAX_RECORD_BYTES:
        raise _too_large(len(data))
    return _decode_one(data)


def decode_usage_record(data: bytes | bytearray | memoryview) -> list[UsageEvent | InvalidRecord]:
    """Decode a single-event record or an SDK batch envelope.

    One verdict per event, in order; a bad event in a batch does not reject
    the others (its InvalidRecord carries details["batch_index"]). A record
    that cannot be read at all yields exactly one InvalidRecord.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > MAX_RECORD_BYTES:
        return [_too_large(len(data))]
    if data.startswith(ENVELOPE_PREFIX):
        batch = _decode_envelope(data)
        if batch is not None and (len(batch) > 1 or isinstance(batch[0], UsageEvent)
                                  or "batch_index" in batch[0].details):  # fmt: skip
            return batch
        # Not an envelope after all, or a broken one: the verdict of the path
        # below (an event with a "batch" field first is still an event).
    # A single event first: the common record, and an envelope can never
    # decode as one (it has no event_id). Only a record that fails is
    # searched for the envelope's key (the search cost 0.7 us per record).
    try:
        return [_decode_one(data)]
    except InvalidRecord as exc:
        return verdicts_of_non_event(data, exc)


def verdicts_of_non_event(data: bytes, error: InvalidRecord) -> list[UsageEvent | InvalidRecord]:
    """The verdicts of a record that failed `decode_usage_event` with `error`.

    An SDK batch envelope's verdicts, or `error` itself. For a reader that
    tries the single event first on its own (the worker's hot loop) and must
    not decode a large envelope twice.
    """
    if _BATCH_MARKER in data:
        batch = _decode_envelope(data)
        if batch is not None:
            return batch
    return [error]


def _decode_envelope(data: bytes) -> list[UsageEvent | InvalidRecord] | None:
    """The envelope's verdicts, or None when the record is a single event."""
    # The common envelope, every event valid, in one call (a call per event
    # cost ~0.3 us more an event); anything else takes the path below, which
    # gives each event its own verdict.
    with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        whole = _ENVELOPE_EVENTS_DECODER.decode(data)
        if (
            whole.event_id is msgspec.UNSET
            and whole.schema_version == SCHEMA_VERSION
            and whole.batch
        ):
            with contextlib.suppress(InvalidRecord):
                return list(map(_check_cross_field, whole.batch))
    try:
        env = _ENVELOPE_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        err = _from_validation_error(exc)
        if err.reason == RejectReason.MISSING_FIELD and err.field == "batch":
            return None
        if err.field == "batch" and err.reason == RejectReason.OUT_OF_RANGE:
            err = _reject(RejectReason.WRONG_TYPE, str(exc), "batch")
        return [err]
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return [_reject(RejectReason.MALFORMED_JSON, str(exc))]
    if env.event_id is not msgspec.UNSET:
        return None
    if env.schema_version != SCHEMA_VERSION:
        return [
            _reject(
                RejectReason.UNSUPPORTED_SCHEMA_VERSION,
                f"batch schema_version {env.schema_version!r} is not supported",
                "schema_version",
            )
        ]
    if not env.batch:
        return [_reject(RejectReason.EMPTY_BATCH, "batch envelope holds no events", "batch")]
    out: list[UsageEvent | InvalidRecord] = []
    for index, raw in enumerate(env.batch):
        try:
            out.append(_decode_one(raw))
        except InvalidRecord as exc:
            exc.details["batch_index"] = index
            out.append(exc)
    return out


def encode_usage_event(event: UsageEvent) -> bytes:
    """The wire form of one event (defaults omitted; occurred_at as RFC 3339)."""
    return _ENCODER.encode(event)


def encode_batch(events: Sequence[UsageEvent]) -> bytes:
    """The SDK batch envelope for events (all normally of one tenant)."""
    return _ENCODER.encode(_BatchOut(batch=events))


def join_batch(values: Sequence[bytes]) -> bytes:
    """A batch envelope from already-encoded (and validated) event records."""
    return b'{"batch":[' + b",".join(values) + b'],"schema_version":1}'


def validate_event(event: UsageEvent) -> UsageEvent:
    """Apply every rule to an event built in Python; returns it normalised (UTC).

    Struct construction does not check types, so this runs the same msgspec
    decoder the processors use on the event's encoding: what passes here
    passes there.
    """
    return checked_encoding(event)[0]


def checked_encoding(event: UsageEvent) -> tuple[UsageEvent, bytes]:
    """validate_event plus the validated wire bytes (the SDK sends exactly these)."""
    gpu = event.gpu_seconds
    if isinstance(gpu, float) and not math.isfinite(gpu):
        # msgspec would encode NaN/inf as null and the rule would be lost.
        raise _reject(
            RejectReason.OUT_OF_RANGE, f"gpu_seconds must be finite, got {gpu}", "gpu_seconds"
        )
    try:
        data = _ENCODER.encode(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _reject(RejectReason.WRONG_TYPE, str(exc), _unencodable_field(event)) from None
    # No size check first: the field limits bound a valid event far below
    # MAX_RECORD_BYTES, and decoding names the field that is too big.
    return _decode_one(data), data


def _unencodable_field(event: UsageEvent) -> str | None:
    """Slow path, errors only: which field msgspec could not encode."""
    for name in event.__struct_fields__:
        try:
            _ENCODER.encode(getattr(event, name))
        except (TypeError, ValueError, OverflowError):
            return name
    return None


def tenant_lineage(tenant_id: str) -> list[str]:
    """The tenant and its ancestors, nearest first: a/b/c -> [a/b/c, a/b, a]."""
    parts = tenant_id.split(TENANT_SEPARATOR)
    return [TENANT_SEPARATOR.join(parts[:i]) for i in range(len(parts), 0, -1)]


def tenant_within(tenant_id: str, ancestor: str) -> bool:
    """True when tenant_id is ancestor itself or below it in the hierarchy."""
    return tenant_id == ancestor or tenant_id.startswith(ancestor + TENANT_SEPARATOR)
