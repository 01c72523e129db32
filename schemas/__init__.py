"""tokenpulse.schemas: the wire contract (records, codecs, reason codes, signing).

Reading guide: usage (UsageEvent and its codec), quota (definitions, alerts,
states), dlq (rejected records), signing (tenant authenticity), vectors (the
golden records every SDK is tested against). Imports nothing of tokenpulse but
tokenpulse.errors.
"""

from tokenpulse.schemas._reasons import RejectReason
from tokenpulse.schemas.dlq import DlqRecord, decode_dlq_record, dlq_record_for, encode_dlq_record
from tokenpulse.schemas.quota import (
    QuotaAlert,
    QuotaDefinition,
    QuotaState,
    decode_quota_alert,
    decode_quota_definition,
    decode_quota_state,
    encode_quota_alert,
    encode_quota_definition,
    encode_quota_state,
    quota_alert_id,
    quota_state_key,
)
from tokenpulse.schemas.signing import Keyring, sign_record, verify_record, verify_signature
from tokenpulse.schemas.usage import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_TOTAL_CHARS,
    MAX_RECORD_BYTES,
    MAX_TOKENS,
    SCHEMA_VERSION,
    UsageEvent,
    decode_usage_event,
    decode_usage_record,
    encode_batch,
    encode_usage_event,
    tenant_lineage,
    tenant_within,
    validate_event,
)
from tokenpulse.schemas.vectors import GoldenVector, iter_vectors

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTES_TOTAL_CHARS",
    "MAX_ATTRIBUTE_KEY_CHARS",
    "MAX_ATTRIBUTE_VALUE_CHARS",
    "MAX_RECORD_BYTES",
    "MAX_TOKENS",
    "SCHEMA_VERSION",
    "DlqRecord",
    "GoldenVector",
    "Keyring",
    "QuotaAlert",
    "QuotaDefinition",
    "QuotaState",
    "RejectReason",
    "UsageEvent",
    "decode_dlq_record",
    "decode_quota_alert",
    "decode_quota_definition",
    "decode_quota_state",
    "decode_usage_event",
    "decode_usage_record",
    "dlq_record_for",
    "encode_batch",
    "encode_dlq_record",
    "encode_quota_alert",
    "encode_quota_definition",
    "encode_quota_state",
    "encode_usage_event",
    "iter_vectors",
    "quota_alert_id",
    "quota_state_key",
    "sign_record",
    "tenant_lineage",
    "tenant_within",
    "validate_event",
    "verify_record",
    "verify_signature",
]
