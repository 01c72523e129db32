"""QuotaGuard: follows tokenpulse.quota.state.v1 to refuse work at the edge.

The topic is compacted, so reading it from the beginning (no consumer group,
no commits) rebuilds the current state of every quota. A tenant is blocked
when it or any ancestor (acme for acme/research/agent-7) has a hard quota in
state `exceeded` whose period has not ended yet. A topic that does not exist
yet means no state was ever published: nothing is blocked, the guard counts
as caught up and polls until the topic appears, then follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenpulse.errors import InvalidRecord, QuotaExceeded
from tokenpulse.schemas.quota import QuotaState, decode_quota_state
from tokenpulse.schemas.usage import tenant_lineage
from tokenpulse.sdk._config import ProducerConfig

log = logging.getLogger("tokenpulse.sdk.guard")


class QuotaGuard:
    """In-memory view of quota states; is_blocked() is a few dict lookups."""

    def __init__(self, config: ProducerConfig | None = None) -> None:
        self.config = config or ProducerConfig()
        self._states: dict[str, dict[str, QuotaState]] = {}  # tenant -> quota_id -> state
        self._task: asyncio.Task[None] | None = None
        self.caught_up = False
        self.topic_poll_s = 1.0  # how often to look for a state topic that does not exist yet

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one record of the state topic in (a None value is a tombstone)."""
        if value is None:
            if key:
                tenant, _, quota_id = key.decode(errors="replace").partition("|")
                self._states.get(tenant, {}).pop(quota_id, None)
            return
        try:
            state = decode_quota_state(value)
        except InvalidRecord as exc:
            log.warning("ignoring unreadable quota state: %s", exc.message)
            return
        self._states.setdefault(state.tenant_id, {})[state.quota_id] = state

    def blocking_state(
        self, tenant_id: str, model: str | None = None, *, now: datetime | None = None
    ) -> QuotaState | None:
        """The exceeded hard quota that blocks tenant_id (for model), if any."""
        now = now or datetime.now(UTC)
        for tenant in tenant_lineage(tenant_id):
            for state in self._states.get(tenant, {}).values():
                if (
                    state.hard
                    and state.status == "exceeded"
                    and state.period_end > now
                    and (state.model is None or state.model == model)
                ):
                    return state
        return None

    def is_blocked(self, tenant_id: str, model: str | None = None) -> bool:
        return self.blocking_state(tenant_id, model) is not None

    def check(self, tenant_id: str, model: str | None = None) -> None:
        """Raise QuotaExceeded when tenant_id may not spend more tokens now."""
        state = self.blocking_state(tenant_id, model)
        if state is not None:
            raise QuotaExceeded(
                f"tenant {tenant_id!r} is over hard quota {state.quota_id!r} of "
                f"{state.tenant_id!r} ({state.used}/{state.limit}) until "
                f"{state.period_end.isoformat()}; raise the limit or wait",
                tenant_id=tenant_id,
                limit_id=state.quota_id,
            )

    async def start(self, *, wait_s: float = 10.0) -> bool:
        """Start following the topic; wait up to wait_s for the initial catch-up.

        True once caught up (at once when the topic does not exist yet);
        False when the broker could not be read within wait_s.
        """
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._follow(ready))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), wait_s)
        return self.caught_up

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self, ready: asyncio.Event) -> None:
        c = self.config
        delay_s = c.retry_backoff_ms / 1000
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=c.bootstrap_servers,
                client_id=f"{c.client_id}-quota-guard",
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **c.kafka_security_kwargs(),
            )
            try:
                await consumer.start()
                delay_s = c.retry_backoff_ms / 1000
                partitions = await self._await_topic(consumer, ready)
                # Manual assignment: no group, no commits, every partition
                # read from the beginning (the topic is compacted).
                tps = [TopicPartition(c.quota_state_topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                while True:
                    batches = await consumer.getmany(timeout_ms=200)
                    for records in batches.values():
                        for record in records:
                            self.apply(record.key, record.value)
                    if not self.caught_up and await self._at_end(consumer):
                        self.caught_up = True
                        ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away: keep the last known states
                log.warning("quota state feed interrupted (%r); retry in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, c.retry_backoff_max_ms / 1000)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _await_topic(self, consumer: AIOKafkaConsumer, ready: asyncio.Event) -> set[int]:
        """The state topic's partitions, polling until it exists.

        A missing topic means no quota state was ever published: nothing is
        blocked, so the guard counts as caught up while it waits for it.
        """
        topic = self.config.quota_state_topic
        while True:
            # A fresh metadata request each time (the client's cache would
            # only notice a new topic after metadata_max_age_ms).
            cluster = await consumer._client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                return set(partitions)
            if not self.caught_up:
                log.info("quota state topic %s does not exist yet: nothing blocked", topic)
                self.caught_up = True
                ready.set()
            await asyncio.sleep(self.topic_poll_s)

    @staticmethod
    async def _at_end(consumer: AIOKafkaConsumer) -> bool:
        assignment = list(consumer.assignment())
        if not assignment:
            return False
        ends = await consumer.end_offsets(assignment)
        for tp in assignment:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True
