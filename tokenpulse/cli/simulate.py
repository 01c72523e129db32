"""`tokenpulse simulate`: send a simulated fleet of agents through the SDK."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from tokenpulse.config import Settings
from tokenpulse.fleet import FleetConfig, tenant_ids

EXAMPLE = """\
examples:
  tokenpulse simulate --events 20000 --tenants 40
  tokenpulse simulate --events 5000 --rate 1000 --keyring ~/.local/state/tokenpulse/dev/keyring.json
"""


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="publish a simulated fleet's usage (Zipf tenants, duplicates, malformed, late)",
        description="Publish usage events of a simulated agent fleet to tokenpulse.usage.v1 "
        "through the producer SDK, then print what the pipeline must count.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_fleet_arguments(p)
    p.add_argument("--topic", default=None, help="usage topic (default tokenpulse.usage.v1)")
    p.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as it can)")
    p.add_argument(
        "--keyring",
        default=None,
        help="sign with one key per org from this keyring file (created if missing)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=20_000, help="records to send (default 20000)")
    p.add_argument("--tenants", type=int, default=40, help="leaf tenants (default 40)")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: time-based)")
    p.add_argument("--duplicate-pct", type=float, default=1.0)
    p.add_argument("--malformed-pct", type=float, default=0.5)
    p.add_argument("--late-pct", type=float, default=0.5)


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    import time

    seed = args.seed if args.seed is not None else int(time.time())
    return FleetConfig(
        events=args.events,
        tenants=args.tenants,
        seed=seed,
        duplicate_pct=args.duplicate_pct,
        malformed_pct=args.malformed_pct,
        late_pct=args.late_pct,
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tokenpulse.config import TOPIC_USAGE
    from tokenpulse.simulate import ensure_keyring, org_of, run_simulation

    settings = Settings.from_env()
    config = fleet_config(args)
    secrets = None
    if args.keyring:
        orgs = sorted({org_of(t) for t in tenant_ids(config.tenants)} | {"acme"})
        secrets = ensure_keyring(Path(args.keyring).expanduser(), orgs)

    def progress(n: int) -> None:
        if args.format == "text":
            sys.stderr.write(f"\rsent {n}/{config.events}")

    result = asyncio.run(
        run_simulation(
            config,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=args.topic or TOPIC_USAGE,
            org_secrets=secrets,
            rate_eps=args.rate,
            progress=progress,
        )
    )
    summary = {
        "seed": config.seed,
        "sent": {str(k): v for k, v in result.sent.items()},
        "expected_events": result.expected_events,
        "expected_dlq": result.expected_dlq,
        "elapsed_s": round(result.elapsed_s, 3),
        "events_per_s": round(sum(result.sent.values()) / max(result.elapsed_s, 1e-9)),
    }
    if args.format == "json":
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        sys.stderr.write("\n")
        for key, value in summary.items():
            sys.stdout.write(f"{key:16} {value}\n")
    return 0
