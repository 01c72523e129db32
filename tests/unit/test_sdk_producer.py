"""SDK producers without a broker: surface, validation, overflow, close accounting."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import tokenpulse.sdk
from tokenpulse.config import TOPIC_QUOTA_STATE, TOPIC_USAGE
from tokenpulse.errors import ConfigError, InvalidRecord, ServiceUnavailable
from tokenpulse.schemas import decode_usage_event
from tokenpulse.sdk import ProducerConfig, SyncUsageProducer, UsageProducer
from tokenpulse.sdk._config import TOPIC_QUOTA_STATE as SDK_QUOTA_TOPIC
from tokenpulse.sdk._config import TOPIC_USAGE as SDK_TOPIC
from tokenpulse.sdk._kafka import compression_type, fast_lz4
from tokenpulse.sdk._pipeline import Pipeline


def _dead_bootstrap() -> str:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


GOOD: dict[str, Any] = {
    "tenant_id": "acme/research",
    "model": "gpt-4o",
    "input_tokens": 1200,
    "output_tokens": 300,
}


def test_public_surface_is_pinned() -> None:
    assert sorted(tokenpulse.sdk.__all__) == [
        "DeliveryReport",
        "ProducerConfig",
        "ProducerStats",
        "QuotaGuard",
        "SyncUsageProducer",
        "Usage",
        "UsageProducer",
        "usage_from_anthropic",
        "usage_from_dict",
        "usage_from_openai",
        "uuid7",
    ]


def test_topics_match_the_project_constants() -> None:
    assert (SDK_TOPIC, SDK_QUOTA_TOPIC) == (TOPIC_USAGE, TOPIC_QUOTA_STATE)


def test_config_from_env_and_secrets_hidden() -> None:
    cfg = ProducerConfig.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "agent",
            "KAFKA_SASL_PASSWORD": "hunter2",
            "TOKENPULSE_SDK_LINGER_MS": "20",
            "TOKENPULSE_SDK_OVERFLOW_POLICY": "drop",
            "TOKENPULSE_SDK_ENVELOPE": "true",
            "TOKENPULSE_SIGNING_TENANT": "acme",
            "TOKENPULSE_SIGNING_KEY_ID": "k1",
            "TOKENPULSE_SIGNING_SECRET": "hex:736563726574",
        }
    )
    assert cfg.bootstrap_servers == "k1:9092,k2:9092"
    assert (cfg.linger_ms, cfg.overflow_policy, cfg.envelope) == (20, "drop", True)
    assert cfg.signing_secret == b"secret"
    assert cfg.kafka_security_kwargs()["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(cfg)
    assert "secret" not in repr(cfg).replace("signing_", "")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overflow_policy": "spill"},
        {"compression": "brotli"},
        {"buffer_max_events": 0},
        {"signing_key_id": "k1"},
    ],
)
def test_config_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ProducerConfig(**kwargs)
    with pytest.raises(ConfigError):
        ProducerConfig.from_env({"TOKENPULSE_SDK_LINGER_MS": "soon"})


def test_compression_falls_back_to_what_aiokafka_has() -> None:
    assert compression_type(ProducerConfig(compression="none")) is None
    assert compression_type(ProducerConfig()) in ("lz4", "zstd", "gzip")


def test_lz4_batches_are_compressed_fast_not_at_aiokafkas_hc_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The record batch builder (aiokafka's C extension) is what the producer
    # runs: its lz4 output must be level 1's, and still read back by Kafka's codec.
    from aiokafka import codec
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    # aiokafka's own default, whatever producers earlier tests started.
    monkeypatch.setattr(codec.lz4_encode, "__defaults__", (9,))

    def batch() -> bytes:
        builder = DefaultRecordBatchBuilder(2, 3, 0, -1, -1, 0, 1 << 20)  # 3: lz4
        for n in range(2_000):
            value = f'{{"event_id":"e-{n}","tenant_id":"t/{n % 100}","input_tokens":{n}}}'
            builder.append(n, timestamp=0, key=None, value=value.encode(), headers=[])
        return bytes(builder.build())

    hc = batch()
    fast_lz4()
    fast_lz4()  # idempotent
    fast = batch()
    assert len(fast) > len(hc)  # level 1: a little larger than HC
    header = 61  # a v2 record batch header; the records follow, compressed
    assert codec.lz4_decode(fast[header:]) == codec.lz4_decode(hc[header:])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": 2.5}, "output_tokens"),
        ({"input_tokens": "12"}, "input_tokens"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "acme corp"}, "tenant_id"),
        ({"occurred_at": datetime(2026, 11, 25, 8, 0)}, "occurred_at"),
        ({"cached_input_tokens": 1201}, "cached_input_tokens"),
        ({"reasoning_tokens": 301}, "reasoning_tokens"),
        ({"attributes": {"blob": "x" * 4_000_000}}, "attributes"),
        ({"attributes": {"n": 5}}, "attributes"),
        ({"gpu_seconds": float("nan")}, "gpu_seconds"),
        ({"event_id": ""}, "event_id"),
    ],
)
async def test_record_rejects_and_enqueues_nothing(overrides: dict[str, Any], field: str) -> None:
    producer = UsageProducer(ProducerConfig(bootstrap_servers=_dead_bootstrap()))
    with pytest.raises(InvalidRecord) as info:
        await producer.record(**{**GOOD, **overrides})
    assert info.value.field == field
    assert producer.stats().queue_depth == 0
    sync = SyncUsageProducer(ProducerConfig(bootstrap_servers=_dead_bootstrap()))
    with pytest.raises(InvalidRecord):
        sync.record(**{**GOOD, **overrides})
    assert sync.stats().queue_depth == 0


async def test_missing_tenant_is_a_type_error_before_anything() -> None:
    producer = UsageProducer()
    with pytest.raises(TypeError):
        await producer.record(model="m", input_tokens=1, output_tokens=1)  # type: ignore[call-arg]
    assert producer.stats().queue_depth == 0


async def test_record_assigns_uuid7_and_encodes_valid_bytes() -> None:
    pipe_events: list[tuple[bytes, bytes, str]] = []
    producer = UsageProducer()

    def put(key: bytes, value: bytes, event_id: str) -> bool:
        pipe_events.append((key, value, event_id))
        return True

    producer._pipe.put = put  # type: ignore[method-assign]
    plus2 = timezone(timedelta(hours=2))
    event_id = await producer.record(**GOOD, occurred_at=datetime(2026, 1, 1, tzinfo=plus2))
    given = await producer.record(**GOOD, event_id="mine-1")
    assert given == "mine-1"
    [(key, value, eid), _] = pipe_events
    assert (key, eid) == (b"acme/research", event_id)
    assert event_id[14] == "7"
    assert decode_usage_event(value).event_id == event_id


async def test_drop_policy_counts_and_block_policy_raises() -> None:
    dead = _dead_bootstrap()
    drop = UsageProducer(
        ProducerConfig(bootstrap_servers=dead, buffer_max_events=2, overflow_policy="drop")
    )
    await drop.start()
    for _ in range(5):
        await drop.record(**GOOD)
    stats = drop.stats()
    assert (stats.queue_depth, stats.dropped, stats.sent) == (2, 3, 0)
    report = await drop.close(timeout_s=0.2)
    assert report.undelivered_count == 2

    block = UsageProducer(
        ProducerConfig(bootstrap_servers=dead, buffer_max_events=1, block_timeout_s=0.05)
    )
    await block.start()
    await block.record(**GOOD)
    with pytest.raises(ServiceUnavailable, match="buffer full") as info:
        await block.record(**GOOD)
    assert info.value.retriable
    assert (await block.close(timeout_s=0.2)).undelivered_count == 1


def test_sync_close_with_broker_down_reports_exact_undelivered() -> None:
    config = ProducerConfig(bootstrap_servers=_dead_bootstrap(), buffer_max_events=10_000)
    with SyncUsageProducer(config) as producer:
        ids = {producer.record(**GOOD) for _ in range(1234)}
        report = producer.close(timeout_s=0.5)
    assert report.undelivered_count == 1234
    assert set(report.undelivered_event_ids) == ids
    assert not report.ok
    assert producer.close().undelivered_count == 0  # closing twice is harmless


def test_sync_block_policy_raises_after_timeout() -> None:
    config = ProducerConfig(
        bootstrap_servers=_dead_bootstrap(), buffer_max_events=3, block_timeout_s=0.05
    )
    producer = SyncUsageProducer(config)
    producer.start()
    for _ in range(3):
        producer.record(**GOOD)
    with pytest.raises(ServiceUnavailable):
        producer.record(**GOOD)
    assert producer.stats().queue_depth == 3
    assert producer.close(timeout_s=0.2).undelivered_count == 3


def test_use_before_start_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SyncUsageProducer().flush()
    with pytest.raises(ConfigError, match="follow_quotas"):
        SyncUsageProducer().check("acme")


def test_envelope_units_group_by_tenant_within_byte_budget() -> None:
    pipe = Pipeline(ProducerConfig(envelope=True, max_batch_bytes=400))
    items = [(b"a", b'{"event_id":"%d"}' % i, str(i)) for i in range(20)] + [(b"b", b"{}", "b0")]
    units = pipe._units(items)
    assert sum(len(u[2]) for u in units) == 21
    assert {u[0] for u in units} == {b"a", b"b"}
    assert all(len(u[1]) <= 400 for u in units)
    assert units[0][1].startswith(b'{"batch":[{"event_id":"0"}')


def _in_child(body: Callable[[], str]) -> str:
    """Run body in a forked child and return what it reports (or its error)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            os.write(write_fd, body().encode())
        except BaseException as exc:
            os.write(write_fd, f"error: {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


def test_sync_producer_in_a_forked_child_starts_fresh() -> None:
    config = ProducerConfig(bootstrap_servers=_dead_bootstrap(), buffer_max_events=100)
    with SyncUsageProducer(config) as producer:
        parent_ids = {producer.record(**GOOD) for _ in range(10)}

        def child() -> str:
            before = producer.stats().queue_depth  # the parent's events are not ours
            ids = {producer.record(**GOOD) for _ in range(5)}
            alive = producer._thread is not None and producer._thread.is_alive()
            report = producer.close(timeout_s=0.2)
            same = set(report.undelivered_event_ids) == ids
            return f"{before} {alive} {report.undelivered_count} {same}"

        assert _in_child(child) == "0 True 5 True"
        assert producer.stats().queue_depth == 10
        report = producer.close(timeout_s=0.2)
    assert set(report.undelivered_event_ids) == parent_ids


async def test_async_producer_in_a_forked_child_needs_start() -> None:
    producer = UsageProducer(ProducerConfig(bootstrap_servers=_dead_bootstrap()))
    await producer.start()
    await producer.record(**GOOD)

    def child() -> str:
        try:
            asyncio.run(producer.record(**GOOD))
        except ConfigError as exc:
            return f"refused: {'fork' in exc.message} {producer.stats().queue_depth}"
        return "accepted"

    assert _in_child(child) == "refused: True 0"
    assert (await producer.close(timeout_s=0.2)).undelivered_count == 1
