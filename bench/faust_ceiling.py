"""Faust's own ceiling: draining a topic through a no-op agent vs whole fetches.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python bench/faust_ceiling.py [--records N] [--runs 3]

Why it exists: the worker once consumed the usage topic with a Faust agent
(`stream.take_events`); this measures what that path costs before any work
of ours, beside `tokenpulse.streams.transport.BatchTransport`, which hands
whole fetches over. Each run produces N records of ~380 B (12 partitions)
and drains them in a fresh worker process per mode; a mode's rate is records
/ wall seconds from the first fetched record to the last, and its CPU is the
worker's process time over the same span. Prints one table of medians and
the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PARTITIONS = 12
VALUE = (
    b'{"event_id":"0190e2c4-7f00-7000-8000-000000000000","tenant_id":"acme/research/agent-7",'
    b'"occurred_at":"2026-11-25T08:00:00.123Z","model":"gpt-large","input_tokens":1200,'
    b'"output_tokens":300,"cached_input_tokens":200,"region":"eu-west-1","provider":"openai",'
    b'"operation":"chat","agent_id":"agent-7","attributes":{"team":"research","env":"prod"}}'
)


async def _produce(bootstrap: str, topic: str, records: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        for i in range(records):
            await producer.send(topic, VALUE, key=f"tenant-{i % 200}".encode())
        await producer.flush()
    finally:
        await producer.stop()


def _worker(mode: str, bootstrap: str, topic: str, records: int, datadir: str) -> None:
    """Runs in a child process: drain `topic` once in `mode`, print one JSON line."""
    import faust

    from tokenpulse.streams.processor import InRecord
    from tokenpulse.streams.transport import BatchTransport

    state: dict[str, float] = {"n": 0}

    def count(n: int) -> None:
        if "t0" not in state:
            state["t0"], state["c0"] = time.monotonic(), time.process_time()
        state["n"] += n
        if state["n"] >= records:
            wall = time.monotonic() - state["t0"]
            cpu = time.process_time() - state["c0"]
            print(json.dumps({"rate": records / wall, "cpu_us": cpu / records * 1e6}), flush=True)
            os._exit(0)

    app = faust.App(
        "ceiling-" + uuid.uuid4().hex[:8],
        datadir=datadir,  # Faust's data dir, never the cwd
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_max_poll_records=2000,
    )
    if mode == "fetches":
        app.transport = BatchTransport(app.conf.broker_consumer, app)
    topic_t = app.topic(topic, key_serializer="raw", value_serializer="raw", acks=False)
    if mode == "fetches":
        app.topics.add(topic_t)

        async def handler(recs: list[InRecord]) -> None:
            count(len(recs))

        transport = app.transport
        assert isinstance(transport, BatchTransport)
        transport.batch_handlers[topic] = handler  # type: ignore[assignment]
    else:

        async def agent(stream: object) -> None:
            async for events in stream.take_events(2000, within=0.5):  # type: ignore[attr-defined]
                count(len(events))

        app.agent(topic_t, concurrency=1)(agent)
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


def _run_mode(
    mode: str, bootstrap: str, topic: str, records: int, datadir: str
) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", mode, "--bootstrap", bootstrap,
            "--topic", topic, "--records", str(records), "--datadir", datadir]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    # Faust's worker redirects stdout into its log (stderr), prefix and all.
    found = [
        ln[ln.index('{"rate"') :].strip()
        for ln in (done.stdout + done.stderr).splitlines()
        if '{"rate"' in ln
    ]
    if not found:
        raise SystemExit(f"{mode} worker failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(found[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--child", choices=["stream", "fetches"])
    parser.add_argument("--topic")
    parser.add_argument("--datadir")
    args = parser.parse_args()
    if args.child:
        _worker(args.child, args.bootstrap, args.topic, args.records, args.datadir)
        return
    results: dict[str, list[dict[str, float]]] = {"stream": [], "fetches": []}
    for _ in range(args.runs):
        topic = "bench-ceiling-" + uuid.uuid4().hex[:8]
        asyncio.run(_produce(args.bootstrap, topic, args.records))
        for mode in results:
            with tempfile.TemporaryDirectory(prefix="tokenpulse-ceiling-") as datadir:
                results[mode].append(_run_mode(mode, args.bootstrap, topic, args.records, datadir))
    med = {
        mode: (
            statistics.median(r["rate"] for r in rs),
            statistics.median(r["cpu_us"] for r in rs),
        )
        for mode, rs in results.items()
    }
    rows = [
        ("Faust agent, take_events(2000, 0.5 s)", *med["stream"]),
        ("BatchTransport, whole fetches", *med["fetches"]),
    ]
    print(f"{args.records:,} records x {args.runs} runs, medians")
    print(f"| {'path':<38} | records/s | CPU us/record |")
    print(f"| {'-' * 38} | --------- | ------------- |")
    for name, rate, cpu_us in rows:
        print(f"| {name:<38} | {rate:9,.0f} | {cpu_us:13.1f} |")
    speed = med["fetches"][0] / med["stream"][0]
    cpu = med["stream"][1] / med["fetches"][1]
    print(f"ratio fetches / stream: {speed:.1f}x records/s, {cpu:.1f}x less CPU per record")


if __name__ == "__main__":
    main()
