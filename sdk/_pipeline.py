"""The engine under both producers: a bounded buffer drained to aiokafka.

record() in the caller only appends (key, value, event_id) to a deque; the
drain task, on the producer's event loop, hands events to aiokafka in chunks,
keeps them "in flight" until the broker acknowledges, and puts failed ones
back at the front of the buffer to be re-sent after a backoff. A send not
acknowledged within delivery_timeout_ms (aiokafka alone retries for as long
as the broker is away) counts as failed too, and after any failure the
Kafka client is replaced; the old one's unacknowledged events are
re-queued. The buffer bound counts queued plus in-flight events, so memory
stays bounded however long Kafka is away (several threads calling record()
at once can overshoot it by at most one event each). Re-sending after a
lost acknowledgement can duplicate a record at the Kafka level; consumers
de-duplicate by event_id (DESIGN §5).

A batch the broker refuses as too large (above the topic's max.message.bytes)
is never re-sent as it was: the batch size is halved and its events re-queued,
down to batches of one event; an event alone still too large is given up with
an InvalidRecord in the DeliveryReport (_limit.py). The topic's limit, when
the broker tells it, caps the batch size before the first send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas.signing import sign_record
from tokenpulse.schemas.usage import join_batch
from tokenpulse.sdk._config import ProducerConfig
from tokenpulse.sdk._kafka import (
    TOO_LARGE,
    DeliveryReport,
    Headers,
    KeyHashCache,
    ProducerStats,
    abandon,
    new_producer,
    outcome,
    send_batched,
    topic_max_message_bytes,
)
from tokenpulse.sdk._limit import BatchLimit

__all__ = ["DeliveryReport", "Item", "Pipeline", "ProducerStats"]

log = logging.getLogger("tokenpulse.sdk")

Item = tuple[bytes, bytes, str]  # (key = tenant_id, value = encoded event, event_id)


class Pipeline:
    """Buffer + drain task. Thread-safe put(); everything else on the loop."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        self._queue: deque[Item] = deque()
        self._inflight: dict[int, Sequence[Item]] = {}
        self._inflight_count = 0
        self._next_unit = 0
        self._max = config.buffer_max_events
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._idle = False
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._notify: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        # Acknowledgement waiters, by the Kafka client whose futures they await.
        self._settlers: dict[asyncio.Task[None], AIOKafkaProducer] = {}
        self._backoff_s = 0.0
        self._fail_streak = 0
        self._partitioner = KeyHashCache()  # outlives clients: hashes stay cached
        # The client to replace after a failure; a late failure of an already
        # replaced client must not reset its healthy successor.
        self._reset_for: AIOKafkaProducer | None = None
        self._stopping: AIOKafkaProducer | None = None
        self._limit = BatchLimit(config)

    # -- caller side (any thread) -------------------------------------------

    def put(self, key: bytes, value: bytes, event_id: str) -> bool:
        """Append one event; False when the buffer is full (nothing appended)."""
        if len(self._queue) + self._inflight_count >= self._max:
            return False
        self._queue.append((key, value, event_id))
        if self._idle:
            self._idle = False
            self._notify()
        return True

    def has_space(self) -> bool:
        return len(self._queue) + self._inflight_count < self._max

    def stats(self) -> ProducerStats:
        depth = len(self._queue) + self._inflight_count
        rejected = self._limit.rejected
        return ProducerStats(self.sent, self.failed, self.dropped, depth, rejected)

    def pending(self) -> int:
        return len(self._queue) + self._inflight_count

    def pending_ids(self) -> tuple[str, ...]:
        ids = [it[2] for items in list(self._inflight.values()) for it in items]
        return tuple(ids + [it[2] for it in list(self._queue)])

    def report(self) -> DeliveryReport:
        """Pending events plus those refused for good since start."""
        errors = tuple(self._limit.errors)
        pending = self.pending_ids()
        ids = tuple(e.details["event_id"] for e in errors) + pending
        return DeliveryReport(self._limit.rejected + len(pending), ids, self.sent, errors)

    # -- loop side -------------------------------------------------------------

    def start(self, notify_threadsafe: bool) -> None:
        """Start the drain task on the running loop (never waits for Kafka)."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._wake = wake
        if notify_threadsafe:

            def notify() -> None:
                loop.call_soon_threadsafe(wake.set)

            self._notify = notify
        else:
            self._notify = wake.set
        self._task = loop.create_task(self._run(), name="tokenpulse-sdk-drain")

    async def _connect(self) -> None:
        """Start aiokafka, retrying with backoff until it connects or we close."""
        delay_s = self.config.retry_backoff_ms / 1000
        while self._producer is None:
            producer = new_producer(self.config, self._limit.batch_bytes)
            try:
                await producer.start()
            except Exception as exc:  # broker down: keep buffering, try again
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("Kafka not reachable (%s); buffering, retry in %.1fs", exc, delay_s)
                if self._closing and not self._queue:
                    return
                await self._sleep_or_wake(delay_s)
                delay_s = min(delay_s * 2, self.config.retry_backoff_max_ms / 1000)
            else:
                self._producer = producer
                if self._limit.ask:
                    self._limit.ask = False
                    await self._learn_limit(producer)

    async def _learn_limit(self, producer: AIOKafkaProducer) -> None:
        """Cap the batch size at the topic's max.message.bytes, if the broker tells it."""
        was = self._limit.batch_bytes
        timeout_s = min(self.config.request_timeout_ms / 1000, 5.0)
        if self._limit.learn(await topic_max_message_bytes(producer, self.config.topic, timeout_s)):
            log.warning(
                "max_batch_bytes=%d is above topic %s's max.message.bytes=%d: "
                "record batches are capped at %d bytes",
                was,
                self.config.topic,
                self._limit.topic_limit,
                self._limit.batch_bytes,
            )
            # Its batch builder has the old size: the loop replaces it before a send.
            self._reset_for = producer

    async def _sleep_or_wake(self, delay_s: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay_s)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if self._producer is None:
                await self._connect()
                if self._producer is None:
                    return
            if self._reset_for is not None and self._reset_for is self._producer:
                old, self._producer, self._reset_for = self._producer, None, None
                self._stopping = old  # close() finishes the job if it cancels us here
                await self._stop_producer(old, self.config.request_timeout_ms / 1000)
                self._stopping = None
                continue
            if not self._queue:
                if self._closing:
                    return
                self._idle = True
                if self._queue:  # appended between the check and the flag: no wake lost
                    self._idle = False
                    continue
                # The timeout is a safety net only; put() wakes us.
                await self._sleep_or_wake(0.05)
                self._idle = False
                continue
            if self._backoff_s:
                await asyncio.sleep(self._backoff_s)
                self._backoff_s = 0.0
            await self._send_chunk(self._producer)

    def _take(self) -> list[Item]:
        q = self._queue
        n = min(len(q), self.config.batch_size)
        chunk = [q.popleft() for _ in range(n)]
        self._inflight_count += n
        return chunk

    def _units(self, chunk: list[Item]) -> list[tuple[bytes, bytes, list[Item]]]:
        """Records to send: one per event, or one envelope per tenant."""
        if not self.config.envelope:
            return [(k, v, [it]) for it in chunk for k, v, _ in (it,)]
        by_key: dict[bytes, list[Item]] = {}
        for it in chunk:
            by_key.setdefault(it[0], []).append(it)
        units = []
        budget = self._limit.batch_bytes // 2
        for key, items in by_key.items():
            start, size = 0, 0
            for i, it in enumerate(items):
                if size and size + len(it[1]) > budget:
                    part = items[start:i]
                    units.append((key, join_batch([p[1] for p in part]), part))
                    start, size = i, 0
                size += len(it[1]) + 1
            part = items[start:]
            units.append((key, join_batch([p[1] for p in part]), part))
        return units

    async def _send_chunk(self, producer: AIOKafkaProducer) -> None:
        chunk = self._take()
        handed = await send_batched(
            producer,
            self.config.topic,
            self._units(chunk),
            partitioner=self._partitioner,
            headers_for=self._headers,
        )
        if handed.error is not None:  # metadata/buffer timeout: broker away
            self._reset_for = producer
            self._requeue(handed.unsent, handed.error)
        if handed.futures:
            unit_id = self._next_unit
            self._next_unit += 1
            self._inflight[unit_id] = [it for items in handed.carried for it in items]
            task = asyncio.get_running_loop().create_task(
                self._settle(producer, unit_id, handed.futures, handed.carried)
            )
            self._settlers[task] = producer
            task.add_done_callback(self._forget_settler)

    def _headers(self, value: bytes) -> Headers:
        c = self.config
        if c.signing_secret is None:
            return None
        assert c.signing_tenant_id is not None
        assert c.signing_key_id is not None
        return sign_record(
            value, tenant_id=c.signing_tenant_id, key_id=c.signing_key_id, secret=c.signing_secret
        )

    def _forget_settler(self, task: asyncio.Task[None]) -> None:
        self._settlers.pop(task, None)

    async def _settle(
        self,
        producer: AIOKafkaProducer,
        unit_id: int,
        futures: list[asyncio.Future[Any]],
        units: list[list[Item]],
    ) -> None:
        # aiokafka with idempotence retries a batch forever while the broker
        # is away (and its sender can die on a fatal error, leaving futures
        # that never resolve): past delivery_timeout_ms the SDK takes over,
        # re-queues what is unacknowledged and replaces the client.
        try:
            _, late = await asyncio.wait(futures, timeout=self.config.delivery_timeout_ms / 1000)
        except asyncio.CancelledError:
            # The client was abandoned: what it acknowledged counts as sent,
            # the rest goes back to the buffer for the next client.
            self._account(unit_id, [outcome(f) for f in futures], units, reset=None)
            raise
        if late:
            log.warning(
                "%d Kafka sends unacknowledged after delivery_timeout_ms=%d; "
                "re-queueing them on a new client",
                len(late),
                self.config.delivery_timeout_ms,
            )
        self._account(unit_id, [outcome(f) for f in futures], units, reset=producer)

    def _account(
        self,
        unit_id: int,
        results: Sequence[object],
        units: list[list[Item]],
        reset: AIOKafkaProducer | None,
    ) -> None:
        if self._inflight.pop(unit_id, None) is None:
            return  # already accounted for (close() gave up on it)
        failed: list[Item] = []
        error: BaseException | None = None
        too_large = False
        rejected: list[InvalidRecord] = []
        for result, items in zip(results, units, strict=True):
            if not isinstance(result, BaseException):
                self.sent += len(items)
                self._inflight_count -= len(items)
                continue
            if isinstance(result, TOO_LARGE):
                too_large = True
                if len(items) == 1:  # nothing left to split: give it up, say why
                    key, value, event_id = items[0]
                    self._inflight_count -= 1
                    headers = self._headers(value)
                    rejected.append(self._limit.reject(key, value, event_id, headers, result))
                    continue
                self._limit.halve(items)
            failed.extend(items)
            error = result
        if rejected:  # one line per send, however many (a tiny limit refuses them all)
            more = f" (and {len(rejected) - 1} more events)" if len(rejected) > 1 else ""
            log.error("%s%s", rejected[0].message, more)
        if (failed or too_large) and reset is not None:
            # An expired or rejected batch may leave the idempotent producer's
            # sequence numbers out of step with the broker: start a fresh one
            # (with the smaller batch size, after a refusal).
            self._reset_for = reset
        if failed:
            # After a refusal the broker is healthy and the next batches are
            # smaller: no back-off (the refused batch's successors on its
            # partitions fail out of sequence; they are re-sent with it).
            self._requeue(failed, error, backoff=not too_large)
        else:
            self._fail_streak = 0

    def _requeue(
        self, items: list[Item], error: BaseException | None, *, backoff: bool = True
    ) -> None:
        """Put items back at the front, in order, and (with backoff) slow the drain down."""
        self._inflight_count -= len(items)
        self._queue.extendleft(reversed(items))
        self.failed += len(items)
        if backoff:
            self._fail_streak += 1
            streak = self._fail_streak
            base = self.config.retry_backoff_ms / 1000 * (2 ** min(streak, 10))
            self._backoff_s = min(base, self.config.retry_backoff_max_ms / 1000)
            self._backoff_s *= 0.5 + random.random() / 2  # noqa: S311 - jitter
            log.warning("re-queued %d events after send failure: %r", len(items), error)
        else:
            log.warning(
                "re-queued %d events to re-send in batches of at most %d bytes: %r",
                len(items),
                self._limit.batch_bytes,
                error,
            )
        if self._wake is not None:
            self._wake.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything put so far is acknowledged; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending():
            if loop.time() >= deadline:
                return False
            if self._wake is not None:
                self._wake.set()
            await asyncio.sleep(0.01)
        return True

    async def close(self, timeout_s: float) -> DeliveryReport:
        """Deliver what can be delivered within timeout_s, then stop.

        The report is computed after the Kafka client has stopped and every
        outstanding acknowledgement has settled, so sent + undelivered equals
        everything accepted by put().
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._closing = True
        await self.drain(timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for producer in (self._stopping, self._producer):
            if producer is not None:
                await self._stop_producer(producer, max(deadline - loop.time(), 0.5))
        self._stopping = self._producer = None
        if self._settlers:  # of clients replaced earlier and still stopping
            await self._release_settlers(set(self._settlers), grace_s=1.0)
        report = self.report()
        self._queue.clear()
        self._inflight.clear()
        self._inflight_count = 0
        return report

    async def _stop_producer(self, producer: AIOKafkaProducer, timeout_s: float) -> None:
        """Stop one Kafka client; what it never acknowledged goes back to the buffer."""
        mine = {t for t, p in list(self._settlers.items()) if p is producer}
        if mine:  # acknowledgements already on their way get up to timeout_s
            await asyncio.wait(mine, timeout=timeout_s)
        if any(not t.done() for t in mine):
            await abandon(producer)  # the broker is away: stop() would wait for it
        else:
            try:
                await asyncio.wait_for(producer.stop(), max(timeout_s, 1.0))
            except (TimeoutError, Exception) as exc:
                log.warning("Kafka producer did not stop cleanly: %r", exc)
                await abandon(producer)
        await self._release_settlers(mine, grace_s=0.5)

    async def _release_settlers(self, tasks: set[asyncio.Task[None]], grace_s: float) -> None:
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=grace_s)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
