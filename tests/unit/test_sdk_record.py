"""record()'s fast path against the reference path: same bytes, same verdicts.

build_event encodes straight from the keyword arguments; reference_event
builds a UsageEvent and runs the schemas' checked_encoding. For any input
both must either give identical wire bytes, or raise InvalidRecord with the
same reason and field (or the same non-InvalidRecord exception type).
"""

from __future__ import annotations

import enum
import json
import os
import threading
import types
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenpulse.sdk._uuid7 as u7
from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import iter_vectors
from tokenpulse.sdk._record import build_event, reference_event

FIXED = {
    "event_id": "01890a5d-ac96-774b-bcce-b302099a8057",
    "occurred_at": datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC),
}
BASE: dict[str, Any] = {
    "tenant_id": "acme/research",
    "model": "gpt-4o",
    "input_tokens": 1200,
    "output_tokens": 300,
}


class Zero(enum.IntEnum):
    ZERO = 0


def _outcome(fn: Any, kwargs: dict[str, Any]) -> tuple[str, Any]:
    try:
        event, data = fn(**kwargs)
    except InvalidRecord as exc:
        return "invalid", (exc.reason, exc.field)
    except Exception as exc:
        return "error", type(exc).__name__
    return "ok", (data, event.event_id, event.tenant_id)


def _same(kwargs: dict[str, Any]) -> tuple[str, Any]:
    fast = _outcome(build_event, kwargs)
    ref = _outcome(reference_event, kwargs)
    assert fast == ref, kwargs
    return fast


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"cached_input_tokens": 1000, "reasoning_tokens": 20, "agent_id": "a-7"},
        {"region": "eu", "provider": "openai", "operation": "chat", "gpu_seconds": 0.25},
        {"gpu_seconds": 0, "attributes": {"k": "v"}},
        {"attributes": types.MappingProxyType({"k": "v"})},
        {"attributes": {}},
        {"cached_input_tokens": 0.0},
        {"cached_input_tokens": False},
        {"reasoning_tokens": Zero.ZERO},
        {"input_tokens": True},
        {"input_tokens": 2.0},
        {"input_tokens": "12"},
        {"input_tokens": 10**9 + 1},
        {"input_tokens": 2**70},
        {"output_tokens": -1},
        {"cached_input_tokens": 1201},
        {"reasoning_tokens": 301},
        {"tenant_id": ""},
        {"tenant_id": "acme corp"},
        {"tenant_id": "acme\n"},
        {"tenant_id": "a" * 129},
        {"tenant_id": 5},
        {"model": ""},
        {"model": None},
        {"agent_id": "x" * 129},
        {"agent_id": 7},
        {"region": "\ud800"},
        {"gpu_seconds": float("nan")},
        {"gpu_seconds": float("inf")},
        {"gpu_seconds": -0.5},
        {"gpu_seconds": "1"},
        {"attributes": {"n": 5}},
        {"attributes": {"k" * 129: "v"}},
        {"attributes": {str(i): "v" for i in range(65)}},
        {"attributes": {str(i): "v" * 1000 for i in range(20)}},
        {"attributes": {"blob": "x" * 4_000_000}},
        {"attributes": {1: "v"}},
        {"event_id": ""},
        {"event_id": "e" * 129},
        {"event_id": 5},
        {"occurred_at": datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))},
        {"occurred_at": datetime(2026, 1, 1, 10, 0)},
        {"occurred_at": datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))},
        {"occurred_at": "2026-01-01T00:00:00Z"},
        {"occurred_at": 1_700_000_000},
    ],
)
def test_fast_path_matches_reference(overrides: dict[str, Any]) -> None:
    _same({**BASE, **FIXED, **overrides})


def test_known_verdicts() -> None:
    assert _same({**BASE, **FIXED})[0] == "ok"
    assert _same({**BASE, **FIXED, "input_tokens": True}) == (
        "invalid",
        ("wrong_type", "input_tokens"),
    )
    assert _same({**BASE, **FIXED, "occurred_at": "2026-01-01T00:00:00Z"}) == (
        "invalid",
        ("wrong_type", "occurred_at"),
    )
    plus2 = datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    _, (data, _, _) = _same({**BASE, **FIXED, "occurred_at": plus2})
    assert b'"occurred_at":"2026-01-01T08:00:00Z"' in data  # normalised before encoding


def test_generated_ids_and_times_are_filled_in() -> None:
    event, data = build_event(**BASE)
    assert uuid.UUID(event.event_id).version == 7
    assert abs((datetime.now(UTC) - event.occurred_at).total_seconds()) < 60
    assert msgspec.json.decode(data)["event_id"] == event.event_id


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=140),
    st.sampled_from(["acme", "acme/research/agent-7", "a b", "gpt-4o", "x" * 129]),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "tenant_id",
                "model",
                "input_tokens",
                "output_tokens",
                "cached_input_tokens",
                "reasoning_tokens",
                "event_id",
                "agent_id",
                "region",
                "provider",
                "operation",
                "gpu_seconds",
                "attributes",
            ]
        ),
        _values,
        max_size=4,
    )
)
def test_fast_path_matches_reference_property(overrides: dict[str, Any]) -> None:
    if overrides.get("event_id", "") is None:
        del overrides["event_id"]  # None asks for a fresh uuid7: not comparable
    _same({**BASE, **FIXED, **overrides})


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity literals are wire-only


def _vector_kwargs(record: bytes) -> dict[str, Any] | None:
    """The vector as record() keyword arguments, or None when not expressible."""
    try:
        obj = json.loads(record, parse_constant=_no_constants)
    except ValueError:
        return None
    params = {*BASE, *FIXED, "cached_input_tokens", "reasoning_tokens", "agent_id", "region"}
    params |= {"provider", "operation", "gpu_seconds", "attributes"}
    if not isinstance(obj, dict) or not set(obj) <= params or not {*BASE, *FIXED} <= set(obj):
        return None  # envelopes, unknown or missing fields, schema_version: wire-only rules
    if obj["event_id"] is None or obj["occurred_at"] is None:
        return None  # the API fills these in
    if "occurred_at" in obj:
        try:
            obj["occurred_at"] = msgspec.json.decode(json.dumps(obj["occurred_at"]), type=datetime)
        except msgspec.ValidationError:
            return None  # timestamp syntax is a wire-only rule
    return obj


def test_golden_vectors_through_record() -> None:
    checked = 0
    for vector in iter_vectors():
        kwargs = _vector_kwargs(vector.record)
        if kwargs is None:
            continue
        verdict = _same(kwargs)
        if vector.valid:
            assert verdict[0] == "ok", vector.name
        else:
            assert verdict == ("invalid", (vector.reason, vector.field)), vector.name
        checked += 1
    assert checked >= 30  # most vectors are expressible as record() arguments


def test_uuid7_counter_carry_and_overflow_stay_ordered() -> None:
    with u7._lock:
        # Pretend the clock stepped back a second so every id counts on.
        u7._last_ms = int(datetime.now(UTC).timestamp() * 1000) + 1000
        u7._counter = (1 << 16) - 3
        u7._new_head()
    carried = [u7.uuid7() for _ in range(6)]
    with u7._lock:
        u7._counter = u7._COUNTER_MAX - 2
        u7._new_head()
    overflowed = [u7.uuid7() for _ in range(6)]
    ids = carried + overflowed
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(
        (p.version, p.variant, str(p)) == (7, uuid.RFC_4122, i)
        for p, i in zip(parsed, ids, strict=True)
    )
    ms = [p.int >> 80 for p in parsed]
    counters = [((p.int >> 64) & 0xFFF) << 30 | ((p.int >> 32) & 0x3FFFFFFF) for p in parsed]
    assert counters[:6] == list(range(counters[0], counters[0] + 6))  # carried into rand_a
    assert ms[8] == ms[0] + 1  # counter overflow advanced the timestamp


def test_uuid7_forked_child_does_not_replay_the_parent() -> None:
    u7.uuid7()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave at once
        os.close(read_fd)
        os.write(write_fd, ",".join(u7.uuid7() for _ in range(50)).encode())
        os._exit(0)
    os.close(write_fd)
    parent = {u7.uuid7() for _ in range(50)}
    with os.fdopen(read_fd, "rb") as pipe:
        child = set(pipe.read().decode().split(","))
    os.waitpid(pid, 0)
    assert len(child) == 50
    assert not parent & child


def test_uuid7_threads_unique_and_ordered() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        out[i].extend(u7.uuid7() for _ in range(70_000))  # crosses 16-bit carries

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for ids in out for x in ids]
    assert len(set(flat)) == len(flat)
    assert all(ids == sorted(ids) for ids in out)
