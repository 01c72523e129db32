"""The `tokenpulse` command: one entry point, one module per verb group.

Each verb module defines `register(subparsers)` and sets `func` on its
parser; `main` dispatches and maps TokenpulseError to exit codes that
scripts can rely on:

    0  success
    1  a TokenpulseError (message on stderr, `--format json` gives the fields)
    2  usage error (argparse)
    130 interrupted
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tokenpulse.errors import TokenpulseError

# Verb modules, in the order `tokenpulse --help` lists them. A module that
# is not there yet (a verb still being built) is simply absent from --help.
_VERB_MODULES = (
    "tokenpulse.cli.dev",
    "tokenpulse.cli.worker",
    "tokenpulse.cli.simulate",
    "tokenpulse.cli.quota",
    "tokenpulse.cli.db",
    "tokenpulse.cli.bill",
    "tokenpulse.cli.capacity",
    "tokenpulse.cli.report",
    "tokenpulse.cli.reconcile",
    "tokenpulse.cli.bench",
    "tokenpulse.cli.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenpulse",
        description="Real-time token-usage metering for AI agents.",
        epilog="Example: tokenpulse dev up && tokenpulse demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc: int = args.func(args)
    except TokenpulseError as exc:
        if getattr(args, "format", None) == "json":
            import orjson

            sys.stderr.write(orjson.dumps({"error": exc.to_dict()}).decode() + "\n")
        else:
            sys.stderr.write(f"tokenpulse: error: {exc.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
