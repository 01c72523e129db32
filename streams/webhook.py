"""Webhook delivery of quota alerts, off the metering path.

The processor hands an alert over only after the broker acknowledged it on
tokenpulse.quota.alerts.v1 (the topic is the record of truth); the hand-off
is a non-blocking put into a bounded in-memory queue, so a slow or dead
webhook never delays metering. When the queue is full the alert is logged
and counted as dropped (it is still on the Kafka topic). One task POSTs the
alert JSON with retries (exponential backoff with jitter); delivery is at
least once, receivers dedupe by the X-Tokenpulse-Alert-Id header.

Signature: X-Tokenpulse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
f"{t}.{body}" with the secret>; receivers reject stale t (replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from tokenpulse.config import redact_url

log = logging.getLogger("tokenpulse.streams.webhook")

SIGNATURE_HEADER = "X-Tokenpulse-Signature"
ALERT_ID_HEADER = "X-Tokenpulse-Alert-Id"


def sign(secret: bytes, body: bytes, t: int) -> str:
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, now_s: float, tolerance_s: float = 300) -> bool:
    """What a receiver does: parse, check freshness, compare in constant time."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
        mac = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now_s - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t), f"t={t},v1={mac}")


class WebhookSender:
    """Bounded queue + one delivery task; counters for metrics."""

    def __init__(
        self,
        url: str,
        secret: bytes | None,
        *,
        queue_max: int = 1000,
        max_attempts: int = 8,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._secret = secret
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=queue_max)
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None
        self.delivered = 0
        self.failed = 0  # gave up after max_attempts
        self.dropped = 0  # queue full
        self.attempt_failures = 0
        self.on_event: Callable[[str], None] | None = None  # "delivered"/"failed"/"dropped"/...

    def __repr__(self) -> str:  # the secret never appears
        return f"WebhookSender(url={redact_url(self.url)!r})"

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if not self._queue.empty():
            log.warning(
                "%d alert webhooks not delivered at shutdown (they are on the alerts topic)",
                self._queue.qsize(),
            )

    def offer(self, alert_id: str, body: bytes) -> bool:
        """Queue one alert for delivery without waiting; False (logged, counted) when full."""
        try:
            self._queue.put_nowait((alert_id, body))
        except asyncio.QueueFull:
            self.dropped += 1
            self._emit("dropped")
            log.error(
                "alert webhook queue full (%d); alert %s not sent by webhook "
                "(it is on the alerts topic)",
                self._queue.maxsize,
                alert_id,
            )
            return False
        return True

    def _emit(self, what: str) -> None:
        if self.on_event is not None:
            self.on_event(what)

    async def _run(self) -> None:
        while True:
            alert_id, body = await self._queue.get()
            await self._deliver(alert_id, body)

    async def _deliver(self, alert_id: str, body: bytes) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                status = await self._post(alert_id, body)
                if 200 <= status < 300:
                    self.delivered += 1
                    self._emit("delivered")
                    return
                problem = f"HTTP {status}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network errors, timeouts: retried like 5xx
                problem = f"{type(exc).__name__}: {exc}"
            self.attempt_failures += 1
            self._emit("attempt_failed")
            if attempt == self.max_attempts:
                break
            base = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
            delay_s = base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
            log.warning(
                "alert webhook %s attempt %d failed (%s); retry in %.1fs",
                alert_id,
                attempt,
                problem,
                delay_s,
            )
            await asyncio.sleep(delay_s)
        self.failed += 1
        self._emit("failed")
        log.error(
            "alert webhook %s to %s failed after %d attempts; the alert stays on the topic",
            alert_id,
            redact_url(self.url),
            self.max_attempts,
        )

    async def _post(self, alert_id: str, body: bytes) -> int:
        headers = {"Content-Type": "application/json", ALERT_ID_HEADER: alert_id}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body, int(self.clock()))
        async with self._session.post(self.url, data=body, headers=headers) as resp:
            await resp.read()
            return int(resp.status)
