"""`tokenpulse dev up|down|status`: the local stack (real Kafka + ClickHouse engine)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import orjson

from tokenpulse.local.stack import LocalStack

_EPILOG = """\
examples:
  tokenpulse dev up                      # first run downloads Kafka's jars (~60 MB)
  eval "$(tokenpulse dev status --format env)"
  tokenpulse dev status --format json
  tokenpulse dev down                    # stops both; data stays in TOKENPULSE_HOME

environment:
  TOKENPULSE_HOME                  where data, logs and dev/connection.env live
  TOKENPULSE_CACHE_DIR             where Kafka's jars are cached
  TOKENPULSE_KAFKA_PORT            default 9092
  TOKENPULSE_KAFKA_CONTROLLER_PORT default 9093
  TOKENPULSE_CLICKHOUSE_PORT       default 8123
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="start/stop the local Kafka + ClickHouse stack (no Docker)",
        description=(
            "Run real Apache Kafka (jars from Maven Central, one KRaft node) and the "
            "real ClickHouse engine behind its HTTP interface on 127.0.0.1."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start both services (no-op for a running one)")
    up.set_defaults(func=_up)
    down = actions.add_parser("down", help="stop both services; data is kept")
    down.set_defaults(func=_down)
    status = actions.add_parser("status", help="show what runs and how to connect")
    status.add_argument(
        "--format",
        choices=("text", "env", "json"),
        default="text",
        help="env prints `export KAFKA_BOOTSTRAP_SERVERS=...` lines for eval",
    )
    status.set_defaults(func=_status)


def _progress_to_stderr() -> None:
    # Jar download and start-up take seconds to a minute: say what happens.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tokenpulse: %(message)s"))
    logger = logging.getLogger("tokenpulse.local")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _up(args: argparse.Namespace) -> int:
    _progress_to_stderr()
    stack = LocalStack.default()
    started = time.monotonic()
    stack.up()
    sys.stderr.write(f"tokenpulse: local stack up in {time.monotonic() - started:.1f} s\n")
    sys.stdout.write("\n".join(stack.connection_lines()) + "\n")
    sys.stderr.write(f"tokenpulse: connection settings written to {stack.connection_file}\n")
    return 0


def _down(args: argparse.Namespace) -> int:
    _progress_to_stderr()
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
        sys.stdout.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    k, ch = info["kafka"], info["clickhouse"]
    lines = [
        f"home:       {info['home']}",
        f"kafka:      {'running' if k['running'] else 'stopped'}  {k['bootstrap']}"
        f"  (Kafka {k['version']}, log {k['log']})",
        f"clickhouse: {'running' if ch['running'] else 'stopped'}  {ch['url']}  (log {ch['log']})",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
