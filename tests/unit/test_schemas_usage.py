"""UsageEvent contract: golden vectors, codec round trips, Python-built events."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    GoldenVector,
    RejectReason,
    UsageEvent,
    decode_usage_event,
    decode_usage_record,
    encode_batch,
    encode_usage_event,
    iter_vectors,
    tenant_lineage,
    tenant_within,
    validate_event,
)
from tokenpulse.schemas import usage as usage_module
from tokenpulse.schemas.vectors import INDEX_FILE, VECTORS_DIR

VECTORS = list(iter_vectors())


def _event(**overrides: object) -> UsageEvent:
    fields: dict[str, object] = {
        "event_id": "e-1",
        "tenant_id": "acme/research",
        "occurred_at": datetime(2026, 11, 25, 8, 0, tzinfo=UTC),
        "model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 20,
    }
    fields.update(overrides)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def test_index_lists_every_vector_file() -> None:
    listed = set(json.loads(INDEX_FILE.read_text())["files"])
    on_disk = {p.name for p in VECTORS_DIR.glob("*.json")} - {"index.json"}
    assert listed == on_disk
    assert len(VECTORS) == len(listed) > 80


def test_every_reason_code_is_covered_or_processor_only() -> None:
    covered = {v.reason for v in VECTORS if v.reason}
    # Raised elsewhere: by size (tested below) and by the processors' signature check.
    processor_only = {"record_too_large", "bad_signature", "missing_signature"}
    assert covered | processor_only == {r.value for r in RejectReason}


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_golden_vector(vector: GoldenVector) -> None:
    results = decode_usage_record(vector.record)
    errors = [r for r in results if isinstance(r, InvalidRecord)]
    first = errors[0] if errors else None
    assert (not errors, first and first.reason, first and first.field) == (
        vector.valid,
        vector.reason,
        vector.field,
    ), first and first.message
    if vector.results is not None:
        got = [
            (False, r.reason, r.field) if isinstance(r, InvalidRecord) else (True, None, None)
            for r in results
        ]
        assert got == [(v.valid, v.reason, v.field) for v in vector.results]
    for event in results:
        if isinstance(event, UsageEvent):
            assert event.occurred_at.tzinfo is UTC
            # What we decode, we re-encode to something that decodes to the same event.
            assert decode_usage_event(encode_usage_event(event)) == event


def test_batch_rejections_carry_their_index() -> None:
    good = encode_usage_event(_event(event_id="a"))
    bad = good.replace(b'"input_tokens":100', b'"input_tokens":-1')
    results = decode_usage_record(b'{"batch":[' + good + b"," + bad + b"]}")
    assert isinstance(results[0], UsageEvent)
    assert isinstance(results[1], InvalidRecord)
    assert results[1].details["batch_index"] == 1


def _verdicts(results: list[UsageEvent | InvalidRecord]) -> list[object]:
    return [r if isinstance(r, UsageEvent) else (r.reason, r.field, r.details) for r in results]


@pytest.mark.parametrize(
    "tail",
    [
        b"]}",  # an SDK envelope of two events
        b'],"schema_version":1}',
        b'],"schema_version":2}',  # unsupported
        b"],",  # truncated
        b'],"event_id":"top"}',  # an event id at the top: not an envelope
    ],
)
def test_an_envelope_is_decoded_first_with_the_event_first_verdicts(
    tail: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records starting like the SDK's envelopes skip the single-event attempt
    (it parsed the whole envelope for nothing); the verdicts must not change."""
    good = encode_usage_event(_event(event_id="a"))
    bad = good.replace(b'"input_tokens":100', b'"input_tokens":-1')
    for body in (good + b"," + bad, good, b"", b'{"x":1}'):
        raw = b'{"batch":[' + body + tail
        fast = _verdicts(decode_usage_record(raw))
        monkeypatch.setattr(usage_module, "ENVELOPE_PREFIX", b"\0never")
        assert _verdicts(decode_usage_record(raw)) == fast, raw
        monkeypatch.undo()
    # An event with a "batch" field of its own first is still an event.
    event = b'{"batch":[1],' + good[1:]
    assert decode_usage_record(event) == [_event(event_id="a")]


def test_an_envelope_decoded_whole_gives_the_per_event_verdicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole envelope in one msgspec call, or each event on its own: same verdicts."""
    good = encode_usage_event(_event(event_id="a"))
    other = encode_usage_event(_event(event_id="b", tenant_id="beta/x"))
    cross = good.replace(b'"input_tokens":100', b'"input_tokens":1,"cached_input_tokens":5')
    bad_type = good.replace(b'"input_tokens":100', b'"input_tokens":"100"')
    bodies = [good + b"," + other, good, cross, good + b"," + cross, other + b"," + bad_type]

    class Never:
        def decode(self, data: bytes) -> None:
            raise msgspec.ValidationError("per event")

    for body in bodies:
        raw = b'{"batch":[' + body + b'],"schema_version":1}'
        whole = _verdicts(decode_usage_record(raw))
        monkeypatch.setattr(usage_module, "_ENVELOPE_EVENTS_DECODER", Never())
        assert _verdicts(decode_usage_record(raw)) == whole, raw
        monkeypatch.undo()
    assert _verdicts(decode_usage_record(b'{"batch":[' + cross + b"]}"))[0] == (
        "cached_exceeds_input", "cached_input_tokens", {"batch_index": 0})  # fmt: skip


def test_record_too_large() -> None:
    pad = "x" * MAX_RECORD_BYTES
    raw = encode_usage_event(_event()).replace(b"}", f',"pad":"{pad}"}}'.encode())
    [err] = decode_usage_record(raw)
    assert isinstance(err, InvalidRecord)
    assert err.reason == RejectReason.RECORD_TOO_LARGE
    with pytest.raises(InvalidRecord, match="record_too_large"):
        decode_usage_event(raw)


@pytest.mark.parametrize(
    "raw",
    [b'{"event_id":"\xff"}', b'{"event_id":"\\ud800"}', b"\x00\x01", b"{" * 5000],
    ids=["invalid-utf8", "lone-surrogate", "binary", "deep-nesting"],
)
def test_unreadable_bytes_are_malformed_json(raw: bytes) -> None:
    [err] = decode_usage_record(raw)
    assert isinstance(err, InvalidRecord)
    assert err.reason == RejectReason.MALFORMED_JSON


def test_memoryview_and_bytearray_accepted() -> None:
    raw = encode_usage_event(_event())
    assert decode_usage_record(memoryview(raw)) == decode_usage_record(bytearray(raw))


def test_offsets_normalised_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    event = validate_event(_event(occurred_at=datetime(2026, 11, 25, 10, 0, tzinfo=plus2)))
    assert event.occurred_at == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert event.occurred_at.tzinfo is UTC


def test_encoding_omits_defaults_and_round_trips() -> None:
    event = _event()
    raw = encode_usage_event(event)
    assert b"attributes" not in raw
    assert b"schema_version" not in raw
    assert b'"occurred_at":"2026-11-25T08:00:00Z"' in raw
    assert decode_usage_event(raw) == event
    assert SCHEMA_VERSION == 1


def test_encode_batch_round_trip() -> None:
    events = [_event(event_id=f"e{i}") for i in range(3)]
    assert decode_usage_record(encode_batch(events)) == events


@pytest.mark.parametrize(
    ("overrides", "reason", "field"),
    [
        ({"input_tokens": -1}, "out_of_range", "input_tokens"),
        ({"input_tokens": 1.5}, "wrong_type", "input_tokens"),
        ({"output_tokens": True}, "wrong_type", "output_tokens"),
        ({"input_tokens": 2**70}, "out_of_range", "input_tokens"),
        ({"tenant_id": ""}, "invalid_tenant_id", "tenant_id"),
        ({"tenant_id": "acme corp"}, "invalid_tenant_id", "tenant_id"),
        # msgspec's `pattern` (re.search with "$") let a trailing newline through.
        ({"tenant_id": "acme\n"}, "invalid_tenant_id", "tenant_id"),
        ({"occurred_at": datetime(2026, 11, 25, 8, 0)}, "invalid_timestamp", "occurred_at"),
        ({"cached_input_tokens": 101}, "cached_exceeds_input", "cached_input_tokens"),
        ({"gpu_seconds": math.nan}, "out_of_range", "gpu_seconds"),
        ({"gpu_seconds": math.inf}, "out_of_range", "gpu_seconds"),
        ({"attributes": {"blob": "x" * 3_000_000}}, "attributes_too_large", "attributes"),
        ({"attributes": {"k": "v" * 2000}}, "attributes_too_large", "attributes"),
        ({"attributes": {"k": object()}}, "wrong_type", "attributes"),
        ({"schema_version": 7}, "unsupported_schema_version", "schema_version"),
    ],
)
def test_validate_event_rejects(overrides: dict[str, object], reason: str, field: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        validate_event(_event(**overrides))
    assert (info.value.reason, info.value.field) == (reason, field)
    assert info.value.code == f"invalid_record.{reason}"


def test_unknown_fields_are_ignored() -> None:
    raw = encode_usage_event(_event())[:-1] + b',"new_field":{"a":[1,2]}}'
    assert decode_usage_event(raw) == _event()


def test_decoder_is_msgspec_struct() -> None:
    # The processors rely on frozen, hashable-free structs with these defaults.
    event = _event()
    assert msgspec.structs.asdict(event)["attributes"] == {}
    assert event.schema_version == 1
    assert event.reasoning_tokens == 0


def test_tenant_hierarchy_helpers() -> None:
    assert tenant_lineage("acme/research/agent-7") == [
        "acme/research/agent-7",
        "acme/research",
        "acme",
    ]
    assert tenant_within("acme/research", "acme")
    assert tenant_within("acme", "acme")
    assert not tenant_within("acmecorp", "acme")
    assert not tenant_within("acme", "acme/research")


def test_a_tenant_id_checked_once_is_still_checked_exactly() -> None:
    # Valid ids are cached (the pattern ran for every event); the cache must
    # never let an invalid id through, however often valid ones repeat.
    for _ in range(3):
        assert validate_event(_event(tenant_id="acme/research")).tenant_id == "acme/research"
        with pytest.raises(InvalidRecord) as info:
            validate_event(_event(tenant_id="acme/research\n"))
        assert info.value.reason == "invalid_tenant_id"
