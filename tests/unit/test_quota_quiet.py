"""The quiet rule: with other workers in the group, a period no other worker writes is read less.

The usage topic is keyed by tenant, so a leaf tenant's events all land in
one partition and one worker writes them. When a period's read holds
exactly its previous reading plus this worker's own durable writes since,
no other writer added to it: the base is trusted (like a sole owner's) for
`quiet_reread_s`, then read again. These tests pin that a period that
another worker writes is still read after every write, that its crossing
is still found, that the trust ends after `quiet_reread_s` and with the
generation, that a crossing another worker's tokens make is seen by this
worker at the latest then, and that 0 switches the rule off.
"""

from __future__ import annotations

from datetime import timedelta

from tests.unit.test_quota_read_cap import NOW, START, TENANTS, Store, _alerts, _key, _used
from tests.unit.test_quota_sole_owner import Clock, Owner, Writer
from tokenpulse.schemas import QuotaDefinition
from tokenpulse.streams.cost import ModelUsage
from tokenpulse.streams.quota_pending import PendingUsage
from tokenpulse.streams.quotas import QuotaEngine

END = START + timedelta(days=1)


def _engine(
    store: Store, generation: Owner, clock: Clock, *, quiet_s: float = 5.0, limit: int = 100
) -> QuotaEngine:
    """A worker that is not alone (no sole owner), in `generation`."""
    engine = QuotaEngine(store, alerts_topic="alerts", state_topic="state",  # type: ignore[arg-type]
                         max_reads_per_check=200, sole_owner=lambda: None, reread_s=60.0,
                         generation=generation, quiet_reread_s=quiet_s, clock=clock)  # fmt: skip
    for t in TENANTS:
        d = QuotaDefinition(quota_id="q", tenant_id=t, metric="input", period="day", limit=limit)
        engine.apply_definition(_key(t), d)
    engine._recheck.clear()  # only what the checks touch
    return engine


async def test_a_period_only_this_worker_writes_is_read_twice_then_trusted() -> None:
    store = Store()
    clock = Clock()
    engine = _engine(store, Owner(), clock)
    writer = Writer(engine, store)
    store.tokens["t0"] = 20  # written before this worker started
    await writer.write({"t0": 5})  # the first read: nothing to compare it with
    await writer.write({"t0": 5})  # the second: 25 + 5, as expected -> quiet
    assert store.reads == [["t0"], ["t0"]]
    alerts = []
    for _ in range(3):
        clock.now_s += 1.0
        alerts += _alerts(await writer.write({"t0": 10}))
    assert store.reads == [["t0"], ["t0"]]  # trusted: no read
    assert _used(engine, "t0") == store.tokens["t0"] == 60
    assert alerts == [("t0", 50, 50)]  # found early, on the exact total
    assert (engine.periods_read, engine.periods_quiet, engine.periods_exact) == (2, 3, 0)


async def test_a_period_another_worker_writes_is_read_after_every_write() -> None:
    store = Store()
    engine = _engine(store, Owner(), Clock())
    writer = Writer(engine, store)
    alerts = []
    for _ in range(4):
        store.tokens["t1"] += 10  # the other worker's events of t1 (a prefix quota, say)
        alerts += _alerts(await writer.write({"t1": 5}))
    assert store.reads == [["t1"]] * 4
    # Its crossing: the bound at prepare time (the last read, 45, plus this
    # batch) crossed 50 %; each read keeps that bound up with the other worker.
    assert alerts == [("t1", 50, 50)]


async def test_another_writer_seen_by_a_read_ends_the_trust() -> None:
    store = Store()
    clock = Clock()
    engine = _engine(store, Owner(), clock, quiet_s=5.0)
    writer = Writer(engine, store)
    await writer.write({"t0": 5})
    await writer.write({"t0": 5})  # quiet from here
    store.tokens["t0"] += 45  # another worker starts writing t0's period
    clock.now_s += 4.0
    outs = await writer.write({"t0": 1})
    # Not seen yet: the base is trusted for 5 s (the trade the setting names).
    assert (store.reads, _alerts(outs)) == ([["t0"], ["t0"]], [])
    clock.now_s += 1.0
    outs = await writer.write({"t0": 1})  # 5 s after the read: read again
    assert store.reads == [["t0"]] * 3
    assert _alerts(outs) == [("t0", 50, 57)]
    await writer.write({"t0": 1})  # the last read had the other's tokens: read again
    assert store.reads == [["t0"]] * 4
    assert _used(engine, "t0") == store.tokens["t0"] == 58


async def test_a_new_generation_trusts_nothing_read_before_it() -> None:
    store = Store()
    generation = Owner()
    engine = _engine(store, generation, Clock())
    writer = Writer(engine, store)
    await writer.write({"t0": 5})
    await writer.write({"t0": 5})  # quiet
    generation.generation = 2  # a rebalance: t0's partition may have had another owner
    store.tokens["t0"] += 3
    await writer.write({"t0": 5})  # read, and not compared with a read of generation 1
    await writer.write({"t0": 5})  # read again: the first agreeing pair of generation 2
    await writer.write({"t0": 5})
    assert store.reads == [["t0"]] * 4
    generation.generation = None  # mid-rebalance: nothing is trusted
    await writer.write({"t0": 5})
    assert store.reads == [["t0"]] * 5
    assert _used(engine, "t0") == store.tokens["t0"] == 33


async def test_switched_off_every_write_reads() -> None:
    store = Store()
    engine = _engine(store, Owner(), Clock(), quiet_s=0.0)
    writer = Writer(engine, store)
    for _ in range(3):
        await writer.write({"t0": 5})
    assert store.reads == [["t0"]] * 3
    assert engine.periods_quiet == 0


async def test_a_sole_owner_keeps_its_own_rule() -> None:
    store = Store()
    clock = Clock()
    engine = _engine(store, Owner(), clock, quiet_s=5.0)
    engine.reads.sole_owner = Owner()  # alone in generation 1: one read, then reread_s (60 s)
    writer = Writer(engine, store)
    await writer.write({"t0": 5})
    clock.now_s += 30.0
    await writer.write({"t0": 5})
    assert store.reads == [["t0"]]
    assert (engine.periods_exact, engine.periods_quiet) == (1, 0)


def test_confirms_compares_every_token_of_a_cost_reading() -> None:
    """A cost quota's reading is rows per (tenant, model) and kind; a fold adds to them."""
    at = (_key("t0"), START)
    pending = PendingUsage()
    rows = [ModelUsage("t0", "m", {"input": 4}, {"input": 10, "output": 3})]
    pending.observe(at, rows, END, read_round=3)
    pending.add(7, at, "t0", "m", (5, 2, 1, 0))  # 5 input (2 of them cached), 1 output
    pending.settle(7, durable={7})
    same = [ModelUsage("t0", "m", {"input": 4}, {"input": 13, "cached_input": 2, "output": 4})]
    assert pending.confirms(at, same, since_round=3)
    assert not pending.confirms(at, same, since_round=4)  # read before this ownership
    more = [*same, ModelUsage("t0", "m2", {}, {"output": 1})]  # another writer's model
    assert not pending.confirms(at, more, since_round=3)
    assert not pending.confirms((_key("t1"), START), same, since_round=0)  # never read


async def test_a_period_touched_while_trusted_is_read_when_the_trust_ends() -> None:
    """Nothing touches it again, yet its crossing is found: a tick reads it."""
    for alone in (False, True):
        store = Store()
        clock = Clock()
        engine = _engine(store, Owner(), clock, quiet_s=5.0)
        if alone:
            engine.reads.sole_owner, engine.reads.reread_s = Owner(), 5.0
        writer = Writer(engine, store)
        await writer.write({"t0": 5})
        await writer.write({"t0": 5})
        reads = len(store.reads)  # 1 alone (trusted from its first read), else 2
        store.tokens["t0"] += 40  # another worker (or, alone, a backfill)
        clock.now_s += 1.0
        assert _alerts(await writer.write({"t0": 10})) == []  # 10 + 10 on the trusted base
        assert _alerts(await engine.check((), NOW)) == []  # a tick inside the trust: no read
        assert len(store.reads) == reads
        clock.now_s += 5.0
        outs = await engine.check((), NOW)  # the first tick after it ended
        assert len(store.reads) == reads + 1
        assert _alerts(outs) == [("t0", 50, 60)]
        assert await engine.check((), NOW) == []  # read: nothing owed any more
        assert len(store.reads) == reads + 1


async def test_a_trust_renewed_after_a_rebalance_still_ends_in_a_read() -> None:
    """The first trust's end, met by a check that touches the period again, must
    not swallow the renewed trust's end (its tick read)."""
    store = Store()
    clock = Clock()
    generation = Owner()
    engine = _engine(store, generation, clock, quiet_s=5.0)
    writer = Writer(engine, store)
    await writer.write({"t0": 5})
    await writer.write({"t0": 5})  # trusted until 1005
    clock.now_s += 1.0
    await writer.write({"t0": 5})  # touched while trusted
    generation.generation = 2
    clock.now_s += 1.0
    await writer.write({"t0": 5})  # a new generation: read
    clock.now_s += 1.0
    await writer.write({"t0": 5})  # read again, agrees: trusted until 1008
    clock.now_s += 1.0
    await writer.write({"t0": 5})  # touched while trusted
    clock.now_s += 1.0
    await writer.write({"t0": 5})  # 1005: the first trust's end, met by this touch
    assert len(store.reads) == 4
    store.tokens["t0"] += 40  # another worker's tokens
    clock.now_s += 3.0
    outs = await engine.check((), NOW)  # 1008: the renewed trust ended
    assert len(store.reads) == 5
    assert _alerts(outs) == [("t0", 50, 75)]
