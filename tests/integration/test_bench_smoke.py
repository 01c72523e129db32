"""`tokenpulse bench --quick` runs the whole benchmark and prints the full table.

Checks the shape and sanity of the table only (every row present, every
measured value a positive number): never timings, on a shared machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROWS = (
    "worker sustained, 1 event/record",
    "worker sustained, SDK envelopes",
    "worker sustained, signed and verified, 1 event/record",
    "worker sustained, signed and verified, SDK envelopes",
    "raw kafka-consumer-perf-test",
    "raw kafka-producer-perf-test",
    "quixstreams peer (per-minute -> ClickHouse)",
    "tokenpulse / raw consume",
    "tokenpulse / quixstreams peer",
    "freshness p50 / p99, half load",
    "alert latency p99, half load",
    "freshness p50 / p99, quarter load",
    "alert latency p99, quarter load",
    "worker peak RSS,",
    "worker CPU per 100,000 events",
    "ClickHouse endpoint CPU per 100,000 events",
    "Kafka broker CPU per 100,000 events",
    "machine CPU busy while draining",
    "CPU stolen by the hypervisor",
    "VM speed: CPU ms of a fixed unit of Python",
)
# Services named by the environment are not the bench's own processes: their
# CPU is not measured (the test's fixtures pass them that way).
NOT_MEASURED = "n/a (not a local stack)"
OWN_PROCESS_ROWS = (
    "ClickHouse endpoint CPU per 100,000 events",
    "Kafka broker CPU per 100,000 events",
)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def test_bench_quick_prints_every_row_with_positive_values(services: Any) -> None:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=services.kafka_bootstrap,
        CLICKHOUSE_URL=services.clickhouse_url + "default",
    )
    done = subprocess.run(
        [sys.executable, "-m", "tokenpulse.cli.bench", "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = [ln for ln in done.stdout.splitlines() if ln.startswith("| ")]
    body = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in table[2:]}
    assert len(body) == len(ROWS), done.stdout
    # make setup built the C signature check here; the signed rows say which ran.
    assert sum("signed and verified" in k and k.endswith("(check in C)") for k in body) == 2
    for name in ROWS:
        matches = [v for k, v in body.items() if k.startswith(name)]
        assert matches, f"row {name!r} missing:\n{done.stdout}"
        value = matches[0]
        if name in OWN_PROCESS_ROWS and value == NOT_MEASURED:
            continue
        numbers = [float(n.replace(",", "")) for n in _NUMBER.findall(value)]
        assert numbers, f"{name}: no number in {value!r}"
        if name.startswith("CPU stolen"):
            # Raw before, single, raw after, envelopes, signed, signed
            # envelopes; 0 on a quiet host.
            assert len(numbers) == 6, value
            assert all(0 <= n <= 100 * (os.cpu_count() or 1) for n in numbers), value
            continue
        assert numbers[0] > 0, f"{name}: {value!r}"
        if name.startswith("raw kafka-consumer-perf-test"):
            assert len(numbers) == 2, value  # before and after the drain
            assert numbers[1] > 0, value
    for load in ("half", "quarter"):
        assert "(0 alerts)" not in body[f"alert latency p99, {load} load"]


def test_sigterm_stops_the_bench_and_its_temporary_stack(tmp_path: Any) -> None:
    import signal
    import socket
    import time

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL")
    }
    env["TMPDIR"] = str(tmp_path)  # the temporary stack lives under here
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenpulse.cli.bench", "--quick"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        deadline = time.monotonic() + 180
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"bench ended before its stack was up (exit {proc.wait()})"
            m = re.search(r"local stack \(Kafka 127\.0\.0\.1:(\d+)\)", line)
            if m:
                port = int(m.group(1))
        assert port is not None, "no 'services: local stack' line"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    # The stack's Kafka no longer answers, and its data went with the temp dir.
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the bench's Kafka is still running"
    assert not list(tmp_path.glob("tokenpulse-bench-*"))
