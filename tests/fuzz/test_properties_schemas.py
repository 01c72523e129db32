"""Properties of the UsageEvent codec: round trips, arbitrary bytes, targeted mutations."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone

import msgspec
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import (
    MAX_TOKENS,
    RejectReason,
    UsageEvent,
    decode_usage_record,
    encode_batch,
    encode_usage_event,
)

PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
REASONS = {str(r) for r in RejectReason}
TENANT_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-"
REQUIRED = ("event_id", "tenant_id", "occurred_at", "model", "input_tokens", "output_tokens")

_ids = st.text(min_size=1, max_size=128)
_opt = st.none() | st.text(max_size=128)
_tokens = st.integers(0, MAX_TOKENS)
_when = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone.min]),
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))


@st.composite
def events(draw: st.DrawFn) -> UsageEvent:
    inp = draw(_tokens)
    out = draw(_tokens)
    return UsageEvent(
        event_id=draw(_ids),
        tenant_id=draw(st.text(TENANT_ALPHABET, min_size=1, max_size=128)),
        occurred_at=draw(_when),
        model=draw(_ids),
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=draw(st.integers(0, inp)),
        reasoning_tokens=draw(st.integers(0, out)),
        agent_id=draw(_opt),
        region=draw(_opt),
        provider=draw(_opt),
        operation=draw(_opt),
        gpu_seconds=draw(st.none() | st.floats(0, 1e12, allow_nan=False, allow_infinity=False)),
        attributes=draw(st.dictionaries(st.text(max_size=16), st.text(max_size=32), max_size=8)),
    )


@given(events())
@PROFILE
def test_any_valid_event_encodes_and_decodes_to_itself(ev: UsageEvent) -> None:
    (back,) = decode_usage_record(encode_usage_event(ev))
    assert back == ev
    assert back.occurred_at.tzinfo is UTC


@given(st.lists(events(), min_size=1, max_size=5))
@PROFILE
def test_any_batch_decodes_to_its_events_in_order(evs: list[UsageEvent]) -> None:
    assert decode_usage_record(encode_batch(evs)) == evs


def _check_verdicts(data: bytes) -> None:
    verdicts = decode_usage_record(data)  # must never raise
    assert verdicts
    for v in verdicts:
        assert isinstance(v, UsageEvent | InvalidRecord)
        if isinstance(v, InvalidRecord):
            assert v.reason in REASONS, v.reason


@given(st.binary(max_size=512))
@PROFILE
def test_arbitrary_bytes_yield_verdicts_with_known_reasons(data: bytes) -> None:
    _check_verdicts(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(events(), st.sampled_from(REQUIRED), _json)
@PROFILE
def test_json_shaped_garbage_in_any_field_is_a_known_verdict(
    ev: UsageEvent, name: str, value: object
) -> None:
    obj = msgspec.json.decode(encode_usage_event(ev))
    obj[name] = value
    _check_verdicts(msgspec.json.encode(obj))
    _check_verdicts(msgspec.json.encode({"batch": [obj, value]}))


def _obj(ev: UsageEvent) -> dict[str, object]:
    out: dict[str, object] = msgspec.json.decode(encode_usage_event(ev))
    return out


def _only_rejection(data: bytes) -> InvalidRecord:
    (verdict,) = decode_usage_record(data)
    assert isinstance(verdict, InvalidRecord), verdict
    return verdict


@given(events(), st.sampled_from(REQUIRED))
@PROFILE
def test_dropping_a_required_field_is_missing_field(ev: UsageEvent, name: str) -> None:
    obj = _obj(ev)
    del obj[name]
    err = _only_rejection(msgspec.json.encode(obj))
    assert (err.reason, err.field) == (RejectReason.MISSING_FIELD, name)


@given(
    events(),
    st.sampled_from(["input_tokens", "output_tokens", "cached_input_tokens"]),
    st.integers(1, 10**12),
)
@PROFILE
def test_a_negative_token_count_is_out_of_range(ev: UsageEvent, name: str, n: int) -> None:
    obj = _obj(ev)
    obj[name] = -n
    err = _only_rejection(msgspec.json.encode(obj))
    assert (err.reason, err.field) == (RejectReason.OUT_OF_RANGE, name)


@given(events())
@PROFILE
def test_a_timestamp_without_its_offset_is_invalid_timestamp(ev: UsageEvent) -> None:
    obj = _obj(ev)
    text = str(obj["occurred_at"])
    assert text.endswith("Z")
    obj["occurred_at"] = text[:-1]
    err = _only_rejection(msgspec.json.encode(obj))
    assert (err.reason, err.field) == (RejectReason.INVALID_TIMESTAMP, "occurred_at")


@given(events(), st.integers(1, 10**6))
@PROFILE
def test_cached_above_input_is_cached_exceeds_input(ev: UsageEvent, extra: int) -> None:
    obj = _obj(ev)
    assume(ev.input_tokens + extra <= MAX_TOKENS)  # beyond it: out_of_range, covered above
    obj["cached_input_tokens"] = ev.input_tokens + extra
    err = _only_rejection(msgspec.json.encode(obj))
    assert (err.reason, err.field) == (RejectReason.CACHED_EXCEEDS_INPUT, "cached_input_tokens")


@given(
    st.lists(
        st.datetimes(min_value=datetime(1, 1, 1), timezones=st.just(UTC)), min_size=1, max_size=20
    )
)
@PROFILE
def test_utc_datetimes_are_spelt_by_msgspec_as_by_orjson(values: list[datetime]) -> None:
    # The sink writes all-UTC timestamp columns with msgspec, the rest with
    # orjson (sinks/_encode.py): one spelling, whichever wrote it.
    import orjson

    from tokenpulse.sinks._encode import _MSGSPEC, _OPTIONS

    assert _MSGSPEC.encode(values) == orjson.dumps(values, option=_OPTIONS)
