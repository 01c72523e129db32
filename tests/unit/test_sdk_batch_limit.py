"""Batches above the topic's max.message.bytes: halved until they fit; an event too large, reported.

A fake broker refuses every record batch larger than its limit, the way
Kafka answers MESSAGE_TOO_LARGE; the pipeline, its batching and its
accounting are the real ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatch

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import decode_usage_record
from tokenpulse.sdk import ProducerConfig, _kafka, _pipeline
from tokenpulse.sdk._limit import BatchLimit
from tokenpulse.sdk._pipeline import Item, Pipeline
from tokenpulse.sdk._record import build_event


class Broker:
    """What the fake clients hand over: refused and accepted batches, event ids delivered."""

    def __init__(self, limit: int, *, tells_limit: bool) -> None:
        self.limit = limit
        self.tells_limit = tells_limit
        self.refused = 0
        self.accepted_sizes: list[int] = []
        self.delivered: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.clients = 0


class FakeClient(AIOKafkaProducer):  # type: ignore[misc]
    """A real client's batch builder (uncompressed); sends answered by `broker`."""

    def __init__(self, broker: Broker, max_batch_bytes: int) -> None:
        super().__init__(bootstrap_servers="127.0.0.1:1", max_batch_size=max_batch_bytes)
        self.broker = broker
        broker.clients += 1

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._closed = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        data = bytes(batch._build())
        ids = [
            event.event_id
            for record in DefaultRecordBatch(data)
            for event in decode_usage_record(record.value)
            if not isinstance(event, InvalidRecord)
        ]
        self.broker.attempts.update(ids)
        future = asyncio.get_running_loop().create_future()
        if len(data) > self.broker.limit:
            self.broker.refused += 1
            future.set_exception(MessageSizeTooLargeError())
        else:
            self.broker.accepted_sizes.append(len(data))
            self.broker.delivered.update(ids)
            future.set_result(None)
        return future


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    the_broker = Broker(4096, tells_limit=False)
    clients: list[FakeClient] = []

    def new_producer(config: ProducerConfig, max_batch_bytes: int) -> FakeClient:
        clients.append(FakeClient(the_broker, max_batch_bytes))
        return clients[-1]

    async def limit(producer: Any, topic: str, timeout_s: float) -> int | None:
        return the_broker.limit if the_broker.tells_limit else None

    monkeypatch.setattr(_pipeline, "new_producer", new_producer)
    monkeypatch.setattr(_pipeline, "topic_max_message_bytes", limit)
    yield the_broker
    for client in clients:
        client._closed = True  # never started: nothing to close


def _event(i: int, attribute_chars: int = 150) -> Item:
    event, value = build_event(
        tenant_id=f"tenant-{i % 7}",
        model="gpt-4o",
        input_tokens=i,
        output_tokens=1,
        attributes={"note": "v" * attribute_chars},
    )
    return event.tenant_id.encode(), value, event.event_id


async def _run(config: ProducerConfig, items: list[Item]) -> Pipeline:
    pipe = Pipeline(config)
    pipe.start(notify_threadsafe=False)
    for item in items:
        assert pipe.put(*item)
    assert await pipe.drain(10.0), "everything settled: delivered or given up"
    return pipe


def _config(**overrides: Any) -> ProducerConfig:
    return ProducerConfig(
        bootstrap_servers="127.0.0.1:1",
        max_batch_bytes=1024 * 1024,
        compression="none",
        retry_backoff_ms=1,
        **overrides,
    )


@pytest.mark.parametrize("envelope", [False, True], ids=["per-event", "envelope"])
async def test_refused_batches_are_halved_until_every_event_fits(
    broker: Broker, envelope: bool
) -> None:
    items = [_event(i) for i in range(600)]
    pipe = await _run(_config(envelope=envelope), items)
    stats = pipe.stats()
    assert broker.delivered == Counter(eid for _, _, eid in items)
    assert (stats.sent, stats.rejected, stats.queue_depth) == (600, 0, 0)
    assert broker.refused > 0
    assert stats.failed > 0
    # Halving stops near the limit instead of running down to one event a batch.
    assert broker.limit // 4 <= pipe._limit.batch_bytes <= broker.limit
    assert max(broker.accepted_sizes) > broker.limit // 2
    assert pipe._backoff_s == 0, "a refusal is no broker trouble: no back-off"
    report = await pipe.close(1.0)
    assert report.ok
    assert report.errors == ()


async def test_a_known_topic_limit_caps_the_batches_before_the_first_send(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    broker.tells_limit = True
    items = [_event(i) for i in range(600)]
    with caplog.at_level(logging.WARNING, logger="tokenpulse.sdk"):
        pipe = await _run(_config(), items)
    stats = pipe.stats()
    assert (stats.sent, stats.failed, stats.rejected) == (600, 0, 0)
    assert broker.refused == 0
    assert pipe._limit.batch_bytes == broker.limit
    assert [r.getMessage() for r in caplog.records] == [
        "max_batch_bytes=1048576 is above topic tokenpulse.usage.v1's max.message.bytes=4096: "
        "record batches are capped at 4096 bytes"
    ]
    await pipe.close(1.0)


async def test_a_topic_limit_above_max_batch_bytes_changes_nothing(broker: Broker) -> None:
    broker.tells_limit = True
    broker.limit = 2 * 1024 * 1024
    pipe = await _run(_config(), [_event(i) for i in range(100)])
    assert pipe._limit.batch_bytes == 1024 * 1024
    assert broker.clients == 1
    await pipe.close(1.0)


@pytest.mark.parametrize("tells_limit", [True, False], ids=["limit-known", "limit-unknown"])
@pytest.mark.parametrize("envelope", [False, True], ids=["per-event", "envelope"])
async def test_an_event_too_large_alone_is_reported_and_never_re_sent(
    broker: Broker, tells_limit: bool, envelope: bool, caplog: pytest.LogCaptureFixture
) -> None:
    broker.tells_limit = tells_limit
    broker.limit = 1024
    small = [_event(i) for i in range(300)]
    big = _event(300, attribute_chars=1000)
    with caplog.at_level(logging.ERROR, logger="tokenpulse.sdk"):
        pipe = await _run(_config(envelope=envelope), [*small[:150], big, *small[150:]])
    stats = pipe.stats()
    assert broker.delivered == Counter(eid for _, _, eid in small)
    assert (stats.sent, stats.rejected, stats.queue_depth) == (300, 1, 0)
    if tells_limit:  # capped from the start: it was alone in its batch at once
        assert broker.attempts[big[2]] == 1
    report = await pipe.close(1.0)
    assert (report.undelivered_count, report.undelivered_event_ids) == (1, (big[2],))
    assert (report.sent, report.ok) == (300, False)
    (error,) = report.errors
    assert isinstance(error, InvalidRecord)
    assert (error.code, error.reason, error.retriable) == (
        "invalid_record.record_too_large",
        "record_too_large",
        False,
    )
    assert error.details["event_id"] == big[2]
    assert error.details["tenant_id"] == "tenant-6"
    assert error.details["topic"] == "tokenpulse.usage.v1"
    assert error.details["record_bytes"] > 1024
    assert error.details["limit_bytes"] == (1024 if tells_limit else None)
    assert f"{error.details['record_bytes']} bytes" in error.message
    assert ("max.message.bytes is 1024" if tells_limit else "is unknown") in error.message
    assert [r.getMessage() for r in caplog.records] == [error.message]


async def test_the_report_keeps_at_most_buffer_max_events_errors_but_counts_all(
    broker: Broker,
) -> None:
    broker.tells_limit = True
    broker.limit = 100  # no event fits
    pipe = Pipeline(_config(buffer_max_events=2))
    pipe.start(notify_threadsafe=False)
    ids = []
    for i in range(5):
        item = _event(i)
        ids.append(item[2])
        assert pipe.put(*item)
        assert await pipe.drain(5.0)
    report = await pipe.close(1.0)
    assert pipe.stats().rejected == report.undelivered_count == 5
    assert report.undelivered_event_ids == tuple(ids[:2])
    assert len(report.errors) == 2


def test_the_batch_size_is_only_ever_lowered() -> None:
    limit = BatchLimit(ProducerConfig(max_batch_bytes=100_000))
    assert not limit.learn(None)  # not told: nothing changes
    assert (limit.batch_bytes, limit.topic_limit) == (100_000, None)
    assert not limit.learn(1_048_588)  # Kafka's default: above max_batch_bytes
    assert (limit.batch_bytes, limit.topic_limit) == (100_000, 1_048_588)
    assert limit.learn(65_536)
    assert limit.batch_bytes == 65_536
    limit.ask = False
    limit.halve([(b"k" * 10, b"v" * 9_990, "e1"), (b"k" * 10, b"v" * 29_990, "e2")])
    assert (limit.batch_bytes, limit.ask) == (20_000, True)  # half the refused batch
    assert not limit.learn(65_536), "a size the broker refused is not tried again"
    assert limit.batch_bytes == 20_000
    limit.halve([(b"k", b"", "e3")])
    assert limit.batch_bytes == 1  # never 0: the builder still takes one record


class Answering:
    """producer.client for topic_max_message_bytes: one canned DescribeConfigs answer."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def get_random_node(self) -> int:
        return 1

    async def send(self, node: int, request: Any) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer == "hang":
            await asyncio.sleep(10)
        return self.answer


class Response:
    def __init__(self, *resources: Any) -> None:
        self.resources = list(resources)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Response((0, "", 2, "t", [("max.message.bytes", "65536", False, 1, False, [])])), 65536),
        (Response((0, "", 2, "t", [("max.message.bytes", "1048588", False, 5, False)])), 1048588),
        (Response((29, "not authorized", 2, "t", [])), None),  # TOPIC_AUTHORIZATION_FAILED
        (Response((3, "", 2, "t", [])), None),  # UNKNOWN_TOPIC_OR_PARTITION: not created yet
        (Response((0, "", 2, "other", [("max.message.bytes", "1", False, 1, False, [])])), None),
        (ConnectionError("gone"), None),
        ("hang", None),
    ],
    ids=["v1", "v0", "denied", "no-topic", "other-topic", "error", "timeout"],
)
async def test_the_topic_limit_is_read_from_describe_configs_or_unknown(
    answer: Any, expected: int | None
) -> None:
    class Producer:
        client = Answering(answer)

    assert await _kafka.topic_max_message_bytes(Producer(), "t", timeout_s=0.05) == expected
