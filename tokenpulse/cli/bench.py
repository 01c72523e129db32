"""`tokenpulse bench`: the real pipeline on the local stack, measured end to end.

Prints one table: sustained events/s through one worker (one event per
record and in SDK batch envelopes, signed or not; each the median of
three drains by fresh workers), the raw Kafka limit (Kafka's perf
tools) and a quixstreams peer on the same broker with the ratios,
freshness and alert latency at about half load, worker RSS with many
active tenants and CPU seconds per 100,000 events. `--quick` is a short
smoke run; the default is the full run (several minutes).
Also runnable as `python -m tokenpulse.cli.bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

EXAMPLE = """\
examples:
  tokenpulse bench --quick                      # smoke run, about 2 minutes
  tokenpulse bench                              # full run (100,000 tenants, 300,000 events)
  tokenpulse bench --drains 5                   # each throughput row the median of 5 drains
  tokenpulse bench --profile /tmp/worker.txt    # also py-spy the worker while it drains
Uses KAFKA_BOOTSTRAP_SERVERS and CLICKHOUSE_URL when both are set; otherwise it
starts a local stack in a temporary directory and stops it afterwards.
"""


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark the pipeline end to end (throughput, freshness, alerts, RSS)",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="short smoke run with small loads")
    p.add_argument("--events", type=int, default=None, help="fleet backlog records")
    p.add_argument("--tenants", type=int, default=None, help="active tenants in the RSS phase")
    p.add_argument(
        "--drains",
        type=_positive,
        default=None,
        help="drains of each backlog, each by a fresh worker; a throughput row is their median "
        "(3; --quick: 1)",
    )
    p.add_argument(
        "--profile", type=Path, default=None, help="write py-spy stacks of the draining worker"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the bench's worker and temporary stack are stopped.

    Without it a `kill` (a CI timeout, a supervisor) left the detached Kafka
    and ClickHouse processes of the temporary stack running.
    """

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    from tokenpulse.bench.run import BenchConfig, run_bench
    from tokenpulse.bench.services import obtain_services

    config = BenchConfig.quick_run() if args.quick else BenchConfig()
    if args.events:
        config = replace(config, events=args.events)
    if args.tenants:
        config = replace(config, many_tenants=args.tenants)
    if args.drains:
        config = replace(config, drains=args.drains)
    if args.profile:
        config = replace(config, profile_path=args.profile)

    def say(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    with sigterm_unwinds(), obtain_services() as services:
        say(f"services: {services.origin} (Kafka {services.bootstrap})")
        result = run_bench(config, services, say)
    print(result.table())
    if result.profile_top:
        print("\nworker profile (py-spy, share of samples on top of the stack):")
        print("\n".join(result.profile_top))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="tokenpulse bench",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
