"""The one exception hierarchy of tokenpulse.

    TokenpulseError                 code, retriable, details
    ├── ConfigError                 a setting is missing or malformed (not retriable)
    ├── InvalidRecord               one record breaks the contract: reject it, go on
    ├── ServiceUnavailable          Kafka or ClickHouse cannot be reached (retriable)
    ├── SinkBackpressure            the sink is full; retry after `retry_after_s`
    ├── LocalStackError             the local dev stack cannot start or stop
    └── QuotaExceeded               a tenant is over a hard limit (raised at the edge)

"Reject this record" (InvalidRecord) is kept apart from "the system failed"
(everything else): the first goes to the dead-letter topic and processing
continues, the second stops the write and leaves the offset uncommitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TokenpulseError(Exception):
    """Root of every error tokenpulse raises; `code` is stable for machines."""

    code: str = "tokenpulse_error"
    retriable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retriable: bool | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retriable is not None:
            self.retriable = retriable
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "retriable": self.retriable,
            **({"details": self.details} if self.details else {}),
        }


class ConfigError(TokenpulseError):
    code = "config_error"


class InvalidRecord(TokenpulseError):
    """A record breaks the contract. `field` names the offending field, if any."""

    code = "invalid_record"

    def __init__(
        self,
        message: str,
        *,
        reason: str = "invalid",
        field: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=f"invalid_record.{reason}", details=details)
        self.reason = reason
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["reason"] = self.reason
        if self.field is not None:
            out["field"] = self.field
        return out


class ServiceUnavailable(TokenpulseError):
    code = "service_unavailable"
    retriable = True


class SinkBackpressure(TokenpulseError):
    code = "sink_backpressure"
    retriable = True

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, details={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class LocalStackError(TokenpulseError):
    code = "local_stack_error"


class QuotaExceeded(TokenpulseError):
    code = "quota_exceeded"

    def __init__(self, message: str, *, tenant_id: str, limit_id: str) -> None:
        super().__init__(message, details={"tenant_id": tenant_id, "limit_id": limit_id})
        self.tenant_id = tenant_id
        self.limit_id = limit_id
