"""DlqRecord: what tokenpulse.usage.dlq.v1 holds for every rejected record.

The original bytes travel base64-encoded so a record that is not even UTF-8
survives the JSON envelope intact and can be replayed after a fix.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import msgspec

from tokenpulse.errors import InvalidRecord


class DlqRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One rejected record (or one rejected event of a batch, see batch_index)."""

    reason: str  # a RejectReason value
    message: str
    field: str | None
    topic: str
    partition: int
    offset: int
    original_b64: str
    received_at: datetime
    # Kafka headers of the original record: [name, base64(value)] pairs.
    headers: list[tuple[str, str]] = []
    batch_index: int | None = None

    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)

    def header_values(self) -> list[tuple[str, bytes]]:
        return [(k, base64.b64decode(v)) for k, v in self.headers]


def dlq_record_for(
    error: InvalidRecord,
    original: bytes,
    *,
    topic: str,
    partition: int,
    offset: int,
    headers: Iterable[tuple[str, bytes | None]] = (),
    received_at: datetime | None = None,
) -> DlqRecord:
    """Build the DLQ record for a rejection raised by decode/verify."""
    batch_index = error.details.get("batch_index")
    return DlqRecord(
        reason=error.reason,
        message=error.message,
        field=error.field,
        topic=topic,
        partition=partition,
        offset=offset,
        original_b64=base64.b64encode(original).decode("ascii"),
        received_at=received_at or datetime.now(UTC),
        headers=[(k, base64.b64encode(v or b"").decode("ascii")) for k, v in headers],
        batch_index=batch_index if isinstance(batch_index, int) else None,
    )


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(DlqRecord)


def encode_dlq_record(value: DlqRecord) -> bytes:
    return _ENCODER.encode(value)


def decode_dlq_record(data: bytes) -> DlqRecord:
    return _DECODER.decode(data)
