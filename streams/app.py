"""The one Faust app of tokenpulse, built from WorkerSettings.

Faust drives consumption (group membership, rebalances, fetching) and the
producer; offsets of the usage topic are NOT left to Faust's ack/commit
bookkeeping (see docs/streams.md, "Commit discipline"): the topic is
declared with acks disabled and the processor commits explicitly after the
batch's sink write and broker acknowledgements returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from tokenpulse.errors import ConfigError
from tokenpulse.schemas.quota import decode_quota_alert
from tokenpulse.schemas.signing import Keyring
from tokenpulse.sinks.base import UsageSink
from tokenpulse.streams.hand_over import install_native_parse
from tokenpulse.streams.loop_lag import LoopLagWatch
from tokenpulse.streams.metrics import WorkerMetrics
from tokenpulse.streams.processor import UsageProcessor
from tokenpulse.streams.quota_feed import QuotaFeed
from tokenpulse.streams.quotas import QuotaEngine
from tokenpulse.streams.retry import FlowControl
from tokenpulse.streams.settings import WorkerSettings
from tokenpulse.streams.transport import BatchTransport
from tokenpulse.streams.usage_query import ClickHouseUsageReader, UsageReader
from tokenpulse.streams.webhook import WebhookSender

log = logging.getLogger("tokenpulse.streams.app")

# How long a changed quota definition waits for others of the same burst.
_DEFINITION_BURST_S = 0.05


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def create_faust_app(settings: WorkerSettings) -> faust.App:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    timeouts = settings.broker_timeouts()
    app = faust.App(
        settings.app_id,
        broker=_broker_urls(settings.kafka_bootstrap_servers),
        store="memory://",  # no RocksDB: our state is bounded and rebuilt from ClickHouse
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,  # topics are created by ensure_topics() with their configs
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        # Our topic's messages are never acked in Faust's sense; waiting for
        # "empty" at rebalance/stop would only stall. The processor's lock
        # does the equivalent: a revocation waits for the in-flight batch.
        stream_wait_empty=False,
        producer_acks=-1,
        # TOKENPULSE_SESSION_TIMEOUT_S / _HEARTBEAT_INTERVAL_S: how soon a dead
        # worker's partitions move to the others.
        broker_session_timeout=timeouts["broker_session_timeout"],
        broker_heartbeat_interval=timeouts["broker_heartbeat_interval"],
        broker_request_timeout=timeouts["broker_request_timeout"],
        # TOKENPULSE_MAX_POLL_INTERVAL_S: a consumer that asked for no records
        # this long leaves the group (fetching is paused during a store outage).
        broker_max_poll_interval=settings.max_poll_interval_s,
        # One fetch hands at most one batch's worth of records to the batcher.
        broker_max_poll_records=settings.batch_max_events,
        # Per partition and fetch. Faust's default, 1 MiB (~3,600 fleet
        # records), made the worker wait for refills 37 % of a drain (6
        # partitions: 31k events/s; 4-16 MiB: 41-48k). aiokafka buffers at
        # most one fetch per partition: at most partitions x this in memory.
        consumer_max_fetch_size=settings.partition_fetch_bytes,
    )
    # Before anything asks for the transport: the usage topic is consumed in
    # whole fetches, not through Faust's per-record streams (transport.py).
    app.transport = transport = BatchTransport(app.conf.broker_consumer, app)
    install_native_parse(settings.native_fetch_parse)
    transport.fetch_min_bytes = settings.fetch_min_bytes
    transport.fetch_max_wait_ms = settings.fetch_max_wait_ms
    return app


STOP_WAIT_MIN_S = 10.0
EXIT_FATAL = 70  # EX_SOFTWARE: the worker stopped on an error retrying could not fix


def stop_wait_s(sink: UsageSink) -> float:
    """How long one sink call can take: a stop waits that long, never a shorter guess.

    ClickHouseSink bounds a call by its own attempts x (connect + send/receive
    timeout) + backoff; any other sink gets STOP_WAIT_MIN_S.
    """
    attempt_s = float(getattr(sink, "connect_timeout_s", 0.0)) + float(
        getattr(sink, "send_receive_timeout_s", 0.0)
    )
    retry = getattr(sink, "retry", None)
    attempts = int(getattr(retry, "max_attempts", 1))
    backoff_s = float(getattr(retry, "max_backoff_s", 0.0)) * attempts
    return max(STOP_WAIT_MIN_S, attempt_s * attempts + backoff_s + 1.0)


class FaustFlow(FlowControl):
    """Pauses fetching of the usage topic's assigned partitions on Faust's consumer."""

    def __init__(self, app: faust.App, topic: str) -> None:
        self.app = app
        self.topic = topic

    def _tps(self) -> set[TP]:
        consumer: Any = self.app.consumer
        return {tp for tp in consumer.assignment() if tp.topic == self.topic}

    def pause(self) -> None:
        # Faust hands out no records of paused partitions, and aiokafka
        # prefetches at most one fetch per partition: memory stays bounded
        # during an outage. Faust also stops asking for records then, so the
        # consumer marks its polls itself (BatchConsumer.hold_membership):
        # otherwise it would leave the group after broker_max_poll_interval.
        consumer: Any = self.app.consumer
        consumer.hold_membership = True
        consumer.pause_partitions(self._tps())

    def resume(self) -> None:
        consumer: Any = self.app.consumer
        consumer.resume_partitions(self._tps())
        consumer.hold_membership = False


class FaustProducer:
    """The processor's Producer on the Faust app's producer (acks=all)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        fut: Awaitable[Any] = await self.app.producer.send(topic, key, value, None, None, None)
        return fut


@dataclass
class Runtime:
    """Everything the agent needs, started before the Faust worker runs."""

    settings: WorkerSettings
    app: faust.App
    sink: UsageSink
    reader: UsageReader | None = None
    engine: QuotaEngine | None = None
    feed: QuotaFeed | None = None
    processor: UsageProcessor | None = field(default=None)
    # Called once on a fatal error; the CLI stops the Faust worker from it.
    on_fatal: Callable[[], None] | None = None
    exit_code: int | None = None
    stopping: bool = False  # set by stop(): failures from here on are not fatal
    webhook: WebhookSender | None = None
    metrics: WorkerMetrics | None = None
    metrics_port: int | None = None  # bound port, once serving
    loop_lag: LoopLagWatch | None = None  # set by start(); run by the worker's task
    # A changed quota definition is checked by a task of its own (see
    # _definitions_changed); set while one is due or running.
    _definitions_dirty: bool = field(default=False, repr=False)
    _definition_check: asyncio.Task[None] | None = field(default=None, repr=False)

    def _on_alert(self, body: bytes) -> None:
        if self.webhook is not None:
            self.webhook.offer(decode_quota_alert(body).alert_id, body)

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned usage partition: highwater - next offset to process.

        Also asked by the metrics endpoint's HTTP thread at any moment of the
        start. Faust's `app.consumer` builds the consumer on first use, bound
        to the calling thread's event loop; built by a scrape, it crashed the
        worker's start ("got Future attached to a different loop", round 15).
        So a consumer the worker has not built yet has no lag to report.
        """
        p = self.processor
        consumer: Any = getattr(self.app, "_consumer", None)
        out: dict[tuple[str, int], int] = {}
        if p is None or consumer is None:
            return out
        try:
            assigned = [
                tp for tp in consumer.assignment() if tp.topic == self.settings.topics.usage
            ]
            for tp in assigned:
                high = consumer.highwater(tp)
                done = p.processed_upto(tp.topic, tp.partition)
                if high is not None and done is not None:
                    out[(tp.topic, tp.partition)] = max(0, int(high) - (done + 1))
        except Exception:  # scraping must never break on a consumer mid-rebalance
            log.debug("consumer lag unavailable", exc_info=True)
        return out

    def sole_owner(self) -> int | None:
        """The consumer generation while this worker is assigned every usage partition, else None.

        None during a rebalance and before the consumer knows the topic: the
        quota engine then reads the store after every write (QuotaEngine).
        """
        assigned = self._usage_assignment()
        if assigned is None:
            return None
        generation, partitions, count = assigned
        if not count or partitions != set(range(count)):
            return None
        return generation

    def generation(self) -> int | None:
        """The consumer generation while this worker holds usage partitions, else None.

        None during a rebalance, before an assignment and with none: the
        quota engine's quiet rule trusts a base only within one generation.
        """
        assigned = self._usage_assignment()
        return None if assigned is None or not assigned[1] else assigned[0]

    def _usage_assignment(self) -> tuple[int, set[int], int] | None:
        """(generation, assigned usage partitions, the topic's count); None mid-rebalance."""
        consumer: Any = getattr(self.app, "_consumer", None)
        if consumer is None or getattr(self.app, "rebalancing", True):
            return None
        topic = self.settings.topics.usage
        try:
            count = consumer.topic_partitions(topic)
            assigned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        except Exception:  # a consumer mid-rebalance or stopping: not known
            log.debug("usage partitions unavailable", exc_info=True)
            return None
        return int(self.app.consumer_generation_id), assigned, int(count or 0)

    def keyring(self) -> Keyring | None:
        s = self.settings
        if not s.verify_signatures:
            return None
        if s.keyring_file is None:
            raise ConfigError(
                "signature verification is on but TOKENPULSE_KEYRING_FILE is not set; "
                "point it at the keyring, or pass --no-verify-signatures when broker ACLs "
                "authenticate producers"
            )
        ring = Keyring.from_file(s.keyring_file, native=s.native_signature_check)
        if s.native_signature_check and not ring.native:
            log.warning(
                "signatures are checked in Python, one record at a time: the C check "
                "(tokenpulse.schemas._sigcheck) was not built; run `make setup` with a C "
                "compiler and OpenSSL's headers (Debian: gcc, libssl-dev)"
            )
        return ring

    def reload_keyring(self) -> bool:
        """Apply a changed keyring file (every TOKENPULSE_KEYRING_RELOAD_S); True when applied.

        Rotation without a restart: the records a worker verifies after this
        use the file's keys. A file that does not load is logged once and the
        keys in use stay (Keyring.reload).
        """
        if self.processor is None or self.processor.decoder.keyring is None:
            return False
        keyring, counters = self.processor.decoder.keyring, self.processor.counters
        try:
            reloaded = keyring.reload()
        except ConfigError as exc:
            counters.keyring_reload_failures += 1
            log.error("%s", exc.message)
            return False
        if reloaded:
            counters.keyring_reloads += 1
            log.info("keyring %s reloaded: %d keys", keyring.path, keyring.key_count)
        return reloaded

    async def commit(self, topic: str, offsets: Mapping[int, int]) -> bool:
        consumer: Any = self.app.consumer
        assigned = consumer.assignment()
        tps = {TP(topic, p): off for p, off in offsets.items() if TP(topic, p) in assigned}
        if not tps:
            return False
        # Faust's own commit path only commits acked messages; this topic has
        # acks disabled, so commit the offsets the processor proved durable.
        return bool(await consumer._commit(tps))

    def fatal(self, exc: BaseException, where: str) -> None:
        """Stop the worker with EXIT_FATAL: never keep running with a batch that failed.

        A Faust agent that raises is restarted by its supervisor with the
        next records, so the failed batch's offsets would be committed past:
        data loss. Exiting leaves them uncommitted; the restarted worker (or
        another group member) replays them.
        """
        if self.exit_code is not None:
            return
        if self.stopping:
            # The sink or the reader closed under a batch during a clean stop:
            # the batch is uncommitted and replays; not a failure of its own.
            log.info(
                "batch abandoned at shutdown (%s: %s); it stays uncommitted",
                type(exc).__name__,
                exc,
            )
            return
        self.exit_code = EXIT_FATAL
        log.critical(
            "worker stopping: %s failed with %s: %s; the batch stays uncommitted and is "
            "replayed after a restart; exiting with code %d",
            where,
            type(exc).__name__,
            exc,
            EXIT_FATAL,
            exc_info=exc,
        )
        if self.on_fatal is not None:
            self.on_fatal()

    async def quota_tick(self) -> None:
        """The quota timer's work: changed definitions, periods that ended."""
        if self.processor is not None and self.exit_code is None:
            try:
                await self.processor.tick()
            except Exception as exc:
                self.fatal(exc, "the quota timer")

    def _definitions_changed(self) -> None:
        """A quota definition was set, changed or deleted: check it now.

        Without this, a worker with no usage of that tenant arriving read the
        new definition at the timer's next tick (up to
        TOKENPULSE_QUOTA_CHECK_INTERVAL_S): a limit lowered below what was
        already used alerted seconds late, and until the store was read for a
        new quota its first crossing waited for the durable check.
        """
        self._definitions_dirty = True
        if self._definition_check is None or self._definition_check.done():
            self._definition_check = asyncio.get_running_loop().create_task(
                self._check_definitions()
            )

    async def _check_definitions(self) -> None:
        # A set of definitions (`tokenpulse quota set --file`) arrives as a
        # burst: one check after it, and another for any that came during it.
        while self._definitions_dirty:
            await asyncio.sleep(_DEFINITION_BURST_S)
            if self.stopping:
                return
            self._definitions_dirty = False
            await self.quota_tick()

    async def start(self) -> UsageProcessor:
        s = self.settings
        keyring = self.keyring()
        await self.sink.start()
        if self.reader is None:
            ch = ClickHouseUsageReader(s.clickhouse_target())
            await ch.start()
            self.reader = ch
        pricebook = None
        if s.pricebook_file is not None:
            from tokenpulse.sinks.billing import load_pricebook

            pricebook = load_pricebook(s.pricebook_file)  # a bad file stops the start
        self.engine = QuotaEngine(
            self.reader,
            alerts_topic=s.topics.alerts,
            state_topic=s.topics.state,
            pricebook=pricebook,
            max_reads_per_check=s.quota_max_reads_per_check,
            sole_owner=self.sole_owner,
            reread_s=s.quota_reread_s,
            generation=self.generation,
            quiet_reread_s=s.quota_quiet_reread_s,
            # A period's last events are on time until the windows' lateness.
            ended_grace_s=s.allowed_lateness_s,
        )
        self.feed = QuotaFeed(
            self.engine,
            bootstrap_servers=s.kafka_bootstrap_servers,
            quotas_topic=s.topics.quotas,
            state_topic=s.topics.state,
        )
        await self.feed.start()
        self.processor = UsageProcessor(
            sink=self.sink,
            producer=FaustProducer(self.app),
            committer=self.commit,
            dlq_topic=s.topics.dlq,
            keyring=keyring,
            quotas=self.engine,
            dedup_horizon_s=s.dedup_horizon_s,
            dedup_warm_max_ids=s.dedup_warm_max_ids,
            allowed_lateness_s=s.allowed_lateness_s,
            max_record_bytes=s.max_record_bytes,
            sink_retry_max_s=s.sink_retry_max_s,
            flow=FaustFlow(self.app, s.topics.usage),
            on_alert=self._on_alert,
        )
        self.processor.current_generation = lambda: self.app.consumer_generation_id
        # From here on (the definitions read at start are checked by the
        # timer's first run, once the worker runs).
        self.feed.on_definition_change = self._definitions_changed
        if isinstance(self.reader, ClickHouseUsageReader):
            # A quota check waiting on a store outage gives way to a revocation
            # or a stop, like a sink write (the batch stays uncommitted).
            self.reader.should_abandon = self.processor.abandoning
        if s.alert_webhook_url:
            secret = s.alert_webhook_secret.encode() if s.alert_webhook_secret else None
            self.webhook = WebhookSender(s.alert_webhook_url, secret)
            await self.webhook.start()
        if s.metrics_port or self.metrics is not None:
            self.metrics = WorkerMetrics(lambda: self.processor, self.lag)
            self.processor.observe_write = self.metrics.sink_batch_seconds.observe
            if self.webhook is not None:
                self.webhook.on_event = self.metrics.webhook_event
            if s.metrics_port:
                # serve() logs and returns None when the port is taken: metering
                # matters more than its metrics.
                self.metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
        self.loop_lag = LoopLagWatch(
            observe=None if self.metrics is None else self.metrics.event_loop_lag_seconds.observe,
        )
        return self.processor

    async def watch_loop(self) -> None:
        """The event loop's lag, measured until the worker stops (loop_lag.py)."""
        if self.loop_lag is not None:
            await self.loop_lag.run()

    async def stop(self) -> None:
        self.stopping = True
        if self.processor is not None:
            # Runs from on_before_shutdown, before the consumer leaves the group
            # (mode stops the app's children after on_stop). The in-flight sink
            # call ends (its attempt finishes, no retry starts), later batches
            # are dropped: nothing of ours lands after the next owner started.
            wait_s = stop_wait_s(self.sink)
            if not await self.processor.close(wait_s):
                log.error(
                    "stopping with a sink write still in flight after %.0fs; leaving the "
                    "group anyway: if it lands later, the next owner may write its records "
                    "again (see docs/streams.md, 'Zombie writes')",
                    wait_s,
                )
        if self.webhook is not None:
            await self.webhook.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self.feed is not None:
            await self.feed.stop()
        if self._definition_check is not None:
            self._definition_check.cancel()
        if isinstance(self.reader, ClickHouseUsageReader):
            await self.reader.close()
        await self.sink.close()
