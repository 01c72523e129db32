"""`tokenpulse dev up|down|status`: the local stack (real Kafka + ClickHouse engine)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, write_json
from tokenpulse.cli._progress import Progress, ProgressLogHandler, phase
from tokenpulse.local.stack import LocalStack

_NOTES = """\
environment:
  TOKENPULSE_HOME                  where data, logs and dev/connection.env live
  TOKENPULSE_CACHE_DIR             where Kafka's jars are cached
  TOKENPULSE_KAFKA_PORT            default 9092
  TOKENPULSE_KAFKA_CONTROLLER_PORT default 9093
  TOKENPULSE_CLICKHOUSE_PORT       default 8123

Other commands read the connection settings `dev up` writes, so after it
`tokenpulse db migrate` and the rest need no variables. To export them to
other tools: eval "$(tokenpulse dev status --format env)"
"""


def register(subparsers: Any) -> None:
    parser = add_parser(
        subparsers,
        "dev",
        help="the local Kafka + ClickHouse stack: up, down, status",
        description=(
            "Run real Apache Kafka (jars from Maven Central, one KRaft node) and the "
            "real ClickHouse engine behind its HTTP interface on 127.0.0.1."
        ),
        example_lines=(
            "tokenpulse dev up                      # first run downloads Kafka's jars (~60 MB)",
            "tokenpulse dev status",
            "tokenpulse dev status --format json",
            "tokenpulse dev down                    # stops both; data stays in TOKENPULSE_HOME",
        ),
        notes=_NOTES,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = add_parser(
        actions,
        "up",
        help="start both services (no-op for a running one)",
        description="Start Kafka and the ClickHouse endpoint, create the database and write "
        "the connection file. Shows each phase with its elapsed time.",
        example_lines=("tokenpulse dev up",),
    )
    up.set_defaults(func=_up)
    down = add_parser(
        actions,
        "down",
        help="stop both services; data is kept",
        description="Stop Kafka and the ClickHouse endpoint and remove the connection file.",
        example_lines=("tokenpulse dev down",),
    )
    down.set_defaults(func=_down)
    status = add_parser(
        actions,
        "status",
        help="show what runs and how to connect",
        description="Whether each service runs, where, and its log file.",
        example_lines=(
            "tokenpulse dev status --format json",
            "tokenpulse dev status --format env",
        ),
    )
    add_format(status, ("text", "env", "json"))
    status.set_defaults(func=_status)


def _attach_log(progress: Progress) -> ProgressLogHandler:
    # The stack logs its steps (formatting storage, starting Kafka, ...): show
    # them through the progress display so lines and the bar do not mix.
    handler = ProgressLogHandler(progress)
    logger = logging.getLogger("tokenpulse.local")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


@contextmanager
def _step(label: str) -> Iterator[Progress]:
    logger = logging.getLogger("tokenpulse.local")
    with phase(label) as progress:
        handler = _attach_log(progress)
        try:
            yield progress
        finally:
            logger.removeHandler(handler)


def _up(args: argparse.Namespace) -> int:
    from tokenpulse.local.kafka import resolve_kafka_jars

    stack = LocalStack.default()
    started = time.monotonic()
    with _step("resolving Kafka jars (first run downloads about 60 MB)"):
        resolve_kafka_jars(stack.kafka.config.version)
    with _step("starting Kafka and ClickHouse"):
        stack.up()
    note = stack.compiler_note()
    if note is not None:
        sys.stderr.write(f"tokenpulse: note: {note}\n")
    sys.stderr.write(f"tokenpulse: local stack up in {time.monotonic() - started:.1f} s\n")
    sys.stdout.write("\n".join(stack.connection_lines()) + "\n")
    sys.stderr.write(f"tokenpulse: connection settings written to {stack.connection_file}\n")
    return 0


def _down(args: argparse.Namespace) -> int:
    with _step("stopping Kafka and ClickHouse"):
        LocalStack.default().down()
    sys.stderr.write("tokenpulse: local stack stopped (data kept)\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    stack = LocalStack.default()
    if args.format == "env":
        sys.stdout.write("\n".join(stack.connection_lines()) + "\n")
        return 0
    info = stack.status()
    if args.format == "json":
        write_json(info)
        return 0
    k, ch = info["kafka"], info["clickhouse"]
    lines = [
        f"home:       {info['home']}",
        f"kafka:      {'running' if k['running'] else 'stopped'}  {k['bootstrap']}"
        f"  (Kafka {k['version']}, JIT {k['compiler']}, log {k['log']})",
        f"clickhouse: {'running' if ch['running'] else 'stopped'}  {ch['url']}  (log {ch['log']})",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
