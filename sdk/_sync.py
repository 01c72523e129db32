"""SyncUsageProducer: the same producer for threaded (non-asyncio) code.

A private event loop runs in a daemon thread and owns the Kafka client;
record() is callable from any thread and only validates and appends to the
shared buffer, waking the loop at most once per idle period.

Fork: a child process inherits no threads, so an inherited producer has no
loop to drain it. After os.fork() the child's copy starts empty (the events
queued before the fork belong to the parent, which delivers them) and starts
its own loop thread and Kafka client on its first record().
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Coroutine, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from tokenpulse.errors import ConfigError
from tokenpulse.schemas.usage import UsageEvent, checked_encoding
from tokenpulse.sdk._config import ProducerConfig
from tokenpulse.sdk._guard import QuotaGuard
from tokenpulse.sdk._pipeline import DeliveryReport, Pipeline, ProducerStats
from tokenpulse.sdk._producer import buffer_full
from tokenpulse.sdk._record import build_event

_T = TypeVar("_T")
_LIVE: weakref.WeakSet[SyncUsageProducer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for producer in list(_LIVE):
        producer._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SyncUsageProducer:
    """Thread-safe facade: `with SyncUsageProducer(cfg) as p: p.record(...)`."""

    def __init__(self, config: ProducerConfig | None = None) -> None:
        self.config = config or ProducerConfig()
        self._pipe = Pipeline(self.config)
        self._guard = QuotaGuard(self.config) if self.config.follow_quotas else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        _LIVE.add(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: a fresh, empty producer that starts on first use."""
        self._lock = threading.Lock()  # may have been held by a parent thread
        was_started = self._loop is not None
        self._loop = None
        self._thread = None
        self._pipe = Pipeline(self.config)
        self._guard = QuotaGuard(self.config) if self.config.follow_quotas else None
        if was_started:
            pipe = self._pipe

            def put_then_start(key: bytes, value: bytes, event_id: str) -> bool:
                # First record() in the child: drop this hook (the plain
                # method is back) and start the loop thread; no cost after.
                with contextlib.suppress(AttributeError):
                    del pipe.put
                self.start()
                return pipe.put(key, value, event_id)

            pipe.put = put_then_start  # type: ignore[method-assign]

    def start(self) -> None:
        """Start the background loop thread; never waits for Kafka."""
        with self._lock:
            if self._thread is not None:
                return
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()
                loop.close()

            self._thread = threading.Thread(target=run, name="tokenpulse-sdk", daemon=True)
            self._thread.start()
            started.wait()
            self._loop = loop
            self._call(self._start_on_loop())

    async def _start_on_loop(self) -> None:
        self._pipe.start(notify_threadsafe=True)
        if self._guard is not None:
            await self._guard.start(wait_s=0)

    def _call(self, coro: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        if self._loop is None:
            coro.close()
            raise ConfigError("SyncUsageProducer used before start(): use `with` or start()")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def __enter__(self) -> SyncUsageProducer:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def record(
        self,
        *,
        tenant_id: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        agent_id: str | None = None,
        region: str | None = None,
        provider: str | None = None,
        operation: str | None = None,
        gpu_seconds: float | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Validate and enqueue one event; returns its event_id. Thread-safe."""
        event, value = build_event(
            tenant_id=tenant_id,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
            reasoning_tokens=reasoning_tokens,
            event_id=event_id,
            occurred_at=occurred_at,
            agent_id=agent_id,
            region=region,
            provider=provider,
            operation=operation,
            gpu_seconds=gpu_seconds,
            attributes=attributes,
        )
        key = event.tenant_id.encode()
        if not self._pipe.put(key, value, event.event_id):
            self._overflow(key, value, event.event_id)
        return event.event_id

    def record_event(self, event: UsageEvent) -> str:
        event, value = checked_encoding(event)
        key = event.tenant_id.encode()
        if not self._pipe.put(key, value, event.event_id):
            self._overflow(key, value, event.event_id)
        return event.event_id

    def _overflow(self, key: bytes, value: bytes, event_id: str) -> None:
        if self._loop is None:
            raise ConfigError("SyncUsageProducer.record() before start(): use `with` or start()")
        if self.config.overflow_policy == "drop":
            with self._lock:
                self._pipe.dropped += 1
            return
        deadline = time.monotonic() + self.config.block_timeout_s
        while not self._pipe.put(key, value, event_id):
            if time.monotonic() >= deadline:
                raise buffer_full(self.config)
            time.sleep(0.002)

    def check(self, tenant_id: str, model: str | None = None) -> None:
        """Raise QuotaExceeded if a hard quota of tenant_id or an ancestor is exceeded."""
        if self._guard is None:
            raise ConfigError("check() needs ProducerConfig(follow_quotas=True)")
        self._guard.check(tenant_id, model)

    def is_blocked(self, tenant_id: str, model: str | None = None) -> bool:
        if self._guard is None:
            raise ConfigError("is_blocked() needs ProducerConfig(follow_quotas=True)")
        return self._guard.is_blocked(tenant_id, model)

    def stats(self) -> ProducerStats:
        return self._pipe.stats()

    def flush(self, timeout_s: float = 30.0) -> DeliveryReport:
        self._call(self._pipe.drain(timeout_s))
        return self._pipe.report()

    def close(self, timeout_s: float = 30.0) -> DeliveryReport:
        """Deliver what can be delivered within timeout_s, stop the thread, report the rest."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return DeliveryReport(0, (), 0)
            self._loop = None
            self._thread = None
        future = asyncio.run_coroutine_threadsafe(self._close_on_loop(timeout_s), loop)
        try:
            report = future.result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        return report

    async def _close_on_loop(self, timeout_s: float) -> DeliveryReport:
        if self._guard is not None:
            await self._guard.stop()
        return await self._pipe.close(timeout_s)
