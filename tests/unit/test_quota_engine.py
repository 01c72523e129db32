"""The quota engine with an in-memory usage reader: alert ids, limit raises, replays."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenpulse.schemas import QuotaDefinition, decode_quota_alert, decode_quota_state
from tokenpulse.schemas.quota import quota_alert_id, quota_state_key
from tokenpulse.streams.quota_logic import Usage, period_bounds
from tokenpulse.streams.quotas import QuotaEngine, Touch
from tokenpulse.streams.usage_query import UsageRequest

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Reader:
    def __init__(self) -> None:
        self.input_tokens = 0

    async def usage(
        self, tenant_prefix: str, model: str | None, start: datetime, end: datetime
    ) -> Usage:
        return Usage(input_tokens=self.input_tokens)

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        return [Usage(input_tokens=self.input_tokens) for _ in requests]


def _quota(limit: int) -> QuotaDefinition:
    return QuotaDefinition(
        quota_id="q1",
        tenant_id="acme",
        metric="input",
        period="day",
        limit=limit,
        thresholds_pct=(50, 100),
    )


def _engine(reader: Reader) -> QuotaEngine:
    return QuotaEngine(reader, alerts_topic="alerts", state_topic="state")


KEY = quota_state_key("acme", "q1")
TOUCH = Touch("acme/a", "m", NOW, "e1")


def test_alert_id_pins_the_limit_golden() -> None:
    # Pinned (sha256 of "acme\x1fq1\x1f2026-11-25T00:00:00+00:00\x1f80\x1f1000"): consumers
    # dedupe by this id, so changing the recipe is a contract change.
    start = datetime(2026, 11, 25, tzinfo=UTC)
    assert quota_alert_id("acme", "q1", start, 80, 1000) == "942988ebb61e172c93eb4c5b5fc4e16f"
    assert quota_alert_id("acme", "q1", start, 80, Decimal("12.50")) == quota_alert_id(
        "acme", "q1", start, 80, Decimal("12.5")
    )


async def test_raised_limit_crossed_again_gets_a_new_alert_id_and_replay_keeps_it() -> None:
    reader = Reader()
    engine = _engine(reader)
    engine.apply_definition(KEY, _quota(1000))
    reader.input_tokens = 1200
    first = [
        decode_quota_alert(o.value) for o in await engine.check([TOUCH], NOW) if o.topic == "alerts"
    ]
    assert sorted(a.threshold_pct for a in first) == [50, 100]

    # Raise the limit in the same period; usage grows past the new thresholds.
    engine.apply_definition(KEY, _quota(2000))
    reader.input_tokens = 2100
    outs = await engine.check([TOUCH], NOW)
    second = [decode_quota_alert(o.value) for o in outs if o.topic == "alerts"]
    assert sorted(a.threshold_pct for a in second) == [50, 100]
    assert {a.limit for a in second} == {2000}
    assert not {a.alert_id for a in first} & {a.alert_id for a in second}
    start, _ = period_bounds("day", NOW)
    assert {a.alert_id for a in second} == {
        quota_alert_id("acme", "q1", start, pct, 2000) for pct in (50, 100)
    }

    # Replay after a crash between alerts and state: same ids again.
    replay = _engine(reader)
    replay.apply_definition(KEY, _quota(2000))
    again = [
        decode_quota_alert(o.value) for o in await replay.check([TOUCH], NOW) if o.topic == "alerts"
    ]
    assert {a.alert_id for a in again} == {a.alert_id for a in second}

    # Replay after the state was published: nothing is announced twice.
    state = decode_quota_state([o.value for o in outs if o.topic == "state"][-1])
    settled = _engine(reader)
    settled.apply_definition(KEY, _quota(2000))
    settled.apply_state(KEY, state)
    assert [o for o in await settled.check([TOUCH], NOW) if o.topic == "alerts"] == []


def test_watches_covers_every_level_of_the_lineage_and_follows_definition_changes() -> None:
    from tokenpulse.schemas import QuotaDefinition, quota_state_key
    from tokenpulse.streams.quotas import QuotaEngine

    class NoReader:
        pass

    engine = QuotaEngine(NoReader(), alerts_topic="a", state_topic="s")  # type: ignore[arg-type]
    assert not engine.watches("acme/research/agent-7")
    d = QuotaDefinition(
        quota_id="q", tenant_id="acme/research", metric="total", period="day", limit=10
    )
    engine.apply_definition(quota_state_key("acme/research", "q"), d)
    assert engine.watches("acme/research/agent-7")  # a descendant
    assert engine.watches("acme/research")
    assert not engine.watches("acme")  # an ancestor is not covered by a child's quota
    assert not engine.watches("acme/researchers")  # a string prefix is not a parent
    batch = {"acme/research/agent-7", "acme/research", "acme", "acme/researchers"}
    assert engine.covered(batch) == {"acme/research/agent-7", "acme/research"}
    engine.apply_definition(quota_state_key("acme/research", "q"), None)
    assert not engine.watches("acme/research/agent-7")  # the cache followed the delete
    assert engine.covered(batch) == set()


def test_covered_stays_exact_when_its_cache_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenpulse.schemas import QuotaDefinition, quota_state_key
    from tokenpulse.streams import quotas
    from tokenpulse.streams.quotas import QuotaEngine

    monkeypatch.setattr(quotas, "_WATCH_CACHE_MAX", 4)
    engine = QuotaEngine(object(), alerts_topic="a", state_topic="s")  # type: ignore[arg-type]
    d = QuotaDefinition(quota_id="q", tenant_id="acme", metric="total", period="day", limit=10)
    engine.apply_definition(quota_state_key("acme", "q"), d)
    assert engine.covered({"acme/a", "globex"}) == {"acme/a"}
    # More than the cache holds, in one call: none of them is forgotten midway.
    batch = {"acme/a"} | {f"acme/t{i}" for i in range(5)} | {f"other{i}" for i in range(5)}
    assert engine.covered(batch) == {"acme/a"} | {f"acme/t{i}" for i in range(5)}
    assert engine.covered({"acme/a", "other1"}) == {"acme/a"}
    assert engine.watches("acme/t3")
    assert not engine.watches("globex")


class Periods(Reader):
    """Records the periods each batched read asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[list[datetime]] = []

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        self.starts.append([r.start for r in requests])
        return await super().usage_many(requests)


async def test_events_of_one_minute_in_two_periods_count_toward_both() -> None:
    """A batch's events share their period per minute, unless a bound splits the minute.

    Amsterdam's offset was +00:19:32 until 1937: its day of 1930-05-04
    began at 23:40:28 UTC, inside a minute.
    """
    reader = Periods()
    engine = _engine(reader)
    d = QuotaDefinition(quota_id="ams", tenant_id="acme", metric="input", period="day",
                        limit=100, timezone="Europe/Amsterdam")  # fmt: skip
    engine.apply_definition(quota_state_key("acme", "ams"), d)
    engine._recheck.clear()
    before = datetime(1930, 5, 3, 23, 40, 27, 500000, tzinfo=UTC)
    after = datetime(1930, 5, 3, 23, 40, 28, 500000, tzinfo=UTC)
    await engine.check([Touch("acme/a", "m", before, "e1"), Touch("acme/a", "m", after, "e2")])
    (starts,) = reader.starts
    assert starts == [period_bounds("day", before, "Europe/Amsterdam")[0],
                      period_bounds("day", after, "Europe/Amsterdam")[0]]  # fmt: skip
    assert starts[0] != starts[1]
    # Whole-minute periods: the minute's events share one, read once.
    engine.apply_definition(quota_state_key("acme", "ams"), None)
    engine.apply_definition(quota_state_key("acme", "q1"), _quota(100))
    engine._recheck.clear()
    now = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)
    await engine.check([Touch("acme/a", "m", now, "e3"), Touch("acme/b", "m", now, "e4")])
    assert reader.starts[1] == [period_bounds("day", now)[0]]
