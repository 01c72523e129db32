"""The `tokenpulse` command: one entry point, one module per verb group.

Each verb module defines `register(subparsers)` and sets `func` on its
parser; `main` dispatches and maps failures to exit codes that scripts can
rely on (see EPILOG and tokenpulse.cli._common).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tokenpulse import __version__
from tokenpulse.cli._common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Formatter
from tokenpulse.errors import TokenpulseError

# Verb modules, in the order `tokenpulse --help` lists them. A module that
# is not there yet (a verb still being built) is simply absent from --help.
_VERB_MODULES = (
    "tokenpulse.cli.dev",
    "tokenpulse.cli.db",
    "tokenpulse.cli.worker",
    "tokenpulse.cli.simulate",
    "tokenpulse.cli.quota",
    "tokenpulse.cli.bill",
    "tokenpulse.cli.capacity",
    "tokenpulse.cli.report",
    "tokenpulse.cli.reconcile",
    "tokenpulse.cli.dlq",
    "tokenpulse.cli.bench",
    "tokenpulse.cli.demo",
)

DESCRIPTION = """\
Real-time token-usage metering for AI agents: usage events on Kafka, stream
processors that meter them per tenant and enforce quotas, ClickHouse for
billing and GPU capacity planning. `tokenpulse VERB --help` shows each verb
with examples."""

EPILOG = """\
a typical session:
  tokenpulse dev up                  # real Kafka + ClickHouse on 127.0.0.1 (no Docker)
  tokenpulse db migrate              # create or upgrade the schema (idempotent)
  tokenpulse worker &                # the stream processors; Ctrl-C stops cleanly
  tokenpulse quota set --tenant acme --period day --limit 20000000
  tokenpulse simulate --events 20000 --tenants 40
  tokenpulse bill --month 2026-11    # invoices from the price book
  tokenpulse dev down
  or all of it at once: tokenpulse demo

connection (every verb):
  KAFKA_BOOTSTRAP_SERVERS   default: from `dev up`, else 127.0.0.1:9092
  CLICKHOUSE_URL            http://user:password@host:port/database
  TOKENPULSE_TOPIC_PREFIX   prefix for every topic name (TOKENPULSE_TOPIC_SUFFIX too)

output: progress goes to stderr (a bar on a terminal, log lines otherwise);
results go to stdout. `--format json` on commands that read prints one JSON
document on stdout and errors as {"error": {...}} on stderr.

exit codes:
  0    success
  1    an error with a one-line message (tokenpulse: error: ...), or
       differences found (reconcile)
  2    usage error (unknown verb, bad or missing flags)
  70   internal failure: the worker stopped on an error retrying could not fix
  130  interrupted (Ctrl-C)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenpulse",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"tokenpulse {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for name in _VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # --help and --version exit 0 and usage errors exit 2 through argparse's SystemExit.
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        rc: int = args.func(args)
    except TokenpulseError as exc:
        if getattr(args, "format", None) == "json":
            import orjson

            sys.stderr.write(orjson.dumps({"error": exc.to_dict()}).decode() + "\n")
        else:
            sys.stderr.write(f"tokenpulse: error: {exc.message}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("tokenpulse: interrupted\n")
        return EXIT_INTERRUPTED
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
