"""send_batched: record batches per partition, in order; what failed comes back in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from tokenpulse.sdk._kafka import KeyHashCache, send_batched


class Recording(AIOKafkaProducer):  # type: ignore[misc]
    """A real client's batch builder; partitions and sends answered here."""

    def __init__(self, *, fail_at: int | None = None) -> None:
        super().__init__(bootstrap_servers="127.0.0.1:1", max_batch_size=1024)
        self.sent: list[tuple[int, Any]] = []
        self.fail_at = fail_at

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        if len(self.sent) == self.fail_at:
            raise KafkaTimeoutError()
        self.sent.append((partition, batch))
        return asyncio.get_running_loop().create_future()


def _units(n: int) -> list[tuple[bytes, bytes, list[str]]]:
    return [(f"tenant-{i % 5}".encode(), b"x" * 300, [f"e{i}"]) for i in range(n)]


@pytest.fixture
async def producer() -> AsyncIterator[Any]:
    p = Recording()  # aiokafka wants a running loop for its constructor
    yield p
    p._closed = True  # never started: nothing to close


async def test_units_go_in_order_to_their_key_partition_in_batches(producer: Any) -> None:
    units = _units(40)
    partitioner = KeyHashCache()
    handed = await send_batched(
        producer, "t", units, partitioner=partitioner, headers_for=lambda v: None
    )
    assert handed.error is None
    assert handed.unsent == []
    assert len(handed.futures) == len(producer.sent) == len(handed.carried)
    assert len(producer.sent) > 3, "1 KiB batches of 300-byte records: several per partition"
    where = {f"e{i}": partitioner(k, [0, 1, 2], [0, 1, 2]) for i, (k, _, _) in enumerate(units)}
    seen: list[str] = []
    for (partition, batch), carried in zip(producer.sent, handed.carried, strict=True):
        assert batch.record_count() == len(carried)
        assert {where[e] for e in carried} == {partition}
        seen += carried
    assert sorted(seen) == sorted(where)
    for partition in (0, 1, 2):  # per partition, the original order
        ids = [e for e in seen if where[e] == partition]
        assert ids == sorted(ids, key=lambda e: int(e[1:]))


async def test_a_failed_hand_over_returns_it_and_everything_after(producer: Any) -> None:
    producer.fail_at = 2
    whole = Recording()
    first = await send_batched(
        whole, "t", _units(40), partitioner=KeyHashCache(), headers_for=lambda v: None
    )
    whole._closed = True
    handed = await send_batched(
        producer, "t", _units(40), partitioner=KeyHashCache(), headers_for=lambda v: None
    )
    assert isinstance(handed.error, KafkaTimeoutError)
    assert handed.carried == first.carried[:2]
    assert handed.unsent == [e for c in first.carried[2:] for e in c]


async def test_no_metadata_returns_the_whole_chunk(producer: Any) -> None:
    async def unknown(topic: str) -> set[int]:
        raise KafkaTimeoutError()

    producer.partitions_for = unknown
    handed = await send_batched(
        producer, "t", _units(3), partitioner=KeyHashCache(), headers_for=lambda v: None
    )
    assert handed.unsent == ["e0", "e1", "e2"]
    assert handed.futures == []
