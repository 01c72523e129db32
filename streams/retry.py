"""Waiting out an unavailable store without losing, committing or buffering more.

The processor calls the sink through `SinkRetrier.call`. A retriable failure
(ServiceUnavailable, SinkBackpressure, a connection error) pauses fetching
of the usage partitions (so memory stays bounded by what is already
buffered), waits with capped exponential backoff and jitter, and tries again
forever: the batch's offsets stay uncommitted until it works. Anything else
is a bug or a verdict of the store (e.g. SinkWriteError: missing table) that
retrying cannot fix; it propagates, and the worker exits non-zero so that a
supervisor restarts it (see `Runtime.fatal`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tokenpulse.errors import SinkBackpressure, TokenpulseError

log = logging.getLogger("tokenpulse.streams.retry")

_R = TypeVar("_R")


def is_retriable(exc: BaseException) -> bool:
    """Typed errors say so themselves; transport failures (refused, reset, timeout) pass."""
    if isinstance(exc, TokenpulseError):
        return exc.retriable
    from tokenpulse.sinks._retry import is_retriable as transport_retriable

    return transport_retriable(exc)


class RetryAbandoned(Exception):
    """A retry loop gave up on purpose: the batch's partitions are revoked or the worker stops.

    Raised only between two attempts, never while one is in flight, so the
    store saw either a finished attempt or none. The batch stays uncommitted.
    """


class FlowControl:
    """Pause/resume hooks for fetching (no-ops by default, Faust's consumer in the worker)."""

    def pause(self) -> None:
        """Stop fetching new records; called once when the store goes away."""

    def resume(self) -> None:
        """Fetch again; called once the store answered."""


class SinkRetrier:
    """Retries retriable store failures forever, with fetching paused meanwhile."""

    def __init__(
        self,
        *,
        max_backoff_s: float = 30.0,
        initial_backoff_s: float = 0.1,
        flow: FlowControl | None = None,
        on_retry: Callable[[str, BaseException], None] | None = None,
        should_abandon: Callable[[], bool] | None = None,
    ) -> None:
        self.max_backoff_s = max_backoff_s
        self.initial_backoff_s = initial_backoff_s
        self.flow = flow or FlowControl()
        self.on_retry = on_retry
        # Asked after each failed attempt: a revocation or a stop must not wait
        # for a store that may stay away for minutes (the group moves on).
        self.should_abandon = should_abandon
        self.retries = 0
        self.paused = False

    def _delay_s(self, attempt: int, exc: BaseException) -> float:
        base: float = min(self.max_backoff_s, self.initial_backoff_s * 2 ** min(attempt, 30))
        delay = base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
        if isinstance(exc, SinkBackpressure):
            delay = max(delay, exc.retry_after_s)  # the store told us how long
        return delay

    def _maybe_abandon(self, what: str, exc: BaseException) -> None:
        if self.should_abandon is None or not self.should_abandon():
            return
        # Not resumed here: the partitions were revoked (a new assignment starts
        # unpaused) or the worker stops; the next pause must not be skipped.
        self.paused = False
        raise RetryAbandoned(f"{what} abandoned between attempts") from exc

    async def call(self, what: str, call: Callable[[], Awaitable[_R]]) -> _R:
        attempt = 0
        while True:
            try:
                result = await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                self.retries += 1
                if self.on_retry is not None:
                    self.on_retry(what, exc)
                if not self.paused:
                    self.paused = True
                    self.flow.pause()
                    log.warning(
                        "store unavailable during %s (%s: %s); fetching paused, "
                        "offsets stay uncommitted until it answers",
                        what,
                        type(exc).__name__,
                        _first_line(exc),
                    )
                self._maybe_abandon(what, exc)
                delay_s = self._delay_s(attempt, exc)
                attempt += 1
                log.warning("retrying %s in %.1fs (attempt %d)", what, delay_s, attempt)
                await asyncio.sleep(delay_s)
                self._maybe_abandon(what, exc)
                continue
            if self.paused:
                self.paused = False
                self.flow.resume()
                log.warning("store answers again after %d attempts; fetching resumed", attempt)
            return result


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
