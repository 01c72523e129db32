"""UsageProducer: the asyncio producer agent runtimes embed.

    async with UsageProducer(ProducerConfig.from_env()) as producer:
        producer.check("acme/research")            # optional edge quota check
        ... call the model ...
        await producer.record(tenant_id="acme/research", model="gpt-4o",
                              input_tokens=1200, output_tokens=300)

record() validates in the caller (InvalidRecord names the field, nothing is
queued) and returns the event_id without waiting for Kafka; delivery, retries
and re-sends happen in a background task. close() reports what it could not
deliver.

Fork: the background task lives on the parent's event loop. In a forked
child an inherited, started producer is reset to an empty, stopped one whose
record() raises ConfigError until `await producer.start()` runs on the
child's loop (the events queued before the fork belong to the parent).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType

from tokenpulse.errors import ConfigError, ServiceUnavailable
from tokenpulse.schemas.usage import UsageEvent, checked_encoding
from tokenpulse.sdk._config import ProducerConfig
from tokenpulse.sdk._guard import QuotaGuard
from tokenpulse.sdk._pipeline import DeliveryReport, Pipeline, ProducerStats
from tokenpulse.sdk._record import build_event


def buffer_full(config: ProducerConfig) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"usage buffer full ({config.buffer_max_events} events) for "
        f"{config.block_timeout_s}s: Kafka at {config.bootstrap_servers} is not taking "
        "events; check the broker or raise buffer_max_events",
        details={"buffer_max_events": config.buffer_max_events},
    )


_LIVE: weakref.WeakSet[UsageProducer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for producer in list(_LIVE):
        producer._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _refuse(key: bytes, value: bytes, event_id: str) -> bool:
    return False  # "buffer full" -> _overflow -> ConfigError: start() first


class UsageProducer:
    """Async producer of UsageEvents to tokenpulse.usage.v1 (key = tenant_id)."""

    def __init__(self, config: ProducerConfig | None = None) -> None:
        self.config = config or ProducerConfig()
        self._pipe = Pipeline(self.config)
        self._guard = QuotaGuard(self.config) if self.config.follow_quotas else None
        self._started = False
        _LIVE.add(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: empty and stopped; record() refuses until start()."""
        if not self._started:
            return
        self._started = False
        self._pipe = Pipeline(self.config)
        self._pipe.put = _refuse  # type: ignore[method-assign]
        self._guard = QuotaGuard(self.config) if self.config.follow_quotas else None

    async def start(self) -> None:
        """Start the background sender (and quota guard); never waits for Kafka."""
        if self._started:
            return
        self._pipe.__dict__.pop("put", None)  # a forked child's refusal hook
        self._pipe.start(notify_threadsafe=False)
        self._started = True
        if self._guard is not None:
            await self._guard.start(wait_s=0)

    async def __aenter__(self) -> UsageProducer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def record(
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
        """Validate and enqueue one event; returns its event_id (a UUIDv7 if none given)."""
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
        if not self._pipe.put(event.tenant_id.encode(), value, event.event_id):
            await self._overflow(event.tenant_id.encode(), value, event.event_id)
        return event.event_id

    async def record_event(self, event: UsageEvent) -> str:
        """Enqueue a UsageEvent built by the caller (validated the same way)."""
        event, value = checked_encoding(event)
        if not self._pipe.put(event.tenant_id.encode(), value, event.event_id):
            await self._overflow(event.tenant_id.encode(), value, event.event_id)
        return event.event_id

    async def _overflow(self, key: bytes, value: bytes, event_id: str) -> None:
        if not self._started:
            raise ConfigError(
                "UsageProducer.record() before start() (or in a forked child before "
                "start() on its own loop): use `async with` or `await start()`"
            )
        if self.config.overflow_policy == "drop":
            self._pipe.dropped += 1
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.block_timeout_s
        while not self._pipe.put(key, value, event_id):
            if loop.time() >= deadline:
                raise buffer_full(self.config)
            await asyncio.sleep(0.005)

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

    async def flush(self, timeout_s: float = 30.0) -> DeliveryReport:
        """Wait until everything recorded so far is acknowledged (or timeout)."""
        await self._pipe.drain(timeout_s)
        return self._pipe.report()

    async def close(self, timeout_s: float = 30.0) -> DeliveryReport:
        """Deliver what can be delivered within timeout_s, stop, and report the rest."""
        if self._guard is not None:
            await self._guard.stop()
        if not self._started:
            return DeliveryReport(0, (), 0)
        self._started = False
        return await self._pipe.close(timeout_s)
