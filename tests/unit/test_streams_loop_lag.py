"""The event loop's lag: measured, exported, and a warning from a second on."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import generate_latest

from tokenpulse.streams.loop_lag import LoopLagWatch
from tokenpulse.streams.metrics import WorkerMetrics


def test_a_lag_is_recorded_and_one_of_a_second_or_more_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[float] = []
    watch = LoopLagWatch(observe=seen.append)
    with caplog.at_level(logging.WARNING, logger="tokenpulse.streams.loop_lag"):
        watch.lagged(0.02)
        watch.lagged(0.99)
        assert caplog.records == []
        watch.lagged(2.5)
    assert seen == [0.02, 0.99, 2.5]
    assert (watch.max_lag_s, watch.warnings) == (2.5, 1)
    (warning,) = caplog.records
    message = warning.getMessage()
    assert "blocked for 2.5 s" in message
    assert "quota checks, alerts and commits waited" in message


async def test_a_blocked_loop_is_caught_by_the_running_watch() -> None:
    seen: list[float] = []
    watch = LoopLagWatch(warn_after_s=0.2, observe=seen.append, interval_s=0.02)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.05)  # a few measurements of the idle loop
    time.sleep(0.3)  # noqa: ASYNC251 - the block under test
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The sleep that spanned the block woke at least 0.3 - 0.02 s late.
    assert watch.max_lag_s >= 0.28
    assert watch.warnings >= 1
    assert max(seen) == watch.max_lag_s
    assert min(seen) >= 0


def test_the_lag_is_exported_as_a_histogram() -> None:
    metrics = WorkerMetrics(lambda: None)
    watch = LoopLagWatch(observe=metrics.event_loop_lag_seconds.observe)
    watch.lagged(0.0004)
    watch.lagged(0.7)
    text = generate_latest(metrics.registry).decode()
    assert "tokenpulse_event_loop_lag_seconds_count 2.0" in text
    assert 'tokenpulse_event_loop_lag_seconds_bucket{le="0.001"} 1.0' in text
    assert 'tokenpulse_event_loop_lag_seconds_bucket{le="1.0"} 2.0' in text
