"""The sole-owner rule: a worker assigned every usage partition reads a quota once, then counts.

While `sole_owner()` returns the same generation, no other worker writes
usage, so a quota period's base (its last reading, with this worker's own
durable writes folded in) is the store's total: checks evaluate it without
a read until `reread_s` has passed since the read. These tests pin that
the totals and alerts are those of a read every time, that a rebalance
(another generation, or not every partition) makes every base a bound
again, that a read during which the generation changed is not trusted, and
that a rule switched off (reread_s 0, no sole_owner) reads every time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.test_quota_early import StoreReader, _always_commits
from tests.unit.test_quota_read_cap import (
    NOW,
    TENANTS,
    Store,
    _alerts,
    _event,
    _key,
    _touches,
    _used,
    evaluations,
)
from tests.unit.test_streams_processor import MemorySink, Sent
from tokenpulse.schemas import QuotaDefinition, UsageEvent, encode_usage_event
from tokenpulse.streams.processor import InRecord, UsageProcessor
from tokenpulse.streams.quota_logic import Usage, period_bounds
from tokenpulse.streams.quotas import Outgoing, QuotaEngine


class Owner:
    """What Runtime.sole_owner answers: a generation while alone, None otherwise."""

    def __init__(self) -> None:
        self.generation: int | None = 1

    def __call__(self) -> int | None:
        return self.generation


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _engine(
    store: Store, owner: Owner | None, clock: Clock, *, reread_s: float = 60.0, limit: int = 100
) -> QuotaEngine:
    engine = QuotaEngine(store, alerts_topic="alerts", state_topic="state",  # type: ignore[arg-type]
                         max_reads_per_check=200, sole_owner=owner, reread_s=reread_s,
                         clock=clock)  # fmt: skip
    for t in TENANTS:
        d = QuotaDefinition(quota_id="q", tenant_id=t, metric="input", period="day", limit=limit)
        engine.apply_definition(_key(t), d)
    engine._recheck.clear()  # only what the checks touch
    return engine


class Writer:
    """Batches of this worker: prepared (early), written to the store, then checked."""

    def __init__(self, engine: QuotaEngine, store: Store) -> None:
        self.engine = engine
        self.store = store
        self.seq = 0

    async def write(self, tokens: dict[str, int]) -> list[Outgoing]:
        self.seq += 1
        seq = self.seq
        outs = self.engine.early(seq, [_event(t, n, seq) for t, n in tokens.items()], NOW)
        for t, n in tokens.items():
            self.store.tokens[t] += n
        return outs + await self.engine.check(
            _touches(*tokens), NOW, settle_upto=seq, durable_seqs={seq}
        )


async def test_a_sole_owner_reads_each_quota_once_and_counts_its_writes_exactly() -> None:
    store = Store()
    engine = _engine(store, Owner(), Clock())
    writer = Writer(engine, store)
    store.tokens.update(t0=30)  # written before this worker started
    await writer.write({"t0": 5, "t1": 5})
    assert store.reads == [["t0", "t1"]]
    alerts: list[tuple[str, int, int]] = []
    for _ in range(4):
        alerts += _alerts(await writer.write({"t0": 10, "t1": 1}))
    assert store.reads == [["t0", "t1"]]  # no read since the first
    assert (_used(engine, "t0"), _used(engine, "t1")) == (store.tokens["t0"], store.tokens["t1"])
    # t0: 35 -> 45 -> 55 -> 65 -> 75; the 50 % crossing was announced early
    # (by the lower bound at prepare time), once, with the exact total.
    assert alerts == [("t0", 50, 55)]
    alerts = _alerts(await writer.write({"t0": 6}))
    assert alerts == [("t0", 80, 81)]
    assert store.reads == [["t0", "t1"]]
    state = engine.states[_key("t0")]
    assert (state.used, state.status) == (81, "warning")


async def test_a_rebalance_makes_every_base_a_bound_again() -> None:
    store = Store()
    owner = Owner()
    engine = _engine(store, owner, Clock())
    writer = Writer(engine, store)
    await writer.write({"t0": 5, "t1": 5})
    await writer.write({"t0": 5})
    assert store.reads == [["t0", "t1"]]
    owner.generation = None  # another worker joined: not every partition any more
    store.tokens["t0"] += 40  # ... and wrote events of t0
    outs = await writer.write({"t0": 5})
    assert store.reads[1:] == [["t0"]]
    assert _alerts(outs) == [("t0", 50, 55)]  # found by the read, not missed
    await writer.write({"t0": 1})
    assert store.reads[2:] == [["t0"]]  # not alone: a read after every write
    owner.generation = 2  # alone again, in a new generation
    store.tokens["t1"] += 7  # the other worker's last writes before it left
    await writer.write({"t0": 1, "t1": 1})
    assert store.reads[3:] == [["t0", "t1"]]
    assert _used(engine, "t1") == store.tokens["t1"] == 13
    await writer.write({"t0": 1, "t1": 1})
    assert store.reads[4:] == []


async def test_a_new_generation_while_alone_reads_again() -> None:
    store = Store()
    owner = Owner()
    engine = _engine(store, owner, Clock())
    writer = Writer(engine, store)
    await writer.write({"t0": 5})
    owner.generation = 3  # left and rejoined the group: someone may have written meanwhile
    await writer.write({"t0": 5})
    assert store.reads == [["t0"], ["t0"]]


async def test_a_read_during_which_the_generation_changed_is_not_trusted() -> None:
    owner = Owner()

    class Rebalancing(Store):
        async def usage_many(self, requests):  # type: ignore[no-untyped-def]
            owner.generation = 2  # the rebalance ended while the store was read
            return await super().usage_many(requests)

    store = Rebalancing()
    engine = _engine(store, owner, Clock())
    writer = Writer(engine, store)
    await writer.write({"t0": 5})
    await writer.write({"t0": 5})  # generation 2 now: the first read was of generation 1
    await writer.write({"t0": 5})
    assert store.reads == [["t0"], ["t0"]]


async def test_a_base_is_read_again_after_reread_s() -> None:
    store = Store()
    clock = Clock()
    engine = _engine(store, Owner(), clock, reread_s=60.0)
    writer = Writer(engine, store)
    await writer.write({"t0": 5})
    clock.now_s += 59.0
    await writer.write({"t0": 5})
    assert store.reads == [["t0"]]
    store.tokens["t0"] += 50  # a writer outside the pipeline (a backfill)
    clock.now_s += 1.0
    outs = await writer.write({"t0": 5})
    assert store.reads == [["t0"], ["t0"]]
    assert _alerts(outs) == [("t0", 50, 65)]
    assert _used(engine, "t0") == 65


async def test_switched_off_or_without_an_owner_every_write_reads() -> None:
    for owner, reread_s in ((Owner(), 0.0), (None, 60.0)):
        store = Store()
        engine = _engine(store, owner, Clock(), reread_s=reread_s)
        writer = Writer(engine, store)
        for _ in range(3):
            await writer.write({"t0": 5})
        assert store.reads == [["t0"]] * 3


async def test_exact_quotas_leave_the_read_cap_to_the_others() -> None:
    store = Store()
    engine = _engine(store, Owner(), Clock())
    engine.reads.max_reads_per_check = 2
    writer = Writer(engine, store)
    await writer.write({"t0": 1, "t1": 1})
    await writer.write({"t0": 1, "t1": 1, "t2": 1, "t3": 1})
    assert store.reads == [["t0", "t1"], ["t2", "t3"]]
    assert engine.reads.deferred == {}
    assert [_used(engine, t) for t in ("t0", "t1", "t2", "t3")] == [2, 2, 1, 1]


async def test_a_batch_checked_early_twice_folds_all_its_tokens() -> None:
    """A batch with events new for sure and events new after a confirmation
    query goes through `early` twice; both parts' tokens must join the base
    that stands in for the store (a lost part stayed lost until the re-read)."""
    sink = MemorySink()
    reader = StoreReader(sink)
    engine = QuotaEngine(reader, alerts_topic="alerts", state_topic="state",  # type: ignore[arg-type]
                         max_reads_per_check=200, sole_owner=Owner(), reread_s=60.0)  # fmt: skip
    d = QuotaDefinition(quota_id="q", tenant_id="acme", metric="input", period="day", limit=100)
    engine.apply_definition(_key("acme"), d)
    p = UsageProcessor(sink=sink, producer=Sent(), committer=_always_commits, dlq_topic="dlq",
                       keyring=None, quotas=engine)  # fmt: skip
    now = datetime.now(UTC)

    def rec(offset: int, tokens: int) -> InRecord:
        ev = UsageEvent(event_id=f"e{offset}", tenant_id="acme/a", occurred_at=now, model="m",
                        input_tokens=tokens, output_tokens=0)  # fmt: skip
        return InRecord("usage", 0, offset, b"acme/a", encode_usage_event(ev))

    await p.process([rec(0, 10)])  # the read: the base
    dedup = p.partitions.parts[("usage", 0)].dedup
    dedup.cold_until_s = 0.0  # warm: only the filter's positives are confirmed
    # e2 "maybe seen" (as a false positive of the filter would be): confirmed new.
    dedup.remember("e2", p.clock())
    await p.process([rec(1, 5), rec(2, 7)])
    await p.process([rec(3, 1)])
    assert reader.reads == 1
    start, _ = period_bounds("day", now)
    assert engine.pending.lower_bound((_key("acme"), start)) == Usage(23, 0)  # the store's
    assert p.counters.confirmations == 2  # the cold first batch, then e2 alone


async def test_exact_quotas_are_evaluated_early_not_again_unless_their_limit_changed() -> None:
    store = Store()
    engine = _engine(store, Owner(), Clock())
    writer = Writer(engine, store)
    await writer.write({"t0": 10, "t1": 10})  # read: evaluated by the check
    evaluated = evaluations(engine)
    await writer.write({"t0": 10, "t1": 10})
    # Once each, by `early`: the durable check has nothing to add.
    assert sorted(evaluated) == [_key("t0"), _key("t1")]
    # A lowered limit is evaluated at once on the exact total, without a read.
    engine.apply_definition(_key("t0"), QuotaDefinition(
        quota_id="q", tenant_id="t0", metric="input", period="day", limit=35))  # fmt: skip
    outs = await engine.check((), NOW)
    assert _alerts(outs) == [("t0", 50, 20)]
    assert store.reads == [["t0", "t1"]]
    outs = await writer.write({"t0": 10})
    assert _alerts(outs) == [("t0", 80, 30)]
    assert store.reads == [["t0", "t1"]]
