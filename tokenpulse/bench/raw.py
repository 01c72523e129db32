"""The raw limit of the broker: Kafka's own perf tools on the same broker.

kafka-producer-perf-test is org.apache.kafka.tools.ProducerPerformance and
kafka-consumer-perf-test is org.apache.kafka.tools.ConsumerPerformance (both
in kafka-tools-<version>.jar, resolved into the tokenpulse cache).
"""

from __future__ import annotations

import re
import subprocess
import uuid

from tokenpulse.errors import ServiceUnavailable
from tokenpulse.local.kafka import kafka_tool_argv

_PRODUCED = re.compile(r"(\d+) records sent, ([\d.]+) records/sec")


def _run(argv: list[str], timeout_s: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise ServiceUnavailable(
            f"{argv[argv.index('-cp') + 2]} failed (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[-400:]}"
        )
    return done.stdout


def producer_perf(bootstrap: str, topic: str, records: int, record_bytes: int) -> float:
    """records/s of ProducerPerformance (acks=all, lz4, like the SDK) into `topic`."""
    props = [f"bootstrap.servers={bootstrap}", "acks=all", "compression.type=lz4", "linger.ms=5"]
    args = ["--topic", topic, "--num-records", str(records), "--record-size", str(record_bytes)]
    args += ["--throughput", "-1", "--producer-props", *props]
    out = _run(kafka_tool_argv("org.apache.kafka.tools.ProducerPerformance", *args), 600)
    found = _PRODUCED.findall(out)
    if not found:
        raise ServiceUnavailable(f"ProducerPerformance printed no summary: {out[-300:]}")
    return float(found[-1][1])


def consumer_perf(bootstrap: str, topic: str, records: int) -> float:
    """records/s of ConsumerPerformance reading `records` of `topic` from the start."""
    args = ["--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(records)]
    args += ["--group", f"bench-raw-{uuid.uuid4().hex[:8]}", "--timeout", "60000"]
    out = _run(kafka_tool_argv("org.apache.kafka.tools.ConsumerPerformance", *args), 600)
    # start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    # rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec: the fetch rate
    # leaves out the group join, as the worker's drain rate does.
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("start.time")]
    if not lines:
        raise ServiceUnavailable(f"ConsumerPerformance printed no result: {out[-300:]}")
    cols = [c.strip() for c in lines[-1].split(",")]
    return float(cols[9] if len(cols) >= 10 else cols[5])
