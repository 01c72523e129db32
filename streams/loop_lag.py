"""How late the worker's event loop runs what is due: a watch for a blocked loop.

The Kafka consumer's heartbeats are tasks of the worker's event loop (the
consumer runs on it, transport.InLoopConsumerThread), and so are the quota
checks, the sink writes and the commits. Code that holds the loop (a long
synchronous call, a C extension that keeps the GIL) delays all of them, and
a loop held past TOKENPULSE_SESSION_TIMEOUT_S costs the worker its
partitions. The watch sleeps a fixed interval and measures how much later
than asked it woke: that lateness is the loop's lag. Every measurement goes
to the `tokenpulse_event_loop_lag_seconds` histogram; one that reaches a
third of the session timeout is logged as a warning, naming the setting.
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


class LoopLagWatch:
    """Measures the event loop's lag every `interval_s`; warns from `warn_after_s` on."""

    def __init__(
        self,
        *,
        warn_after_s: float,
        session_timeout_s: float,
        observe: Callable[[float], None] | None = None,
        interval_s: float = WATCH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warn_after_s = warn_after_s
        self.session_timeout_s = session_timeout_s
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
                "the worker's event loop was blocked for %.1f s; the Kafka consumer's "
                "heartbeats wait on it, and a block over TOKENPULSE_SESSION_TIMEOUT_S "
                "(%.0f s) costs the worker its partitions (raise it on hosts that stall, "
                "or set TOKENPULSE_CONSUMER_THREAD=true)",
                lag_s,
                self.session_timeout_s,
            )

    async def run(self) -> None:
        """Measure until cancelled."""
        clock, interval_s = self.clock, self.interval_s
        while True:
            started = clock()
            await asyncio.sleep(interval_s)
            self.lagged(max(0.0, clock() - started - interval_s))
