"""SDK benchmark: record() cost in the caller and throughput against a bare aiokafka producer.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python bench/sdk_bench.py [--events N]

Prints one table. Wall-clock timing includes whatever else the machine is
doing (and, for SyncUsageProducer, the drain thread holding the GIL), so
compare runs on the same machine only; the "CPU" rows count only the calling
thread's own CPU time (time.thread_time_ns), which is steadier on a shared
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tokenpulse.sdk import ProducerConfig, SyncUsageProducer, UsageProducer
from tokenpulse.sdk._kafka import compression_type
from tokenpulse.sdk._record import build_event

CALLS_PER_SAMPLE = 1_000
TENANTS = [f"tenant-{i}" for i in range(16)]


def _kwargs(i: int) -> dict[str, object]:
    return {
        "tenant_id": TENANTS[i % len(TENANTS)],
        "model": "gpt-4o",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cached_input_tokens": 1000,
        "agent_id": "agent-7",
    }


def _percentiles(samples_ns: list[float]) -> tuple[float, float]:
    samples_ns.sort()
    return statistics.median(samples_ns), samples_ns[int(len(samples_ns) * 0.99) - 1]


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


def build_cost(events: int) -> float:
    """Median caller CPU ns of build_event (validate + encode + uuid7), no I/O at all."""
    samples: list[float] = []
    kw = _kwargs(0)
    for _ in range(max(events // CALLS_PER_SAMPLE, 10)):
        t0 = time.thread_time_ns()
        for _ in range(CALLS_PER_SAMPLE):
            build_event(**kw)  # type: ignore[arg-type]
        samples.append((time.thread_time_ns() - t0) / CALLS_PER_SAMPLE)
    return statistics.median(samples)


def sync_record_cost(config: ProducerConfig, events: int) -> tuple[float, float, float]:
    """Per-call ns of SyncUsageProducer.record (median, p99, median caller CPU)."""
    samples: list[float] = []
    cpu: list[float] = []
    kw = _kwargs(0)
    with SyncUsageProducer(config) as producer:
        for _ in range(max(events // CALLS_PER_SAMPLE, 10)):
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            for _ in range(CALLS_PER_SAMPLE):
                producer.record(**kw)  # type: ignore[arg-type]
            samples.append((time.perf_counter_ns() - t0) / CALLS_PER_SAMPLE)
            cpu.append((time.thread_time_ns() - c0) / CALLS_PER_SAMPLE)
        producer.close(timeout_s=120)
    return (*_percentiles(samples), statistics.median(cpu))


async def async_record_cost(config: ProducerConfig, events: int) -> tuple[float, float]:
    samples: list[float] = []
    kw = _kwargs(0)
    async with UsageProducer(config) as producer:
        for _ in range(max(events // CALLS_PER_SAMPLE, 10)):
            t0 = time.perf_counter_ns()
            for _ in range(CALLS_PER_SAMPLE):
                await producer.record(**kw)  # type: ignore[arg-type]
            samples.append((time.perf_counter_ns() - t0) / CALLS_PER_SAMPLE)
            await asyncio.sleep(0)  # let the drain task run, as an agent's awaits would
        await producer.flush(timeout_s=120)
    return _percentiles(samples)


async def sdk_throughput(config: ProducerConfig, events: int) -> tuple[float, float]:
    """(events/s record->acked, process CPU us per event)."""
    async with UsageProducer(config) as producer:
        c0 = time.process_time()
        t0 = time.perf_counter()
        for i in range(events):
            await producer.record(**_kwargs(i))  # type: ignore[arg-type]
            if i % 1000 == 0:
                await asyncio.sleep(0)
        report = await producer.flush(timeout_s=300)
        elapsed = time.perf_counter() - t0
        cpu_s = time.process_time() - c0
    assert report.ok, report.undelivered_count
    return events / elapsed, cpu_s / events * 1e6


async def bare_throughput(config: ProducerConfig, events: int) -> tuple[float, float]:
    """aiokafka's send() per record: (events/s, process CPU us per event)."""
    values = [(_kwargs(i)["tenant_id"], build_event(**_kwargs(i))[1]) for i in range(events)]  # type: ignore[arg-type]
    producer = AIOKafkaProducer(
        bootstrap_servers=config.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        compression_type=compression_type(config),
        linger_ms=config.linger_ms,
        max_batch_size=config.max_batch_bytes,
    )
    await producer.start()
    try:
        c0 = time.process_time()
        t0 = time.perf_counter()
        futures = [
            await producer.send(config.topic, value, key=str(tenant).encode())
            for tenant, value in values
        ]
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - t0
        return events / elapsed, (time.process_time() - c0) / events * 1e6
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(bootstrap, topic))
    config = ProducerConfig(bootstrap_servers=bootstrap, topic=topic, buffer_max_events=1_000_000)
    n = args.events
    build_cpu = build_cost(n)
    sync_med, sync_p99, sync_cpu = sync_record_cost(config, n)
    async_med, async_p99 = asyncio.run(async_record_cost(config, n))
    sdk_eps, sdk_cpu_us = asyncio.run(sdk_throughput(config, n))
    bare_eps, bare_cpu_us = asyncio.run(bare_throughput(config, n))
    print(f"events={n} compression={compression_type(config)} topic={topic}")
    print(f"{'measure':<44}{'value':>14}")
    print(f"{'build_event() CPU median ns/call (no I/O)':<44}{build_cpu:>14.0f}")
    print(f"{'SyncUsageProducer.record() CPU median ns':<44}{sync_cpu:>14.0f}")
    print(f"{'SyncUsageProducer.record() median ns/call':<44}{sync_med:>14.0f}")
    print(f"{'SyncUsageProducer.record() p99 ns/call':<44}{sync_p99:>14.0f}")
    print(f"{'await UsageProducer.record() median ns/call':<44}{async_med:>14.0f}")
    print(f"{'await UsageProducer.record() p99 ns/call':<44}{async_p99:>14.0f}")
    print(f"{'SDK throughput events/s (record->acked)':<44}{sdk_eps:>14.0f}")
    print(f"{'bare aiokafka send() events/s, same bytes':<44}{bare_eps:>14.0f}")
    print(f"{'SDK / bare ratio':<44}{sdk_eps / bare_eps:>14.2f}")
    print(f"{'SDK process CPU us/event (record->acked)':<44}{sdk_cpu_us:>14.1f}")
    print(f"{'bare send() process CPU us/event':<44}{bare_cpu_us:>14.1f}")


if __name__ == "__main__":
    main()
