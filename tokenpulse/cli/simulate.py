"""`tokenpulse simulate`: send a simulated fleet of agents through the SDK."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, topic_names, write_json
from tokenpulse.cli._progress import Progress
from tokenpulse.config import Settings
from tokenpulse.fleet import FleetConfig, tenant_ids


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "simulate",
        help="publish a simulated agent fleet's usage through the SDK",
        description="Publish usage events of a simulated agent fleet to the usage topic "
        "(tokenpulse.usage.v1, with TOKENPULSE_TOPIC_PREFIX/SUFFIX) through the producer SDK, "
        "then print what the pipeline must count: unique accepted events and DLQ records.",
        example_lines=(
            "tokenpulse simulate --events 2000 --tenants 10 --seed 7",
            "tokenpulse simulate --events 1000 --rate 500 --keyring keyring.json --format json",
        ),
        notes="--keyring signs each org's events with its own key (the file is created if "
        "missing);\nrun the worker with TOKENPULSE_KEYRING_FILE set to the same file.",
    )
    add_fleet_arguments(p)
    p.add_argument(
        "--topic",
        default=None,
        help="usage topic (default tokenpulse.usage.v1 with TOKENPULSE_TOPIC_PREFIX/SUFFIX)",
    )
    p.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as it can)")
    p.add_argument(
        "--keyring",
        default=None,
        help="sign with one key per org from this keyring file (created if missing)",
    )
    add_format(p)
    p.set_defaults(func=run)


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=20_000, help="records to send (default 20000)")
    p.add_argument("--tenants", type=int, default=40, help="leaf tenants (default 40)")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: time-based)")
    p.add_argument(
        "--duplicate-pct", type=float, default=1.0, help="re-sent events, %% (default 1.0)"
    )
    p.add_argument(
        "--malformed-pct",
        type=float,
        default=0.5,
        help="records the DLQ must get, %% (default 0.5)",
    )
    p.add_argument(
        "--late-pct",
        type=float,
        default=0.5,
        help="events older than the lateness, %% (default 0.5)",
    )


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

    from tokenpulse.simulate import SimulationResult, ensure_keyring, org_of, run_simulation

    settings = Settings.from_env()
    config = fleet_config(args)
    secrets = None
    if args.keyring:
        orgs = sorted({org_of(t) for t in tenant_ids(config.tenants)} | {"acme"})
        secrets = ensure_keyring(Path(args.keyring).expanduser(), orgs)

    topic = args.topic or topic_names().usage

    async def send(bar: Progress) -> SimulationResult:
        if args.topic is None:
            # Topics are not auto-created: make the worker's topics exist (as the
            # worker would, same partitions), so simulate works before a worker ran.
            from tokenpulse.streams.settings import WorkerSettings
            from tokenpulse.streams.topics import ensure_topics

            await ensure_topics(WorkerSettings.from_env())
        return await run_simulation(
            config,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=topic,
            org_secrets=secrets,
            rate_eps=args.rate,
            progress=bar.update,
        )

    with Progress(f"sending to {topic}", total=config.events, unit="records") as bar:
        result = asyncio.run(send(bar))
        bar.update(sum(result.sent.values()))
    summary = {
        "topic": topic,
        "seed": config.seed,
        "sent": {str(k): v for k, v in result.sent.items()},
        "expected_events": result.expected_events,
        "expected_dlq": result.expected_dlq,
        "elapsed_s": round(result.elapsed_s, 3),
        "events_per_s": round(sum(result.sent.values()) / max(result.elapsed_s, 1e-9)),
    }
    if args.format == "json":
        write_json(summary)
    else:
        for key, value in summary.items():
            sys.stdout.write(f"{key:16} {value}\n")
    return 0
