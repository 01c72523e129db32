"""A Faust Kafka driver that hands whole fetches of the usage topic to a batch handler.

Faust delivers every record through its stream machinery one at a time: for
each record the fetcher awaits `wait_first(callback(message), ...)` (two
tasks), the conductor routes it to a channel queue, the stream wraps it in an
Event and `take_events` buffers it again. Measured here (bench/faust_ceiling.py)
that costs about 100 us of CPU per record before any work of ours: one
worker could never pass ~9,000 records/s on a whole core.

This driver keeps everything else of Faust's aiokafka driver (group
membership, rebalance callbacks, the consumer thread, pause/resume, the
producer) and changes one thing: records of the topics registered in
`BatchTransport.batch_handlers` are handed over as one list per fetch, with
the consumer generation they were fetched in; records of any other topic
still take Faust's per-message path. The handler owns commits (the topic is
declared with acks disabled), so nothing here acknowledges or commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service, ServiceT

from tokenpulse.streams.hand_over import HandOver, in_records, install_hand_over
from tokenpulse.streams.processor import InRecord

BatchHandler = Callable[[Sequence[InRecord]], Awaitable[None]]


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread whose aiokafka consumer carries the HandOver mark."""

    def _create_worker_consumer(self, transport: Any) -> Any:  # pragma: no cover - on Kafka
        consumer = super()._create_worker_consumer(transport)
        # Read by aiokafka only when start() builds the fetcher, after this
        # (Faust passes neither, and hard-codes the fetch wait).
        consumer._value_deserializer = HandOver(transport.batch_handlers, self.app)
        consumer._fetch_min_bytes = transport.fetch_min_bytes
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


# How often a consumer whose fetching is paused tells aiokafka it is alive.
KEEP_POLLING_S: float = 1.0


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a batch path for registered topics."""

    # Set while the store is away and fetching is paused (FaustFlow): the
    # consumer is healthy, only waiting, and must stay in its group.
    hold_membership: bool = False

    def _new_consumer_thread(self) -> BatchConsumerThread:  # pragma: no cover - on Kafka
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @Service.task
    async def _keep_polling_while_paused(self) -> None:  # pragma: no cover - on Kafka
        # aiokafka leaves the group when nothing asked it for records for
        # broker_max_poll_interval, and then rejoins only once something
        # asks again; Faust asks only for active partitions and, after the
        # revocation that leaving causes, waits for an assignment first. So a
        # store outage longer than TOKENPULSE_MAX_POLL_INTERVAL_S stopped the
        # worker for good: alive, out of its group, consuming nothing (faust
        # issue 517; tests/faults/test_clickhouse_outage.py). While paused,
        # mark a poll on the consumer thread, as a getmany would.
        while not self.should_stop:
            await self.sleep(KEEP_POLLING_S)
            if self.hold_membership:
                try:
                    await self._thread.call_thread(self._mark_poll)
                except Exception as exc:  # a consumer stopping: the next round retries
                    self.log.debug("keep-polling mark failed: %r", exc)

    async def _mark_poll(self) -> None:  # pragma: no cover - on Kafka
        # On the consumer thread, where aiokafka counts its fetches (Faust's
        # own getmany enters the same context around every fetch).
        consumer = cast(Any, self._thread)._ensure_consumer()
        with consumer._fetcher._subscriptions.fetch_context():
            pass

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - on Kafka
        # Mirrors faust.transport.consumer.Consumer._drain_messages; tested
        # end to end by the worker's integration and fault tests.
        handlers = cast(BatchTransport, self.transport).batch_handlers
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = cast(Any, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    # A rebalance began after the fetch: like Faust, seek back
                    # to the committed offsets and use nothing of this fetch.
                    # The seek fails harmlessly for partitions the rebalance
                    # already took away (IllegalStateError): Faust only logs it.
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("exception performing seek when flow not active %r", exc)
                    continue
                generation = self.app.consumer_generation_id
                batches: dict[str, list[Any]] = {}
                for tp, recs in records.items():
                    if not recs:
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    handler = handlers.get(tp.topic)
                    if handler is not None:
                        # Every record of the fetch is handed over, even of a
                        # partition paused since the fetch was asked for:
                        # `active` is Faust's live set, which pause_partitions()
                        # mutates, and Faust's own getmany() silently skipped
                        # such records although the consumer's position had
                        # moved past them: they were never read again until a
                        # restart (a store outage pauses fetching while a fetch
                        # is in flight: the fault test's "fetching resumed,
                        # then nothing"). Revoked partitions are fenced by the
                        # generation instead.
                        batches.setdefault(tp.topic, []).extend(recs)
                        set_read_offset(tp, recs[-1].offset)
                        continue
                    if active is None or tp in active or tp in self._buffered_partitions:
                        await self._deliver_one_by_one(tp, recs, callback, get_read_offset)
                    set_read_offset(tp, recs[-1].offset)
                for topic, recs in batches.items():
                    if type(recs[0]) is not InRecord:  # HandOverRecords not in effect
                        recs = in_records(recs, generation)
                    # A rebalance (suspend_flow) interrupts the hand-over: the
                    # records are not lost, their offsets are not committed and
                    # the partitions' next owner reads them again.
                    await self.wait_first(handlers[topic](recs), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver_one_by_one(
        self, tp: TP, recs: Sequence[Any], callback: Any, get_read_offset: Any
    ) -> None:  # pragma: no cover - on Kafka
        # Faust's own path for topics without a batch handler.
        r_offset = get_read_offset(tp)
        for rec in recs:
            if r_offset is None or rec.offset >= r_offset:
                await self.wait_first(callback(self._to_message(tp, rec)), self.suspend_flow.wait())


class BatchTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport whose consumer is a BatchConsumer."""

    Consumer = BatchConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_handlers: dict[str, BatchHandler] = {}
        # The broker answers a fetch once it holds this much, or after this
        # long (aiokafka's 1 byte and Faust's 1,500 ms unless the app sets them).
        self.fetch_min_bytes = 1
        self.fetch_max_wait_ms = 1500
        install_hand_over()
