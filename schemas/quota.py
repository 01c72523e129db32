"""Quota definitions, alerts and states: the records of the quota topics.

tokenpulse.quotas.v1 (compacted, key quota_state_key(tenant_id, quota_id))
holds QuotaDefinition; tokenpulse.quota.alerts.v1 holds QuotaAlert (key
tenant_id); tokenpulse.quota.state.v1 (compacted, same key as definitions)
holds QuotaState, which SDKs and gateways follow to block at the edge.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, Literal, TypeVar

import msgspec
from msgspec import Meta

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas._reasons import RejectReason
from tokenpulse.schemas.usage import MAX_ID_CHARS, TENANT_ID_PATTERN_PY

QuotaMetric = Literal["input", "output", "total", "cost"]
QuotaPeriod = Literal["minute", "hour", "day", "month"]
# unknown: a cost quota whose usage could not be priced at all (reason says why);
# priced_partial: some of the period's usage has no price, `used` counts only the
# priced part, so the real spend is higher. Neither blocks at the edge.
QuotaStatus = Literal["ok", "warning", "exceeded", "unknown", "priced_partial"]
# Token limits are integers; cost limits are exact decimals carried as JSON strings.
Amount = int | Decimal

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
_TenantId = Annotated[
    str, Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=TENANT_ID_PATTERN_PY)
]
_T = TypeVar("_T")
_Pct = Annotated[int, Meta(ge=1, le=1000)]


class QuotaDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """A limit on a tenant subtree (tenant_id `acme` covers `acme/research/...`).

    metric=cost takes a Decimal limit and a currency; token metrics an int.
    hard=True means the edge (SDK QuotaGuard, gateways) blocks once exceeded;
    soft quotas only alert. period boundaries are computed in `timezone`.
    """

    quota_id: _Id
    tenant_id: _TenantId
    metric: QuotaMetric
    period: QuotaPeriod
    limit: Amount
    model: str | None = None  # None: all models
    timezone: str = "UTC"
    currency: str | None = None  # required for metric=cost, e.g. "USD"
    thresholds_pct: tuple[_Pct, ...] = (50, 80, 100)
    hard: bool = False

    def __post_init__(self) -> None:
        if self.metric == "cost":
            if not isinstance(self.limit, Decimal) or self.currency is None:
                raise ValueError("a cost quota needs a decimal-string limit and a currency")
        elif not isinstance(self.limit, int):
            raise ValueError(f"a {self.metric} token quota needs an integer limit")
        if self.limit < 0:
            raise ValueError("limit must be >= 0")


class QuotaAlert(msgspec.Struct, frozen=True, kw_only=True):
    """One threshold crossing; alert_id makes re-emission after a replay idempotent."""

    alert_id: str
    tenant_id: str
    quota_id: str
    period_start: datetime
    threshold_pct: int
    used: Amount
    limit: Amount
    crossed_at: datetime
    event_id: str  # the event whose usage crossed the threshold
    hard: bool = False


class QuotaState(msgspec.Struct, frozen=True, kw_only=True):
    """The current standing of one quota for one tenant (latest wins: compacted)."""

    tenant_id: str
    quota_id: str
    status: QuotaStatus
    used: Amount
    limit: Amount
    period_start: datetime
    period_end: datetime
    updated_at: datetime
    hard: bool = False
    model: str | None = None  # copied from the definition: blocks only that model
    reason: str | None = None  # why the status is unknown/priced_partial


def quota_alert_id(
    tenant_id: str, quota_id: str, period_start: datetime, threshold_pct: int, limit: Amount
) -> str:
    """Deterministic alert id: the same crossing always gets the same id.

    The limit is part of the crossing: after a limit raise in the same
    period, crossing a threshold again is a new alert (consumers that dedupe
    by alert_id must not drop it). Equal limits hash alike whatever their
    spelling (100, Decimal("100.00")), so replays keep the id.
    """
    material = "\x1f".join(
        (tenant_id, quota_id, period_start.isoformat(), str(threshold_pct), _canonical(limit))
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _canonical(amount: Amount) -> str:
    if isinstance(amount, Decimal):
        # normalize() drops trailing zeros; "f" avoids exponents (1E+2 -> "100").
        return format(amount.normalize(), "f")
    return str(amount)


def quota_state_key(tenant_id: str, quota_id: str) -> bytes:
    """Kafka key for the compacted quota topics ('|' never occurs in a tenant_id)."""
    return f"{tenant_id}|{quota_id}".encode()


_ENCODER: Final = msgspec.json.Encoder()
_DEF_DECODER: Final = msgspec.json.Decoder(QuotaDefinition)
_ALERT_DECODER: Final = msgspec.json.Decoder(QuotaAlert)
_STATE_DECODER: Final = msgspec.json.Decoder(QuotaState)


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes, what: str) -> _T:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidRecord(f"invalid {what}: {exc}", reason=str(RejectReason.WRONG_TYPE)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRecord(
            f"invalid {what}: {exc}", reason=str(RejectReason.MALFORMED_JSON)
        ) from None


def encode_quota_definition(value: QuotaDefinition) -> bytes:
    return _ENCODER.encode(value)


def decode_quota_definition(data: bytes) -> QuotaDefinition:
    return _decode(_DEF_DECODER, data, "quota definition")


def encode_quota_alert(value: QuotaAlert) -> bytes:
    return _ENCODER.encode(value)


def decode_quota_alert(data: bytes) -> QuotaAlert:
    return _decode(_ALERT_DECODER, data, "quota alert")


def encode_quota_state(value: QuotaState) -> bytes:
    return _ENCODER.encode(value)


def decode_quota_state(data: bytes) -> QuotaState:
    return _decode(_STATE_DECODER, data, "quota state")
