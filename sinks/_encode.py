"""Rows of `usage_events` as one JSONCompactColumns body, serialized by orjson.

Why this format: clickhouse-connect's Native insert encodes every value in
Python (about 4 us of worker CPU per row, measured in bench/sink_bench.py);
here Python only pivots the events into columns and orjson writes them in C
(msgspec the UTC timestamp columns; about 0.7 us per row in all), while
ClickHouse parses the body as fast as Native.
The compact form carries no keys: values are matched to the column list of
the INSERT by position, so an unknown or misspelt key cannot exist, and a
body with more columns than the INSERT names is rejected by the server.

Exactness, with PARSE_SETTINGS sent along with the insert:
- timestamps travel as RFC 3339 text (`2026-11-03T10:00:00.123456Z`, years
  1..9999); the server keeps the first 3 fraction digits (truncation, as the
  Native path floors microseconds) and never goes through a float;
- integers are JSON integers (UInt64 up to 2**64 - 1), Bool is true/false;
- floats are written as the shortest repr that reads back to the same double,
  and `precise_float_parsing` makes the server read them back exactly (its
  default fast parser is not exact); None is null; NaN/inf are refused (JSON
  has no spelling for them and orjson would write null);
- strings are JSON strings (quotes, backslashes, control characters escaped,
  other unicode as UTF-8); attributes are a JSON object -> Map(String, String).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from datetime import UTC
from typing import Any, Final

import msgspec
import orjson

from tokenpulse.sinks.base import AcceptedEvent

__all__ = [
    "COLUMN_NAMES",
    "EVENT_COLUMNS",
    "FORMAT",
    "PARSE_SETTINGS",
    "encode_events",
    "encode_fragments",
    "event_columns",
    "join_fragments",
]

# (column, ClickHouse type) in insert order.
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "String"),
    ("tenant_id", "String"),
    ("occurred_at", "DateTime64(3, 'UTC')"),
    ("model", "LowCardinality(String)"),
    ("input_tokens", "UInt64"),
    ("output_tokens", "UInt64"),
    ("cached_input_tokens", "UInt64"),
    ("reasoning_tokens", "UInt64"),
    ("agent_id", "String"),
    ("region", "LowCardinality(String)"),
    ("provider", "LowCardinality(String)"),
    ("operation", "LowCardinality(String)"),
    ("gpu_seconds", "Nullable(Float64)"),
    ("attributes", "Map(String, String)"),
    ("schema_version", "UInt16"),
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "UInt32"),
    ("kafka_offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
    ("late", "Bool"),
)
COLUMN_NAMES: Final = tuple(c for c, _ in EVENT_COLUMNS)
_GPU: Final = COLUMN_NAMES.index("gpu_seconds")
_DATETIMES: Final = frozenset(
    i for i, (_, ch_type) in enumerate(EVENT_COLUMNS) if ch_type.startswith("DateTime")
)

FORMAT: Final = "JSONCompactColumns"

# How the server must parse the body so that every value lands exactly.
PARSE_SETTINGS: Final[dict[str, Any]] = {
    # orjson writes "...T...Z" with up to 6 fraction digits; the basic
    # parser would reject the T/Z form.
    "date_time_input_format": "best_effort",
    # The default fast float parser gets the last digit wrong for many values
    # (6,381 of 40,000 random doubles on chdb 26.9); the precise one reads
    # back exactly the double that was written.
    "precise_float_parsing": 1,
    # null only where the column is Nullable (gpu_seconds); anywhere else it
    # is an error, never a silent ''/0. Optional strings are sent as ''.
    "input_format_null_as_default": 0,
    # A server profile must not be able to turn a bad row into a skipped row.
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
}

# Aware datetimes are written with their offset (UTC as Z); a naive one is
# taken as UTC, as everything in tokenpulse is (never the machine's zone).
_OPTIONS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
# msgspec writes a UTC datetime as orjson does (RFC 3339, Z, 0 or 6 fraction
# digits), ~10x faster: ~12 against ~125 ns a value, two columns a row. It
# has no "naive is UTC" option, so only columns all in UTC go that way.
_MSGSPEC: Final = msgspec.json.Encoder()
_TZINFO: Final = operator.attrgetter("tzinfo")


def event_columns(events: Iterable[AcceptedEvent]) -> list[list[Any]]:
    """Pivot accepted events into the column lists of EVENT_COLUMNS.

    A plain loop over bound `append`s: measured faster here (1.0 us per row)
    than pivoting in C with attrgetter and zip (2.4 us: a tuple per row and
    per column, and the collector passes they cause).
    """
    cols: list[list[Any]] = [[] for _ in EVENT_COLUMNS]
    (
        event_id,
        tenant_id,
        occurred_at,
        model,
        input_tokens,
        output_tokens,
        cached,
        reasoning,
        agent_id,
        region,
        provider,
        operation,
        gpu_seconds,
        attributes,
        schema_version,
        topic,
        partition,
        offset,
        ingested_at,
        late,
    ) = cols
    for acc in events:
        ev = acc.event
        event_id.append(ev.event_id)
        tenant_id.append(ev.tenant_id)
        occurred_at.append(ev.occurred_at)
        model.append(ev.model)
        input_tokens.append(ev.input_tokens)
        output_tokens.append(ev.output_tokens)
        cached.append(ev.cached_input_tokens)
        reasoning.append(ev.reasoning_tokens)
        agent_id.append(ev.agent_id or "")
        region.append(ev.region or "")
        provider.append(ev.provider or "")
        operation.append(ev.operation or "")
        gpu_seconds.append(ev.gpu_seconds)
        attributes.append(ev.attributes)
        schema_version.append(ev.schema_version)
        topic.append(acc.topic)
        partition.append(acc.partition)
        offset.append(acc.offset)
        ingested_at.append(acc.ingested_at)
        late.append(acc.late)
    return cols


Fragments = tuple[bytes, ...]  # per column of EVENT_COLUMNS: its JSON values, comma-separated


def encode_fragments(events: Iterable[AcceptedEvent]) -> Fragments:
    """Each column's values as `encode_events` writes them, without the column's brackets.

    The body of several batches is their fragments joined (`join_fragments`):
    the same bytes as `encode_events` over all their events, but each
    batch's encoded when it is prepared, not on the write's critical path.
    Raises as `encode_events` does.
    """
    return tuple(_column_json(i, col)[1:-1] for i, col in enumerate(_checked_columns(events)))


def join_fragments(parts: Iterable[Fragments]) -> bytes:
    """The JSONCompactColumns body of batches encoded by `encode_fragments`, in order."""
    kept = [p for p in parts if p[0]]  # a batch without events has empty fragments
    if not kept:
        return orjson.dumps([[] for _ in EVENT_COLUMNS])
    return b"[" + b",".join(b"[" + b",".join(col) + b"]" for col in zip(*kept, strict=True)) + b"]"


def encode_events(events: Iterable[AcceptedEvent]) -> bytes:
    """The JSONCompactColumns body (uncompressed) of these events, columns as EVENT_COLUMNS.

    Raises TypeError or ValueError for a value JSON cannot carry exactly (an
    integer beyond 64 bits, a non-string attribute key, a NaN or infinite
    gpu_seconds) rather than write a lossy stand-in.
    """
    cols = _checked_columns(events)
    return b"[" + b",".join([_column_json(i, col) for i, col in enumerate(cols)]) + b"]"


def _column_json(index: int, col: list[Any]) -> bytes:
    """One column as a JSON array, in the spelling described above."""
    if index in _DATETIMES and list(map(_TZINFO, col)).count(UTC) == len(col):
        return _MSGSPEC.encode(col)
    return orjson.dumps(col, option=_OPTIONS)


def _checked_columns(events: Iterable[AcceptedEvent]) -> list[list[Any]]:
    cols = event_columns(events)
    # filter(None, ...) drops None and 0.0, both fine; what is left must be finite.
    if not all(map(math.isfinite, filter(None, cols[_GPU]))):
        raise ValueError("gpu_seconds must be finite (or None) to be stored exactly")
    return cols
