"""Capacity arithmetic on a small case worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokenpulse.errors import ConfigError
from tokenpulse.sinks.capacity import (
    ServingTable,
    hour_of_week,
    linear_trend,
    nearest_rank,
    parse_serving,
    plan_capacity,
)

MON = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
SERVING = ServingTable({"m": {"G": 500.0}}, headroom=0.30, sizing="max")


def test_nearest_rank_percentiles_by_hand() -> None:
    rates = [10.0, 20.0, 30.0, 100.0]
    assert nearest_rank(rates, 50) == 20.0  # rank ceil(2.0) = 2
    assert nearest_rank(rates, 95) == 100.0  # rank ceil(3.8) = 4
    assert nearest_rank(rates, 25) == 10.0
    assert nearest_rank([], 99) == 0.0


def test_linear_trend_extends_the_least_squares_line() -> None:
    assert linear_trend([60_000, 180_000], 2) == [300_000, 420_000]
    assert linear_trend([10, 10, 10], 1) == [10]
    assert linear_trend([300, 200, 100], 4) == [0.0, 0.0, 0.0, 0.0]  # never negative
    assert linear_trend([5], 2) == [5, 5]


def test_hour_of_week_starts_monday_midnight() -> None:
    assert hour_of_week(MON) == 0
    assert hour_of_week(MON + timedelta(days=6, hours=23)) == 167


def test_two_weeks_of_monday_peaks_by_hand() -> None:
    ten = MON + timedelta(hours=10)
    demand = {
        ("m", "eu"): {
            ten: 60_000,  # 1000 tokens/s in week 1
            ten + timedelta(weeks=1): 120_000,  # 2000 tokens/s in week 2
            ten + timedelta(weeks=1, minutes=1): 60_000,
        }
    }
    (cap,) = plan_capacity(demand, SERVING, MON, MON + timedelta(weeks=2), weeks_ahead=2)
    assert cap.minutes == 20_160
    assert cap.rates == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 2000.0}
    assert cap.gpus == {"G": 6}  # ceil(2000 x 1.3 / 500) = ceil(5.2)
    assert cap.hour_of_week_mean[10] == pytest.approx(240_000 / (120 * 60))
    assert cap.hour_of_week_peak[10] == 2000.0
    assert cap.weekly_totals == [60_000, 180_000]
    assert cap.seasonal_peak_index == pytest.approx(168.0)  # all tokens in one hour of week
    assert cap.burst_factor == pytest.approx(60.0)  # 2000 / 33.33
    # next weeks: 300k and 420k tokens; peak = T/168 x 168 / 3600 x 60
    assert [f.weekly_tokens for f in cap.forecast] == pytest.approx([300_000, 420_000])
    assert [f.peak_tokens_per_s for f in cap.forecast] == pytest.approx([5000.0, 7000.0])
    assert [f.gpus for f in cap.forecast] == [{"G": 13}, {"G": 19}]
    assert cap.forecast[0].week_start == MON + timedelta(weeks=2)


def test_serving_table_validation() -> None:
    table = parse_serving({"headroom": 0.5, "sizing": "p95", "models": {"m": {"H100": 100}}})
    assert table.gpus_needed("m", 100) == {"H100": 2}  # 150 / 100 -> 2
    assert table.gpus_needed("m", 0) == {"H100": 0}
    assert table.gpus_needed("unknown", 10) == {}
    with pytest.raises(ConfigError, match="tokens/s per GPU must be > 0"):
        parse_serving({"models": {"m": {"H100": 0}}})
    with pytest.raises(ConfigError, match="sizing 'p90'"):
        parse_serving({"sizing": "p90"})
    with pytest.raises(ConfigError, match="headroom"):
        parse_serving({"headroom": -1})


def test_empty_window_is_an_error() -> None:
    with pytest.raises(ConfigError, match="window is empty"):
        plan_capacity({}, SERVING, MON, MON)
