"""How large a record batch may be: the topic's max.message.bytes as the SDK learns it.

The broker refuses a record batch above the topic's max.message.bytes
(MESSAGE_TOO_LARGE) and refuses it again however often it is re-sent. The
pipeline sizes its batches by BatchLimit.batch_bytes: max_batch_bytes, capped
at the topic's limit when the broker tells it (DescribeConfigs), halved after
each refused batch of several events; an event refused alone becomes an
InvalidRecord for the DeliveryReport.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenpulse.errors import InvalidRecord
from tokenpulse.sdk._config import ProducerConfig
from tokenpulse.sdk._kafka import Headers, compression_type, one_record_batch_bytes


class BatchLimit:
    """The batch size in force, what the broker said of the topic, what it refused."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        # Bound of a record batch before compression (the builder's size, so a
        # batch on the wire is never larger). Only ever lowered: a size the
        # broker refused is not tried again while this producer lives.
        self.batch_bytes = config.max_batch_bytes
        self.topic_limit: int | None = None  # max.message.bytes, once the broker told it
        self.ask = True  # ask the broker: at the first connect, again after a refusal
        self.rejected = 0
        self.errors: list[InvalidRecord] = []  # the first buffer_max_events, one per event

    def learn(self, limit: int | None) -> bool:
        """Take the topic's limit as the broker told it; True if batches must shrink."""
        if limit is None:
            return False
        self.topic_limit = limit
        if limit >= self.batch_bytes:
            return False
        self.batch_bytes = max(limit, 1)
        return True

    def halve(self, items: Sequence[tuple[bytes, bytes, str]]) -> None:
        """A batch of these events was refused: from now on, batches of half its size."""
        size = sum(len(key) + len(value) for key, value, _ in items)
        self.batch_bytes = max(min(self.batch_bytes, size // 2), 1)
        self.ask = True  # the topic's limit may have been lowered: ask the next client

    def reject(
        self, key: bytes, value: bytes, event_id: str, headers: Headers, cause: BaseException
    ) -> InvalidRecord:
        """An event the broker refused alone in a batch: counted, kept, and explained."""
        self.rejected += 1
        self.ask = True
        c = self.config
        size = one_record_batch_bytes(key, value, headers)
        limit = self.topic_limit
        said = f"is {limit}" if limit is not None else "is unknown (DescribeConfigs gave none)"
        error = InvalidRecord(
            f"event {event_id} not delivered: the broker refused it as too large "
            f"({type(cause).__name__}); alone in a record batch it is {size} bytes before "
            f"compression ({compression_type(c) or 'none'}), and topic {c.topic}'s "
            f"max.message.bytes {said}. It is not re-sent: raise the topic's "
            "max.message.bytes or record smaller attributes.",
            reason="record_too_large",
            details={
                "event_id": event_id,
                "tenant_id": key.decode(errors="replace"),
                "topic": c.topic,
                "record_bytes": size,
                "limit_bytes": limit,
            },
        )
        # Bounded like the buffer: a limit below every event refuses them all.
        if len(self.errors) < c.buffer_max_events:
            self.errors.append(error)
        return error
