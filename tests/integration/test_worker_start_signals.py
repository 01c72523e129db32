"""`tokenpulse worker` stopped by SIGTERM while it is still starting exits cleanly (0).

A rolling update or a supervisor may stop a worker before Faust installed
its own signal handlers; the default action used to kill it with -15
mid-start (seen in CI when a two-worker test ended before its second worker
had started). The start is held here by a ClickHouse endpoint that accepts
connections and never answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_sigterm_while_starting_exits_zero_with_a_clear_line(services: Any, tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, never answered
    port = silent.getsockname()[1]
    log = tmp_path / "worker.log"
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=services.kafka_bootstrap,
        CLICKHOUSE_URL=f"http://default:@127.0.0.1:{port}/db",
        TOKENPULSE_HOME=str(tmp_path),
        TOKENPULSE_TOPIC_PREFIX=f"t{uuid.uuid4().hex[:8]}.",
        TOKENPULSE_VERIFY_SIGNATURES="false",
        TOKENPULSE_METRICS_PORT="0",
    )
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tokenpulse", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                # Topics are created (Kafka answers), then the sink's first
                # request to ClickHouse hangs: the worker is mid-start.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not _accepted(silent):
                    assert proc.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "the worker never reached ClickHouse"
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
    finally:
        silent.close()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "SIGTERM while starting" in text


def _accepted(server: socket.socket) -> bool:
    """Has a client connected (accept it, and keep it waiting)?"""
    server.settimeout(0.2)
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return False
    _held.append(conn)
    return True


_held: list[socket.socket] = []
