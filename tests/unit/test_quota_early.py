"""Early quota alerts: a lower bound of usage announces crossings before the write.

The engine's bound is the last store reading plus this worker's accepted,
not yet durable tokens. These tests pin that it is never high (no alert the
store would not confirm, no state that goes down again) and that the
processor sends the alert while the batch's write is still waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.unit.test_streams_fencing import GatedSink
from tests.unit.test_streams_processor import MemorySink, Sent
from tokenpulse.schemas import (
    QuotaDefinition,
    UsageEvent,
    decode_quota_alert,
    decode_quota_state,
    encode_usage_event,
)
from tokenpulse.schemas.quota import QuotaState, quota_state_key
from tokenpulse.sinks.base import UsageSink
from tokenpulse.streams.cost import ModelUsage
from tokenpulse.streams.processor import InRecord, UsageProcessor
from tokenpulse.streams.quota_logic import Usage, period_bounds
from tokenpulse.streams.quota_pending import PendingUsage
from tokenpulse.streams.quotas import QuotaEngine, Touch
from tokenpulse.streams.usage_query import UsageRequest

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY = quota_state_key("acme", "q")
START, END = period_bounds("day", NOW)
AT = (KEY, START)


class StoreReader:
    """Reads `input_tokens` of the store; `reads` counts batched reads."""

    def __init__(self, sink: MemorySink | None = None) -> None:
        self.sink = sink
        self.input_tokens = 0
        self.reads = 0

    def _input(self, r: UsageRequest) -> int:
        if self.sink is None:
            return self.input_tokens
        return sum(
            row.event.input_tokens
            for row in self.sink.rows
            if row.event.tenant_id == r.tenant_prefix
            or row.event.tenant_id.startswith(r.tenant_prefix + "/")
        )

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        self.reads += 1
        return [Usage(input_tokens=self._input(r)) for r in requests]


def _quota(limit: int = 100, metric: str = "input", model: str | None = None) -> QuotaDefinition:
    return QuotaDefinition(
        quota_id="q",
        tenant_id="acme",
        metric=metric,  # type: ignore[arg-type]
        period="day",
        limit=Decimal(limit) if metric == "cost" else limit,
        thresholds_pct=(50, 80, 100),
        model=model,
        currency="USD" if metric == "cost" else None,
    )


def _engine(reader: StoreReader, quota: QuotaDefinition | None = None) -> QuotaEngine:
    engine = QuotaEngine(reader, alerts_topic="alerts", state_topic="state")  # type: ignore[arg-type]
    engine.apply_definition(KEY, quota or _quota())
    return engine


def _event(i: int, tokens: int, at: datetime = NOW, tenant: str = "acme/a") -> UsageEvent:
    return UsageEvent(
        event_id=f"e{i}",
        tenant_id=tenant,
        occurred_at=at,
        model="m",
        input_tokens=tokens,
        output_tokens=1,
    )


def _alerts(outs: Sequence[object]) -> list[int]:
    return [
        decode_quota_alert(o.value).threshold_pct  # type: ignore[attr-defined]
        for o in outs
        if o.topic == "alerts"  # type: ignore[attr-defined]
    ]


def _touch(i: int) -> Touch:
    return Touch("acme/a", "m", NOW, f"e{i}")


# -- the bound itself ------------------------------------------------------------------
def _t(inp: int, out: int, cached: int = 0, reasoning: int = 0) -> tuple[int, int, int, int]:
    return (inp, cached, out, reasoning)


def test_a_batch_leaves_the_bound_when_settled_and_only_then() -> None:
    p = PendingUsage()
    assert p.lower_bound(AT) is None  # never read: no bound at all
    p.observe(AT, Usage(100, 5), END)
    p.add(1, AT, "acme/a", "m", _t(10, 1))
    p.add(2, AT, "acme/b", "m", _t(20, 2))
    p.add(2, AT, "acme/a", "m", _t(0, 0))
    assert p.lower_bound(AT) == Usage(130, 8)
    p.settle(1)
    assert p.lower_bound(AT) == Usage(120, 7)
    p.settle(1)  # idempotent
    assert p.with_outstanding(AT, Usage(110, 6)) == Usage(130, 8)
    p.settle(5)
    assert p.lower_bound(AT) == Usage(100, 5)


def test_zero_batches_settle_after_the_total_is_gone() -> None:
    p = PendingUsage()
    p.add(1, AT, "acme/a", "m", _t(0, 0))
    p.add(2, AT, "acme/a", "m", _t(0, 0))
    p.settle(1)
    p.settle(2)
    assert p.with_outstanding(AT, Usage(1, 1)) == Usage(1, 1)


def test_forgetting_a_quota_or_an_ended_period_drops_its_numbers() -> None:
    p = PendingUsage()
    other = (quota_state_key("acme", "other"), START)
    for at in (AT, other):
        p.observe(at, Usage(1, 0), END)
        p.add(1, at, "acme/a", "m", _t(10, 0))
    p.forget_quota(KEY)
    assert p.lower_bound(AT) is None
    assert p.with_outstanding(AT, Usage()) == Usage()
    assert p.lower_bound(other) == Usage(11, 0)
    p.forget_ended(END - timedelta(seconds=1))
    assert p.lower_bound(other) == Usage(11, 0)
    p.forget_ended(END)
    assert p.lower_bound(other) is None


def test_pending_tokens_join_the_priced_rows_in_their_kinds() -> None:
    """A cost quota's rows: pending tokens go to `within`, split as the store splits them."""
    p = PendingUsage()
    kinds = ("input", "cached_input", "output", "reasoning")
    row = ModelUsage("acme/a", "m", before=dict.fromkeys(kinds, 7), within=dict.fromkeys(kinds, 1))
    p.observe(AT, [row], END)
    p.add(1, AT, "acme/a", "m", _t(100, 50, cached=40, reasoning=10))
    p.add(1, AT, "acme/b", "m2", _t(5, 0))
    bound = p.lower_bound(AT)
    assert isinstance(bound, list)
    rows = {(r.tenant_id, r.model): r for r in bound}
    assert rows[("acme/a", "m")] == ModelUsage(
        "acme/a",
        "m",
        before=dict.fromkeys(kinds, 7),  # the month before the period: untouched
        within={"input": 61, "cached_input": 41, "output": 41, "reasoning": 11},
    )
    assert rows[("acme/b", "m2")] == ModelUsage(
        "acme/b",
        "m2",
        before={},
        within={"input": 5, "cached_input": 0, "output": 0, "reasoning": 0},
    )
    p.settle(1)
    assert p.lower_bound(AT) == [row]


# -- the engine ----------------------------------------------------------------------
async def test_a_crossing_of_the_lower_bound_is_announced_before_the_write() -> None:
    reader = StoreReader()
    engine = _engine(reader)
    reader.input_tokens = 30
    await engine.check([_touch(0)], NOW, settle_upto=0)  # the store's 30: the base
    outs = engine.early(1, [_event(1, 25)], NOW)  # 55 >= 50 %
    assert _alerts(outs) == [50]
    state = engine.states[KEY]
    assert (state.used, state.status) == (55, "warning")
    # The write lands; the durable check confirms and announces nothing twice.
    reader.input_tokens = 55
    assert await engine.check([_touch(1)], NOW, settle_upto=1) == []
    assert engine.early(2, [_event(2, 1)], NOW) == []  # 56: nothing new


async def test_a_batch_over_several_minutes_and_tenants_counts_every_token_once() -> None:
    """Events are summed per (tenant, model, minute): the bound holds each one once,
    and an alert names the batch's last event of the period, whatever its group."""
    reader = StoreReader()
    engine = _engine(reader)
    await engine.check([_touch(0)], NOW, settle_upto=0)  # base 0
    minute = timedelta(minutes=1)
    batch = [
        _event(1, 10, NOW),
        _event(2, 10, NOW + minute, tenant="acme/b"),
        _event(3, 10, NOW + minute),
        _event(4, 10, NOW + 2 * minute),
        _event(5, 10, NOW + 2 * minute + timedelta(seconds=30)),
        _event(6, 10, NOW),  # the first group's minute again, last in the batch
    ]
    outs = engine.early(1, batch, NOW)
    alert = decode_quota_alert(next(o.value for o in outs if o.topic == "alerts"))
    assert (alert.threshold_pct, alert.used, alert.event_id) == (50, 60, "e6")
    assert engine.pending.lower_bound(AT) == Usage(60, 6)
    # The durable check names the last touch of the period too.
    reader.input_tokens = 90
    outs = await engine.check(batch[::-1], NOW, settle_upto=1)
    alert = decode_quota_alert(next(o.value for o in outs if o.topic == "alerts"))
    assert (alert.threshold_pct, alert.event_id) == (80, "e1")


async def test_without_a_store_reading_the_early_check_waits_for_the_durable_one() -> None:
    reader = StoreReader()
    engine = _engine(reader)
    assert engine.early(1, [_event(1, 90)], NOW) == []
    reader.input_tokens = 90
    outs = await engine.check([_touch(1)], NOW, settle_upto=1)
    assert _alerts(outs) == [50, 80]
    assert reader.reads == 1


async def test_pipelined_batches_never_move_the_state_backwards() -> None:
    """Batch 2 is prepared (and announced) while batch 1's check reads the store."""
    reader = StoreReader()
    engine = _engine(reader)
    await engine.check([_touch(0)], NOW, settle_upto=0)
    assert engine.early(1, [_event(1, 40)], NOW) == []  # 40
    assert _alerts(engine.early(2, [_event(2, 45)], NOW)) == [50, 80]  # 85
    reader.input_tokens = 40  # batch 1 durable, batch 2 not yet
    assert await engine.check([_touch(1)], NOW, settle_upto=1) == []
    assert engine.states[KEY].used == 85  # 40 read + 45 still on its way
    reader.input_tokens = 85
    assert await engine.check([_touch(2)], NOW, settle_upto=2) == []
    assert _alerts(engine.early(3, [_event(3, 15)], NOW)) == [100]


async def test_a_crossing_announced_early_is_not_announced_again_after_a_crash() -> None:
    """A worker announces 50 and 80 % early and dies before the write; its successor reads less."""
    reader = StoreReader()
    crashed = _engine(reader)
    reader.input_tokens = 30
    await crashed.check([_touch(0)], NOW, settle_upto=0)
    outs = crashed.early(1, [_event(1, 55)], NOW)  # 85: announced, then kill -9
    assert _alerts(outs) == [50, 80]
    successor = _engine(reader)
    for o in outs:  # what the successor reads back from the state topic
        if o.topic == "state":
            successor.apply_state(KEY, decode_quota_state(o.value))
    # Its first check reads the store without the crashed batch (not written yet).
    assert await successor.check([_touch(0)], NOW, settle_upto=0) == []
    assert successor.states[KEY].used == 85  # never backwards within a period
    reader.input_tokens = 85  # the replayed batch is written: nothing again
    assert await successor.check([_touch(1)], NOW, settle_upto=1) == []
    reader.input_tokens = 100
    assert _alerts(await successor.check([_touch(2)], NOW, settle_upto=2)) == [100]


async def test_a_dropped_batch_no_longer_counts() -> None:
    reader = StoreReader()
    engine = _engine(reader)
    await engine.check([_touch(0)], NOW, settle_upto=0)
    assert engine.early(1, [_event(1, 45)], NOW) == []
    engine.pending.settle(1)  # revoked before its write: the new owner writes it
    assert engine.early(2, [_event(2, 10)], NOW) == []  # 10, not 55
    reader.input_tokens = 55  # the new owner wrote it
    assert _alerts(await engine.check([_touch(2)], NOW, settle_upto=2)) == [50]


async def test_cost_quotas_without_a_price_book_and_closed_periods_wait() -> None:
    reader = StoreReader()
    engine = _engine(reader, _quota(metric="cost"))
    assert engine.early(1, [_event(1, 10**9)], NOW) == []
    assert engine.pending.with_outstanding(AT, Usage()) == Usage()  # nothing even counted
    engine = _engine(reader, _quota())
    await engine.check([_touch(0)], NOW, settle_upto=0)
    yesterday = NOW - timedelta(days=1)
    assert engine.early(1, [_event(1, 10**6, at=yesterday)], NOW) == []
    assert engine.pending.lower_bound((KEY, period_bounds("day", yesterday)[0])) is None


async def test_a_definition_that_measures_something_else_forgets_the_bound() -> None:
    reader = StoreReader()
    engine = _engine(reader)
    reader.input_tokens = 45
    await engine.check([_touch(0)], NOW, settle_upto=0)
    engine.apply_definition(KEY, _quota(limit=50))  # a new limit: same usage
    assert engine.pending.lower_bound(AT) is not None
    engine.apply_definition(KEY, _quota(model="other"))  # another model: unknown usage
    assert engine.pending.lower_bound(AT) is None
    assert engine.early(1, [_event(1, 100)], NOW) == []  # model m is not counted anyway


async def test_a_definition_that_measures_something_else_starts_its_state_again() -> None:
    reader = StoreReader()  # its store has input tokens only: output usage reads 0
    engine = _engine(reader)
    reader.input_tokens = 85
    assert _alerts(await engine.check([_touch(0)], NOW, settle_upto=0)) == [50, 80]
    engine.apply_definition(KEY, _quota(metric="output"))
    assert KEY not in engine.states  # 85 input tokens say nothing of the output
    assert await engine.check([_touch(1)], NOW, settle_upto=1) != []  # its new state
    assert (engine.states[KEY].used, engine.states[KEY].status) == (0, "ok")


def _state(used: int, limit: int = 100, *, day: datetime = START) -> QuotaState:
    return QuotaState(
        tenant_id="acme",
        quota_id="q",
        status="ok",
        used=used,
        limit=limit,
        period_start=day,
        period_end=day + timedelta(days=1),
        updated_at=NOW,
    )


def test_a_late_echo_of_an_older_state_does_not_roll_the_state_back() -> None:
    engine = _engine(StoreReader())
    engine.apply_state(KEY, _state(85))
    engine.apply_state(KEY, _state(55))  # this worker's earlier state, read back late
    assert engine.states[KEY].used == 85
    engine.apply_state(KEY, _state(85, limit=200))  # not the definition's limit (100)
    assert engine.states[KEY].limit == 100
    engine.apply_definition(KEY, _quota(limit=200))
    engine.apply_state(KEY, _state(10, limit=200))  # at the new limit: it stands
    assert (engine.states[KEY].used, engine.states[KEY].limit) == (10, 200)
    engine.apply_state(KEY, _state(0, day=START + timedelta(days=1)))  # a new period
    engine.apply_state(KEY, _state(99, limit=200))  # the old period, late
    assert engine.states[KEY].period_start == START + timedelta(days=1)


# -- the processor ----------------------------------------------------------------------
def _record(offset: int, tokens: int) -> InRecord:
    ev = _event(offset, tokens, at=datetime.now(UTC))
    return InRecord("usage", 0, offset, b"acme", encode_usage_event(ev))


async def _always_commits(topic: str, offsets: Mapping[int, int]) -> bool:
    return True


def _with_quota(
    store: MemorySink, sink: UsageSink, producer: Sent, **kwargs: Any
) -> tuple[UsageProcessor, QuotaEngine]:
    """A processor writing to `sink`, its quota engine reading `store`, holding _quota()."""
    engine = QuotaEngine(StoreReader(store), alerts_topic="alerts", state_topic="state")  # type: ignore[arg-type]
    engine.apply_definition(KEY, _quota())
    kwargs.setdefault("committer", _always_commits)
    processor = UsageProcessor(
        sink=sink, producer=producer, dlq_topic="dlq", keyring=None, quotas=engine, **kwargs
    )
    return processor, engine


async def test_the_processor_sends_the_alert_while_the_write_still_waits() -> None:
    store = MemorySink()
    sink = GatedSink(store)
    sent = Sent()
    commits: list[Mapping[int, int]] = []
    acked: list[bytes] = []

    async def commit(topic: str, offsets: Mapping[int, int]) -> bool:
        commits.append(dict(offsets))
        return True

    p, _ = _with_quota(store, sink, sent, committer=commit, on_alert=acked.append)
    await p.process([_record(0, 30)])  # durable: the store's 30 is the base
    assert not [m for m in sent.messages if m[0] == "alerts"]
    sink.gate.clear()
    sink.writing.clear()
    prepared = await p.prepare([_record(1, 25)])
    assert prepared is not None
    done = asyncio.create_task(p.complete([prepared]))
    await sink.writing.wait()
    await asyncio.sleep(0)  # the acknowledgement callback
    alerts = [decode_quota_alert(v) for t, _, v in sent.messages if t == "alerts"]
    assert [a.threshold_pct for a in alerts] == [50]
    assert [decode_quota_alert(v).alert_id for v in acked] == [alerts[0].alert_id]
    assert commits == [{0: 1}]  # the batch is not committed while its write waits
    sink.gate.set()
    await done
    assert commits == [{0: 1}, {0: 2}]
    assert len([m for m in sent.messages if m[0] == "alerts"]) == 1
    states = [decode_quota_state(v) for t, _, v in sent.messages if t == "state"]
    assert [s.used for s in states] == sorted(s.used for s in states)
    assert p.counters.alerts == 1


class ConfirmGatedSink(GatedSink):
    """A store whose dedup confirmations wait for `confirm_gate`."""

    def __init__(self, inner: MemorySink) -> None:
        super().__init__(inner)
        self.confirm_gate = asyncio.Event()
        self.confirming = asyncio.Event()

    async def recent_event_ids(
        self, topic: str, partitions: Collection[int], since: datetime, max_ids: int
    ) -> Mapping[int, Sequence[tuple[str, float, float]]]:
        # Warm filters: only an id a filter has seen needs a confirmation.
        return {p: [] for p in partitions}

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        self.confirming.set()
        await self.confirm_gate.wait()
        return await super().existing_event_ids(tenant_id, event_ids, since)


async def test_an_alert_does_not_wait_for_another_events_dedup_confirmation() -> None:
    """Events no filter saw are checked before the store confirms the batch's others."""
    store = MemorySink()
    sink = ConfirmGatedSink(store)
    sent = Sent()
    p, engine = _with_quota(store, sink, sent)
    sink.confirm_gate.set()
    await p.process([_record(0, 30)])  # durable: the store's 30 is the base
    sink.confirm_gate.clear()
    again = _record(0, 30)  # a redelivered duplicate: its filter says "maybe seen"
    crossing = _record(1, 25)  # new for sure: 55 of 100 crosses 50 %
    task = asyncio.create_task(
        p.prepare([InRecord("usage", 0, 1, again.key, again.value), crossing._replace(offset=2)])
    )
    await sink.confirming.wait()
    alerts = [decode_quota_alert(v) for t, _, v in sent.messages if t == "alerts"]
    assert [a.threshold_pct for a in alerts] == [50]  # sent while the confirmation waits
    sink.confirm_gate.set()
    prepared = await task
    assert prepared is not None
    await p.complete([prepared])
    assert sorted(r.event.event_id for r in store.rows) == ["e0", "e1"]  # the duplicate dropped
    assert len([m for m in sent.messages if m[0] == "alerts"]) == 1
    (at,) = [(KEY, s.period_start) for s in engine.states.values()]
    assert engine.pending.lower_bound(at) == Usage(55, 0)  # nothing left outstanding


async def test_only_the_events_of_tenants_a_quota_covers_are_checked() -> None:
    """Per batch, the quotas look at the covered tenants' events alone, early and durable."""
    store = MemorySink()
    reader = StoreReader(store)
    engine = QuotaEngine(reader, alerts_topic="alerts", state_topic="state")  # type: ignore[arg-type]
    engine.apply_definition(KEY, _quota())
    sent = Sent()
    p = UsageProcessor(
        sink=store,
        producer=sent,
        committer=_always_commits,
        dlq_topic="dlq",
        keyring=None,
        quotas=engine,
    )
    now = datetime.now(UTC)

    def rec(offset: int, tenant: str, tokens: int) -> InRecord:
        ev = _event(offset, tokens, at=now, tenant=tenant)
        return InRecord("usage", 0, offset, tenant.encode(), encode_usage_event(ev))

    await p.process([rec(0, "acme/a", 10)])  # the store's first reading: the bounds' base
    reads = reader.reads
    # Tenants no quota covers ("acme" is a parent of acme/a, not of acme-corp).
    others = [rec(1, "globex/a", 500), rec(2, "acme-corp", 500)]
    prepared = await p.prepare(others)
    assert prepared is not None
    assert prepared.seq == 0  # nothing joined the lower bounds
    await p.complete([prepared])
    assert reader.reads == reads  # and nothing was read after the write
    assert not [m for m in sent.messages if m[0] == "alerts"]
    # A mixed batch: acme/b's 45 cross 50 % (55 of 100), globex's 500 do not count.
    prepared = await p.prepare([rec(3, "globex/a", 500), rec(4, "acme/b", 45)])
    assert prepared is not None
    (at,) = [(KEY, s.period_start) for s in engine.states.values()]
    assert engine.pending.lower_bound(at) == Usage(55, 1)
    assert [decode_quota_alert(v).threshold_pct for t, _, v in sent.messages if t == "alerts"] == [
        50
    ]
    await p.complete([prepared])
    assert reader.reads == reads + 1
    assert engine.states[KEY].used == 55
    assert len(store.rows) == 5


async def test_a_revocation_takes_the_prepared_batches_out_of_the_bounds() -> None:
    """Queued batches of a revoked partition are written by the new owner: count them once."""
    store = MemorySink()
    p, engine = _with_quota(store, store, Sent())
    await p.process([_record(0, 10)])
    (at,) = [(KEY, s.period_start) for s in engine.states.values()]
    prepared = await p.prepare([_record(1, 20)])
    assert prepared is not None
    assert engine.pending.lower_bound(at) == Usage(30, 1)  # the reader counts input only
    await p.on_revoked([("usage", 0)])
    assert engine.pending.lower_bound(at) == Usage(10, 0)


async def test_a_reading_of_a_definition_changed_during_the_read_is_no_base() -> None:
    """The read measured the old scope (all models); the new one counts model "other" only."""
    reader = StoreReader()
    engine = _engine(reader)
    reader.input_tokens = 45

    async def read_then_change(requests: Sequence[UsageRequest]) -> list[Usage]:
        engine.apply_definition(KEY, _quota(model="other"))
        return [Usage(input_tokens=45) for _ in requests]

    reader.usage_many = read_then_change  # type: ignore[method-assign]
    await engine.check([_touch(0)], NOW, settle_upto=0)
    assert engine.pending.lower_bound(AT) is None
