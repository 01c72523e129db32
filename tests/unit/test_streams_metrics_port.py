"""A metrics port already taken (two workers on one host) is one warning, not a crash."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest

from tokenpulse.streams.metrics import WorkerMetrics
from tokenpulse.streams.processor import Counters


class _Proc:
    counters = Counters()


def test_a_taken_port_logs_one_warning_and_the_worker_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        metrics = WorkerMetrics(lambda: _Proc())
        with caplog.at_level(logging.WARNING, logger="tokenpulse.streams.metrics"):
            assert metrics.serve("127.0.0.1", port) is None
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "TOKENPULSE_METRICS_PORT" in warnings[0].getMessage()
        metrics.close()  # nothing was started: a no-op


def test_a_free_port_serves_the_counters() -> None:
    metrics = WorkerMetrics(lambda: _Proc())
    bound = metrics.serve("127.0.0.1", 0)
    try:
        assert bound is not None
        url = f"http://127.0.0.1:{bound}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert b"tokenpulse_records_in_total 0.0" in resp.read()
    finally:
        metrics.close()
