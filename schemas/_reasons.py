"""Stable reason codes for rejected records (the DLQ `reason` and InvalidRecord.reason).

These strings are part of the public contract: dashboards, alerts and the
TypeScript/Go SDK test suites match on them, so a code is never renamed.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Why a record was rejected; the value is what travels on the wire."""

    MALFORMED_JSON = "malformed_json"  # not parseable JSON (also NaN/Infinity tokens, bad UTF-8)
    NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not a JSON object
    MISSING_FIELD = "missing_field"  # a required field is absent
    WRONG_TYPE = "wrong_type"  # a field has the wrong JSON type (e.g. 1.5 or true for tokens)
    OUT_OF_RANGE = "out_of_range"  # a number outside its bounds or a string of bad length
    INVALID_TENANT_ID = "invalid_tenant_id"  # tenant_id empty, too long, or bad characters
    INVALID_TIMESTAMP = "invalid_timestamp"  # occurred_at not RFC 3339 with an offset
    CACHED_EXCEEDS_INPUT = "cached_exceeds_input"  # cached_input_tokens > input_tokens
    REASONING_EXCEEDS_OUTPUT = "reasoning_exceeds_output"  # reasoning_tokens > output_tokens
    ATTRIBUTES_TOO_LARGE = "attributes_too_large"  # over the attribute count/size limits
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"  # schema_version we cannot read
    RECORD_TOO_LARGE = "record_too_large"  # the raw record exceeds MAX_RECORD_BYTES
    EMPTY_BATCH = "empty_batch"  # a batch envelope with no events
    BAD_SIGNATURE = "bad_signature"  # tp-sig present but wrong, unknown key, or foreign tenant
    MISSING_SIGNATURE = "missing_signature"  # signing required and no tp-sig header
