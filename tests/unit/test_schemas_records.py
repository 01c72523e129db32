"""Quota, alert, state and DLQ records; the JSON Schema files against the vectors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import (
    GoldenVector,
    QuotaAlert,
    QuotaDefinition,
    QuotaState,
    decode_dlq_record,
    decode_quota_alert,
    decode_quota_definition,
    decode_quota_state,
    decode_usage_record,
    dlq_record_for,
    encode_dlq_record,
    encode_quota_alert,
    encode_quota_definition,
    encode_quota_state,
    iter_vectors,
    quota_alert_id,
    quota_state_key,
)
from tokenpulse.schemas.vectors import VECTORS_DIR

JSON_DIR = VECTORS_DIR.parent / "json"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _schema(name: str) -> jsonschema.protocols.Validator:
    registry_docs = {p.name: json.loads(p.read_text()) for p in JSON_DIR.glob("*.json")}
    from referencing import Registry, Resource

    registry: Registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in registry_docs.values()
    )
    schema = registry_docs[name]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry)


def test_quota_definition_round_trip_tokens_and_cost() -> None:
    tokens = QuotaDefinition(
        quota_id="q1", tenant_id="acme", metric="total", period="day", limit=1_000_000, hard=True
    )
    assert decode_quota_definition(encode_quota_definition(tokens)) == tokens
    assert tokens.thresholds_pct == (50, 80, 100)
    cost = QuotaDefinition(
        quota_id="q2",
        tenant_id="acme/research",
        metric="cost",
        period="month",
        limit=Decimal("1250.50"),
        currency="USD",
        model="gpt-4o",
        timezone="Europe/Berlin",
    )
    raw = encode_quota_definition(cost)
    assert b'"limit":"1250.50"' in raw
    assert decode_quota_definition(raw) == cost
    for doc in (tokens, cost):
        _schema("quota_definition.v1.schema.json").validate(
            json.loads(encode_quota_definition(doc))
        )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"quota_id":"q","tenant_id":"a","metric":"cost","period":"day","limit":5}',
        b'{"quota_id":"q","tenant_id":"a","metric":"total","period":"day","limit":"5.5"}',
        b'{"quota_id":"q","tenant_id":"a","metric":"total","period":"week","limit":5}',
        b'{"quota_id":"q","tenant_id":"a b","metric":"total","period":"day","limit":5}',
        b'{"quota_id":"q"',
    ],
)
def test_quota_definition_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidRecord):
        decode_quota_definition(raw)


def test_alert_id_is_deterministic_and_distinct() -> None:
    a = quota_alert_id("acme", "q1", T0, 80, 1000)
    assert a == quota_alert_id("acme", "q1", T0, 80, 1000)
    others = {
        quota_alert_id("acme", "q1", T0, 100, 1000),
        quota_alert_id("acme", "q2", T0, 80, 1000),
        quota_alert_id("acme", "q1", T0, 80, 2000),  # a raised limit is a new crossing
    }
    assert len({a, *others}) == 4
    alert = QuotaAlert(
        alert_id=a,
        tenant_id="acme",
        quota_id="q1",
        period_start=T0,
        threshold_pct=80,
        used=800,
        limit=1000,
        crossed_at=T0,
        event_id="e1",
    )
    raw = encode_quota_alert(alert)
    assert decode_quota_alert(raw) == alert
    _schema("quota_alert.v1.schema.json").validate(json.loads(raw))


def test_quota_state_round_trip_and_key() -> None:
    state = QuotaState(
        tenant_id="acme",
        quota_id="q1",
        status="exceeded",
        used=Decimal("10.5"),
        limit=Decimal("10"),
        period_start=T0,
        period_end=T0,
        updated_at=T0,
        hard=True,
    )
    raw = encode_quota_state(state)
    assert decode_quota_state(raw) == state
    _schema("quota_state.v1.schema.json").validate(json.loads(raw))
    assert quota_state_key("acme/x", "q1") == b"acme/x|q1"


def test_dlq_record_keeps_original_bytes_and_headers() -> None:
    original = b'{"event_id":"\xff broken'
    [err] = decode_usage_record(original)
    assert isinstance(err, InvalidRecord)
    rec = dlq_record_for(
        err, original, topic="tokenpulse.usage.v1", partition=2, offset=41, headers=[("h", b"\x00")]
    )
    back = decode_dlq_record(encode_dlq_record(rec))
    assert back == rec
    assert back.original() == original
    assert back.header_values() == [("h", b"\x00")]
    assert (back.reason, back.field, back.batch_index) == ("malformed_json", None, None)
    _schema("dlq_record.v1.schema.json").validate(json.loads(encode_dlq_record(rec)))


# Where JSON Schema and the decoder legitimately disagree: rules JSON Schema
# cannot state (cross-field, totals), and JSON Schema's own number model
# (12.0 and 1e3 are integers there; it parses NaN/huge numbers as Python does).
SCHEMA_BLIND = {
    "float_integral_input_tokens",
    "exponent_input_tokens",
    "cached_exceeds_input",
    "reasoning_exceeds_output",
    "attributes_total_too_large",
    "timestamp_before_utc_year_1",
    "timestamp_month_13",
    "gpu_seconds_overflow_1e400",
}


SCHEMA_VECTORS = [
    v for v in iter_vectors() if v.reason != "malformed_json" and v.name not in SCHEMA_BLIND
]


@pytest.mark.parametrize("vector", SCHEMA_VECTORS, ids=[v.name for v in SCHEMA_VECTORS])
def test_json_schema_agrees_with_vectors(vector: GoldenVector) -> None:
    doc = json.loads(vector.record)
    is_batch = isinstance(doc, dict) and "batch" in doc and "event_id" not in doc
    name = "usage_batch.v1.schema.json" if is_batch else "usage_event.v1.schema.json"
    errors = list(_schema(name).iter_errors(doc))
    assert (not errors) == vector.valid, [e.message for e in errors]


def test_json_schema_files_are_draft_2020_12() -> None:
    for path in JSON_DIR.glob("*.json"):
        doc = json.loads(Path(path).read_text())
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(doc)
