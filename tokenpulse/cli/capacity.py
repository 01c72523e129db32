"""`tokenpulse capacity`: peak tokens/s per model and region, GPUs needed, forecast."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, example_file
from tokenpulse.cli._progress import phase
from tokenpulse.config import Settings
from tokenpulse.errors import ConfigError

DEFAULT_SERVING = Path("examples/serving.toml")


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "capacity",
        help="peak tokens/s, GPUs needed and a forecast per model",
        description="Per model and region: tokens/s percentiles of the per-minute demand in "
        "the window, the GPUs that demand needs with headroom (from the serving table: "
        "tokens/s per GPU per model), and a trend x hour-of-week forecast for the coming "
        "weeks. See sinks/capacity.py and docs/queries.md for the method.",
        example_lines=(
            "tokenpulse capacity --weeks 8",
            "tokenpulse capacity --days 7 --until 2026-11-30 --format json",
            "tokenpulse capacity --serving examples/serving.toml --headroom 0.3",
        ),
    )
    p.add_argument("--weeks", type=int, default=8, help="weeks to forecast (default 8)")
    p.add_argument("--days", type=int, default=28, help="history window in days (default 28)")
    p.add_argument(
        "--until",
        help="end of the window, YYYY-MM-DD[THH:MM] UTC (default: now, to the minute)",
    )
    p.add_argument(
        "--serving",
        type=Path,
        default=None,
        help="serving table TOML (default: examples/serving.toml here, else the project's)",
    )
    p.add_argument("--headroom", type=float, help="override the serving table's headroom")
    p.add_argument("--database", help="database (default: from CLICKHOUSE_URL)")
    add_format(p, ("table", "json"))
    p.set_defaults(func=run)


def _until(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--until {text!r} is not YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).replace(second=0, microsecond=0)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tokenpulse.sinks._client import sync_client
    from tokenpulse.sinks.capacity import fetch_minute_demand, load_serving, plan_capacity

    serving = load_serving(args.serving or example_file(DEFAULT_SERVING.name))
    if args.headroom is not None:
        serving = replace(serving, headroom=args.headroom)
    end = _until(args.until)
    start = end - timedelta(days=args.days)
    settings = Settings.from_env()
    client = sync_client(settings.clickhouse)
    database = args.database or settings.clickhouse.database
    try:
        with phase(f"reading {args.days} days of per-minute demand from {database}"):
            demand = fetch_minute_demand(client, database, start, end)
    finally:
        client.close()
    plans = plan_capacity(demand, serving, start, end, args.weeks)
    if args.format == "json":
        doc = {
            "window": {"start": start.isoformat(), "end": end.isoformat()},
            "headroom": serving.headroom,
            "sizing": serving.sizing,
            "capacity": [c.to_dict() for c in plans],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    out = [
        f"window {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC;"
        f" sizing {serving.sizing} + {serving.headroom:.0%} headroom",
        f"{'model':<18}{'region':<12}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}  gpus now"
        f" -> in {args.weeks} weeks",
    ]
    for c in plans:
        later = c.forecast[-1].gpus if c.forecast else {}
        gpus = ", ".join(f"{g} {n}->{later.get(g, '?')}" for g, n in c.gpus.items()) or (
            "no serving entry"
        )
        r = c.rates
        out.append(
            f"{c.model:<18}{c.region or '-':<12}{r['p50']:>10.1f}{r['p95']:>10.1f}"
            f"{r['p99']:>10.1f}{r['max']:>10.1f}  {gpus}"
        )
    if not plans:
        out.append("no demand in the window")
    sys.stdout.write("\n".join(out) + "\n")
    return 0
