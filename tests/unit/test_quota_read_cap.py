"""The cap on quota reads per check: bounded store CPU, exact about this worker's events.

A check reads at most `max_reads_per_check` (quota, period)s, the never
read first, then the longest unread; the others are evaluated on their
lower bound, into whose base the write's own durable tokens fold, and are
read at a later check. These tests pin the order, that nothing is counted
twice or dropped when a read replaces a folded base, that a dropped batch
never folds, and that a crossing only another worker's events make is
found at the deferred read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.test_quota_early import StoreReader, _always_commits
from tests.unit.test_streams_processor import MemorySink, Sent
from tokenpulse.schemas import QuotaDefinition, UsageEvent, decode_quota_alert, encode_usage_event
from tokenpulse.schemas.quota import quota_state_key
from tokenpulse.streams.processor import InRecord, UsageProcessor
from tokenpulse.streams.quota_logic import Usage, period_bounds
from tokenpulse.streams.quotas import Outgoing, QuotaEngine, Touch
from tokenpulse.streams.usage_query import UsageRequest

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
START, _ = period_bounds("day", NOW)
TENANTS = ("t0", "t1", "t2", "t3", "t4")


class Store:
    """Input tokens per tenant as the store has them; the tenants of each read."""

    def __init__(self) -> None:
        self.tokens: dict[str, int] = dict.fromkeys(TENANTS, 0)
        self.reads: list[list[str]] = []

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        self.reads.append([r.tenant_prefix for r in requests])
        return [Usage(input_tokens=self.tokens[r.tenant_prefix]) for r in requests]


def _key(tenant: str) -> bytes:
    return quota_state_key(tenant, "q")


def _engine(store: Store, cap: int, limit: int = 1000) -> QuotaEngine:
    engine = QuotaEngine(store, alerts_topic="alerts", state_topic="state",  # type: ignore[arg-type]
                         max_reads_per_check=cap)  # fmt: skip
    for t in TENANTS:
        d = QuotaDefinition(quota_id="q", tenant_id=t, metric="input", period="day", limit=limit)
        engine.apply_definition(_key(t), d)
    return engine


def _touches(*tenants: str) -> list[Touch]:
    return [Touch(t, "m", NOW, f"e-{t}") for t in tenants]


def _event(tenant: str, tokens: int, i: int = 0) -> UsageEvent:
    return UsageEvent(event_id=f"e{i}-{tenant}", tenant_id=tenant, occurred_at=NOW, model="m",
                      input_tokens=tokens, output_tokens=0)  # fmt: skip


def _alerts(outs: Sequence[Outgoing]) -> list[tuple[str, int, int]]:
    alerts = [decode_quota_alert(o.value) for o in outs if o.topic == "alerts"]
    return [(a.tenant_id, a.threshold_pct, int(a.used)) for a in alerts]


def evaluations(engine: QuotaEngine) -> list[bytes]:
    """From now on, the state key of every quota period the engine evaluates, in order."""
    evaluated: list[bytes] = []
    evaluate = engine._evaluate_one

    def counting(at: tuple[bytes, datetime], *args: Any) -> None:
        evaluated.append(at[0])
        evaluate(at, *args)

    engine._evaluate_one = counting  # type: ignore[method-assign]
    return evaluated


def _used(engine: QuotaEngine, tenant: str) -> int | None:
    bound = engine.pending.lower_bound((_key(tenant), START))
    return None if bound is None else bound.input_tokens  # type: ignore[union-attr]


async def test_a_check_reads_at_most_the_cap_never_read_first_then_longest_unread() -> None:
    store = Store()
    engine = _engine(store, cap=2)
    engine._recheck.clear()  # only what the checks touch
    await engine.check(_touches(*TENANTS), NOW)
    await engine.check((), NOW)  # a tick: what the last check left
    await engine.check(_touches("t1"), NOW)
    await engine.check((), NOW)  # nothing left: no read at all
    assert store.reads == [["t0", "t1"], ["t2", "t3"], ["t1", "t4"]]
    # Read last in rounds 1 (t0), 2 (t2, t3) and 3 (t1, t4): oldest first.
    await engine.check(_touches(*TENANTS), NOW)
    await engine.check((), NOW)
    await engine.check((), NOW)
    assert store.reads[3:] == [["t0", "t2"], ["t1", "t3"], ["t4"]]


async def test_without_a_cap_every_touched_quota_is_read_in_one_check() -> None:
    store = Store()
    engine = _engine(store, cap=1_000_000)
    engine._recheck.clear()
    await engine.check(_touches(*TENANTS), NOW)
    assert store.reads == [list(TENANTS)]
    assert engine.reads.deferred == {}


async def test_a_quota_left_unread_counts_this_workers_writes_exactly() -> None:
    store = Store()
    engine = _engine(store, cap=1, limit=100)
    engine._recheck.clear()
    store.tokens.update(t0=10, t1=20)
    await engine.check(_touches("t0"), NOW)
    await engine.check(_touches("t1"), NOW)
    assert (_used(engine, "t0"), _used(engine, "t1")) == (10, 20)

    async def write(seq: int, tokens: dict[str, int], *, durable: bool = True) -> list[Outgoing]:
        outs = engine.early(seq, [_event(t, n, seq) for t, n in tokens.items()], NOW)
        if not durable:
            return outs  # prepared, then its prepare failed: never written, never settled
        for t, n in tokens.items():
            store.tokens[t] += n
        return outs + await engine.check(
            _touches(*tokens), NOW, settle_upto=seq, durable_seqs={seq}
        )

    # Both quotas touched, one read (t0: the longest unread). t1 keeps its
    # base plus the write's 35 tokens: what the store has.
    outs = await write(1, {"t0": 5, "t1": 35})
    assert store.reads[-1] == ["t0"]
    assert (_used(engine, "t0"), _used(engine, "t1")) == (15, 55)
    assert _alerts(outs) == [("t1", 50, 55)]
    # A batch that was prepared and dropped (revoked) never joins the base,
    # not even when a later write settles past it.
    await write(2, {"t0": 1000}, durable=False)
    outs = await write(3, {"t0": 1, "t1": 20})
    assert store.reads[-1] == ["t1"]  # t1 read again: it had waited longest
    assert (_used(engine, "t0"), _used(engine, "t1")) == (16, 75)
    assert _alerts(outs) == []  # 75 of 100: no new threshold
    outs = await write(4, {"t0": 1, "t1": 5})
    assert store.reads[-1] == ["t0"]
    assert (_used(engine, "t0"), _used(engine, "t1")) == (17, 80)
    assert _alerts(outs) == [("t1", 80, 80)]  # once, from the folded bound
    # The read that replaces the folded base counts nothing twice.
    assert await engine.check((), NOW) == []
    assert store.reads[-1] == ["t1"]
    assert (_used(engine, "t0"), _used(engine, "t1")) == (17, 80)
    assert engine.states[_key("t1")].used == 80


async def test_a_crossing_of_other_workers_events_is_found_at_the_deferred_read() -> None:
    store = Store()
    engine = _engine(store, cap=1, limit=100)
    engine._recheck.clear()
    await engine.check(_touches("t0"), NOW)
    await engine.check(_touches("t1"), NOW)
    store.tokens["t1"] = 90  # another worker's partitions (a prefix quota)
    outs = engine.early(1, [_event("t0", 1), _event("t1", 1)], NOW)
    store.tokens.update(t0=1, t1=91)
    outs += await engine.check(_touches("t0", "t1"), NOW, settle_upto=1, durable_seqs={1})
    assert store.reads[-1] == ["t0"]
    assert _alerts(outs) == []  # this worker's bound: 1 of 100
    outs = await engine.check((), NOW)  # the next tick or write reads t1
    assert _alerts(outs) == [("t1", 50, 91), ("t1", 80, 91)]


async def test_a_changed_definition_is_not_left_deferred_with_its_old_measure() -> None:
    store = Store()
    engine = _engine(store, cap=1)
    engine._recheck.clear()
    await engine.check(_touches("t0", "t1"), NOW)
    assert list(engine.reads.deferred) == [(_key("t1"), START)]
    engine.apply_definition(_key("t1"), QuotaDefinition(
        quota_id="q", tenant_id="t1", metric="output", period="day", limit=5))  # fmt: skip
    assert engine._recheck == {_key("t1")}  # checked again as the new definition
    store.tokens["t1"] = 7  # input tokens: what the old definition measured
    await engine.check((), NOW)
    assert store.reads[-1] == ["t1"]  # once
    assert engine.states[_key("t1")].used == 0  # no output tokens: the new measure
    assert engine.reads.deferred == {}


async def test_the_processor_folds_its_write_into_the_quotas_left_unread() -> None:
    store = MemorySink()
    reader = StoreReader(store)
    engine = QuotaEngine(reader, alerts_topic="alerts", state_topic="state",  # type: ignore[arg-type]
                         max_reads_per_check=1)  # fmt: skip
    for t in ("acme", "beta"):
        d = QuotaDefinition(quota_id="q", tenant_id=t, metric="input", period="day", limit=100)
        engine.apply_definition(_key(t), d)
    engine._recheck.clear()
    p = UsageProcessor(sink=store, producer=Sent(), committer=_always_commits, dlq_topic="dlq",
                       keyring=None, quotas=engine)  # fmt: skip
    now = datetime.now(UTC)

    def rec(offset: int, tenant: str, tokens: int) -> InRecord:
        ev = UsageEvent(event_id=f"e{offset}", tenant_id=tenant, occurred_at=now, model="m",
                        input_tokens=tokens, output_tokens=0)  # fmt: skip
        return InRecord("usage", 0, offset, tenant.encode(), encode_usage_event(ev))

    await p.process([rec(0, "acme/a", 10), rec(1, "beta/a", 20)])  # reads acme only
    await engine.check(())  # the tick reads beta
    await p.process([rec(2, "acme/a", 5), rec(3, "beta/a", 7)])  # reads acme, folds beta
    assert reader.reads == 3
    start, _ = period_bounds("day", now)
    bounds = [engine.pending.lower_bound((_key(t), start)) for t in ("acme", "beta")]
    assert bounds == [Usage(15, 0), Usage(27, 0)]  # what the store has


async def test_a_deferred_read_is_made_once_even_when_touched_again() -> None:
    store = Store()
    engine = _engine(store, cap=1)
    engine._recheck.clear()
    await engine.check(_touches("t0", "t1"), NOW)  # t1 deferred
    await engine.check(_touches("t1"), NOW)  # touched again: read now, not left queued
    await engine.check((), NOW)
    await engine.check((), NOW)
    assert store.reads == [["t0"], ["t1"]]
    assert engine.reads.deferred == {}


async def test_a_deferred_read_of_a_deleted_quota_is_dropped_unread() -> None:
    store = Store()
    engine = _engine(store, cap=1)
    engine._recheck.clear()
    await engine.check(_touches("t0", "t1", "t2"), NOW)
    engine.apply_definition(_key("t1"), None)
    await engine.check((), NOW)
    await engine.check((), NOW)
    assert store.reads == [["t0"], ["t2"]]
    assert engine.reads.deferred == {}


async def test_deferred_quotas_nothing_touched_are_evaluated_only_when_read() -> None:
    """Their bounds have not moved: evaluating thousands of them per check was
    most of a fleet's check cost (bench/quota_engine_bench.py)."""
    store = Store()
    engine = _engine(store, cap=2)
    engine._recheck.clear()
    for _ in range(3):  # every quota read once: all have a bound
        await engine.check(_touches(*TENANTS), NOW)
    await engine.check(_touches(*TENANTS), NOW)  # 2 read, 3 deferred and evaluated
    evaluated = evaluations(engine)
    await engine.check((), NOW)
    assert len(evaluated) == 2 == len(store.reads[-1])  # the two read, no other
    await engine.check(_touches("t0"), NOW)  # touched: evaluated (read or not)
    assert _key("t0") in evaluated[2:]


async def test_the_quotas_of_a_failed_read_wait_for_the_next_check() -> None:
    store = Store()
    engine = _engine(store, cap=1)
    engine._recheck.clear()
    store.tokens = {}  # every read fails (KeyError): the store is away
    with pytest.raises(KeyError):
        await engine.check(_touches("t0", "t1"), NOW)
    assert set(engine.reads.deferred) == {(_key("t0"), START), (_key("t1"), START)}
    store.tokens = dict.fromkeys(TENANTS, 0)
    await engine.check((), NOW)
    await engine.check((), NOW)
    assert store.reads == [["t0"], ["t0"], ["t1"]]
