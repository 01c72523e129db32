"""GPU capacity planning: peak tokens/s per model and region, GPUs needed, forecast.

Demand is input + output tokens per minute from `demand_by_minute`. Over a
window of whole minutes (minutes without traffic count as 0 tokens/s):

- p50/p95/p99/max of the per-minute rate, percentiles by nearest rank
  (the value at rank ceil(p/100 x N) of the N sorted minutes);
- an hour-of-week profile (Monday 00:00 UTC = hour 0): mean tokens/s and the
  busiest minute of each of the 168 hours;
- GPUs needed = ceil(sizing rate x (1 + headroom) / tokens/s per GPU), per
  GPU type of the serving table, the sizing rate being the configured
  percentile (p99 by default);
- forecast for the next N weeks: a least-squares line through the window's
  weekly totals, times the peak hour-of-week seasonal index (tokens in that
  hour / mean hourly tokens), times the observed burst factor (sizing-rate
  minute / mean rate of the busiest hour of week), sized like the above.
"""

from __future__ import annotations

import math
import tomllib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tokenpulse.errors import ConfigError
from tokenpulse.sinks.migrations.ddl import check_identifier

PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
HOURS_PER_WEEK = 168


@dataclass(frozen=True)
class ServingTable:
    """Tokens/s one GPU of each type serves per model, plus sizing policy."""

    models: Mapping[str, Mapping[str, float]]
    headroom: float = 0.30
    sizing: str = "p99"

    def gpus_needed(self, model: str, tokens_per_s: float) -> dict[str, int]:
        return {
            gpu: math.ceil(tokens_per_s * (1 + self.headroom) / per_gpu - 1e-9)
            for gpu, per_gpu in self.models.get(model, {}).items()
        }


def parse_serving(data: Mapping[str, Any], source: str = "<memory>") -> ServingTable:
    headroom = data.get("headroom", 0.30)
    if isinstance(headroom, bool) or not isinstance(headroom, int | float) or headroom < 0:
        raise ConfigError(f"{source}: headroom must be a number >= 0 (0.30 = 30 %)")
    sizing = data.get("sizing", "p99")
    if sizing not in PERCENTILES:
        raise ConfigError(f"{source}: sizing {sizing!r} must be one of {', '.join(PERCENTILES)}")
    models: dict[str, dict[str, float]] = {}
    for model, gpus in dict(data.get("models", {})).items():
        if not isinstance(gpus, dict) or not gpus:
            raise ConfigError(f"{source}: model {model!r} needs `GPU_TYPE = tokens_per_s` entries")
        for gpu, rate in gpus.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
                raise ConfigError(
                    f"{source}: model {model!r} GPU {gpu!r}: tokens/s per GPU must be > 0"
                )
        models[model] = {g: float(r) for g, r in gpus.items()}
    return ServingTable(models, float(headroom), str(sizing))


def load_serving(path: Path) -> ServingTable:
    try:
        return parse_serving(tomllib.loads(path.read_text(encoding="utf-8")), str(path))
    except FileNotFoundError:
        raise ConfigError(f"serving table {path} not found; pass --serving PATH") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"serving table {path} is not valid TOML: {exc}") from None


def nearest_rank(sorted_values: Sequence[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def hour_of_week(ts: datetime) -> int:
    return ts.weekday() * 24 + ts.hour


def linear_trend(values: Sequence[float], ahead: int) -> list[float]:
    """Least-squares line through values[0..n-1], evaluated at n..n+ahead-1 (>= 0)."""
    n = len(values)
    if n == 0:
        return [0.0] * ahead
    if n == 1:
        return [max(0.0, values[0])] * ahead
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sxx
    return [max(0.0, mean_y + slope * (n + k - mean_x)) for k in range(ahead)]


@dataclass(frozen=True)
class WeekForecast:
    week_start: datetime
    weekly_tokens: float
    peak_tokens_per_s: float
    gpus: dict[str, int]


@dataclass(frozen=True)
class Capacity:
    model: str
    region: str
    minutes: int
    rates: dict[str, float]  # p50, p95, p99, max tokens/s
    sizing_tokens_per_s: float
    gpus: dict[str, int]
    hour_of_week_mean: list[float]  # 168 mean tokens/s
    hour_of_week_peak: list[float]  # 168 busiest-minute tokens/s
    weekly_totals: list[int]
    seasonal_peak_index: float
    burst_factor: float
    forecast: list[WeekForecast] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "region": self.region,
            "minutes": self.minutes,
            "tokens_per_s": {k: round(v, 3) for k, v in self.rates.items()},
            "sizing_tokens_per_s": round(self.sizing_tokens_per_s, 3),
            "gpus": self.gpus,
            "hour_of_week_mean": [round(v, 3) for v in self.hour_of_week_mean],
            "hour_of_week_peak": [round(v, 3) for v in self.hour_of_week_peak],
            "weekly_totals": self.weekly_totals,
            "seasonal_peak_index": round(self.seasonal_peak_index, 4),
            "burst_factor": round(self.burst_factor, 4),
            "forecast": [
                {
                    "week_start": f.week_start.date().isoformat(),
                    "weekly_tokens": round(f.weekly_tokens),
                    "peak_tokens_per_s": round(f.peak_tokens_per_s, 3),
                    "gpus": f.gpus,
                }
                for f in self.forecast
            ],
        }


def fetch_minute_demand(
    client: Any, database: str, start: datetime, end: datetime
) -> dict[tuple[str, str], dict[datetime, int]]:
    """Tokens per (model, region) per minute in [start, end), summed again for unmerged parts."""
    db = check_identifier(database, "database")
    sql = (
        "SELECT model, region, minute, sum(input_tokens) + sum(output_tokens)"
        f" FROM {db}.demand_by_minute"
        " WHERE minute >= {start:DateTime('UTC')} AND minute < {end:DateTime('UTC')}"
        " GROUP BY model, region, minute"
    )
    rows = client.query(sql, parameters={"start": start, "end": end}).result_rows
    out: dict[tuple[str, str], dict[datetime, int]] = defaultdict(dict)
    for model, region, minute, tokens in rows:
        ts = minute if minute.tzinfo else minute.replace(tzinfo=start.tzinfo)
        out[(str(model), str(region))][ts] = int(tokens)
    return dict(out)


def plan_capacity(
    demand: Mapping[tuple[str, str], Mapping[datetime, int]],
    serving: ServingTable,
    start: datetime,
    end: datetime,
    weeks_ahead: int = 8,
) -> list[Capacity]:
    """Capacity per (model, region) from per-minute tokens in the window [start, end)."""
    minutes = int((end - start).total_seconds() // 60)
    if minutes <= 0:
        raise ConfigError("capacity window is empty; choose --days >= 1")
    full_weeks = minutes // (7 * 24 * 60)
    week0 = end - timedelta(weeks=full_weeks)
    out = []
    for (model, region), series in sorted(demand.items()):
        rates = sorted(
            [tokens / 60 for tokens in series.values()] + [0.0] * (minutes - len(series))
        )
        stats = {name: nearest_rank(rates, pct) for name, pct in PERCENTILES.items()}
        sizing = stats[serving.sizing]
        how_tokens = [0] * HOURS_PER_WEEK
        how_minutes = [0] * HOURS_PER_WEEK
        how_peak = [0.0] * HOURS_PER_WEEK
        t = start
        while t < end:  # minute count per hour of week, for the means
            how_minutes[hour_of_week(t)] += 1
            t += timedelta(minutes=1)
        weekly = [0] * full_weeks
        season_tokens = [0] * HOURS_PER_WEEK
        for ts, tokens in series.items():
            h = hour_of_week(ts)
            how_tokens[h] += tokens
            how_peak[h] = max(how_peak[h], tokens / 60)
            if ts >= week0:
                weekly[int((ts - week0).total_seconds() // (7 * 86400))] += tokens
                season_tokens[h] += tokens
        how_mean = [
            how_tokens[h] / (how_minutes[h] * 60) if how_minutes[h] else 0.0
            for h in range(HOURS_PER_WEEK)
        ]
        total_full = sum(weekly)
        seasonal = max(season_tokens) / (total_full / HOURS_PER_WEEK) if total_full else 0.0
        peak_hour_mean = max(how_mean)
        burst = max(1.0, sizing / peak_hour_mean) if peak_hour_mean else 1.0
        forecast = []
        if full_weeks:
            for k, weekly_tokens in enumerate(linear_trend(weekly, weeks_ahead)):
                peak = weekly_tokens / HOURS_PER_WEEK * seasonal / 3600 * burst
                forecast.append(
                    WeekForecast(
                        end + timedelta(weeks=k),
                        weekly_tokens,
                        peak,
                        serving.gpus_needed(model, peak),
                    )
                )
        out.append(
            Capacity(
                model=model,
                region=region,
                minutes=minutes,
                rates=stats,
                sizing_tokens_per_s=sizing,
                gpus=serving.gpus_needed(model, sizing),
                hour_of_week_mean=how_mean,
                hour_of_week_peak=how_peak,
                weekly_totals=weekly,
                seasonal_peak_index=seasonal,
                burst_factor=burst,
                forecast=forecast,
            )
        )
    return out
