"""How late the worker's event loop runs what is due: a watch for a blocked loop.

Batches, quota checks, alerts, sink writes and commits are all tasks of the
worker's event loop: code that holds it (a long synchronous call, a C
extension that keeps the GIL) delays every one of them. The watch sleeps a
fixed interval and measures how much later than asked it woke: that
lateness is the loop's lag. Every measurement goes to the
`tokenpulse_event_loop_lag_seconds` histogram; one of a second or more (the
alert latency goal) is logged as a warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("tokenpulse.streams.loop_lag")

# Often enough to catch a stall of a second or more, rare enough to cost
# nothing (two wake-ups a second).
WATCH_INTERVAL_S = 0.5
# An alert is due within a second of its crossing event (the goal): a loop
# blocked that long has made it late.
WARN_AFTER_S = 1.0


class LoopLagWatch:
    """Measures the event loop's lag every `interval_s`; warns from `warn_after_s` on."""

    def __init__(
        self,
        *,
        warn_after_s: float = WARN_AFTER_S,
        observe: Callable[[float], None] | None = None,
        interval_s: float = WATCH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warn_after_s = warn_after_s
        self.observe = observe
        self.interval_s = interval_s
        self.clock = clock
        self.max_lag_s = 0.0
        self.warnings = 0

    def lagged(self, lag_s: float) -> None:
        """One measurement: recorded, and warned about when long."""
        self.max_lag_s = max(self.max_lag_s, lag_s)
        if self.observe is not None:
            self.observe(lag_s)
        if lag_s >= self.warn_after_s:
            self.warnings += 1
            log.warning(
                "the worker's event loop was blocked for %.1f s: batches, quota checks, "
                "alerts and commits waited for it",
                lag_s,
            )

    async def run(self) -> None:
        """Measure until cancelled."""
        clock, interval_s = self.clock, self.interval_s
        while True:
            started = clock()
            await asyncio.sleep(interval_s)
            self.lagged(max(0.0, clock() - started - interval_s))
