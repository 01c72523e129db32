"""`tokenpulse capacity` and `bill --chargeback` on events written through the sink."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.cli import main
from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.sinks.synthetic import as_batches

pytestmark = pytest.mark.integration

MON = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
TEN = MON + timedelta(hours=10)


def _ev(i: int, at: datetime, inp: int, out: int, tenant: str = "acme/research/a7") -> UsageEvent:
    return UsageEvent(
        event_id=f"cap-{i}",
        tenant_id=tenant,
        occurred_at=at,
        model="m",
        input_tokens=inp,
        output_tokens=out,
        region="eu",
    )


async def test_capacity_and_chargeback_match_the_hand_computed_case(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = clickhouse_database
    migrate(clickhouse_client, RenderOptions(database=db))
    # Week 1: 60k tokens in Monday 10:00 (1000 tokens/s); week 2: 120k in 10:00
    # and 60k in 10:01. Several events per minute: the minute sums them.
    events = [
        _ev(0, TEN + timedelta(seconds=1), 20_000, 10_000),
        _ev(1, TEN + timedelta(seconds=30), 30_000, 0, tenant="acme/ops"),
        _ev(2, TEN + timedelta(weeks=1, seconds=5), 100_000, 20_000),
        _ev(3, TEN + timedelta(weeks=1, minutes=1, seconds=59), 0, 60_000),
        _ev(4, MON - timedelta(days=20), 1_000_000, 0),  # October, outside the window
    ]
    async with ClickHouseSink(services.clickhouse_url, database=db) as sink:
        for batch in as_batches(events, partitions=2, batch_rows=2):
            await sink.write(batch)
            await sink.write(batch)  # replayed: must not change any figure

    serving = tmp_path / "serving.toml"
    serving.write_text('headroom = 0.30\nsizing = "max"\n[models.m]\nG = 500\n', encoding="utf-8")
    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url)
    argv = ["capacity", "--until", "2026-11-16", "--days", "14", "--weeks", "2"]
    assert main([*argv, "--serving", str(serving), "--format", "json", "--database", db]) == 0
    doc = json.loads(capsys.readouterr().out)
    (cap,) = doc["capacity"]
    assert (cap["model"], cap["region"], cap["minutes"]) == ("m", "eu", 20_160)
    assert cap["tokens_per_s"] == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 2000.0}
    assert cap["gpus"] == {"G": 6}
    assert cap["weekly_totals"] == [60_000, 180_000]
    assert cap["hour_of_week_peak"][10] == 2000.0
    assert cap["seasonal_peak_index"] == 168.0
    assert cap["burst_factor"] == 60.0
    assert [f["weekly_tokens"] for f in cap["forecast"]] == [300_000, 420_000]
    assert [f["peak_tokens_per_s"] for f in cap["forecast"]] == [5000.0, 7000.0]
    assert [f["gpus"] for f in cap["forecast"]] == [{"G": 13}, {"G": 19}]
    assert main([*argv, "--serving", str(serving), "--database", db]) == 0
    assert "G 6->19" in capsys.readouterr().out

    book = tmp_path / "pricebook.toml"
    book.write_text(
        'currency = "USD"\n[[versions]]\nid = "v"\neffective_from = 2026-01-01\n'
        '[versions.models.m]\ninput = "10.00"\noutput = "20.00"\n',
        encoding="utf-8",
    )
    bill = ["bill", "--month", "2026-11", "--chargeback", "--format", "json"]
    assert main([*bill, "--pricebook", str(book), "--database", db, "--tenant", "acme"]) == 0
    rows = {
        (r["node"], r["model"], r["region"]): r
        for r in json.loads(capsys.readouterr().out)["chargeback"]
    }
    # acme/research/a7: input 120k x 10 + output 90k x 20 per million = 1.20 + 1.80
    a7 = rows[("acme/research/a7", "*", "*")]
    assert (a7["tokens"], a7["cost"]) == (210_000, "3.00")
    assert (a7["prev_tokens"], a7["prev_cost"]) == (1_000_000, "10.00")
    assert a7["tokens_growth_pct"] == "-79.0"
    acme = rows[("acme", "*", "*")]
    assert (acme["tokens"], acme["cost"]) == (240_000, "3.30")
    assert rows[("acme", "m", "*")]["tokens"] == 240_000
    assert rows[("acme", "*", "eu")]["cost"] == "3.30"
