"""Helpers every verb shares: exit codes, `--format`, JSON output, topic names.

Kept here so that the verbs agree: the same exit codes, the same `--format`
spelling, and topic names that honour TOKENPULSE_TOPIC_PREFIX/SUFFIX exactly
as the worker does (a command reading the default topics while the worker
uses prefixed ones would report nonsense).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

# Exit codes scripts can rely on (documented in `tokenpulse --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # a TokenpulseError, or differences found (reconcile)
EXIT_USAGE = 2  # argparse: bad flags or arguments
EXIT_INTERNAL = 70  # EX_SOFTWARE: the worker stopped on an error retrying could not fix
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written; verb names and their help on one line.

    argparse measures sub-commands two columns less indented than it prints
    them, so a verb as long as `reconcile` gets its help pushed to the next
    line; widen the column by what it forgot.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.choices and isinstance(action.choices, dict) and action.help is None:
            longest = max((len(name) for name in action.choices), default=0)
            self._action_max_length = max(
                self._action_max_length, min(longest + self._current_indent + 4, 22)
            )


FORMATTER = Formatter


# The project's own examples/ (beside the package in a source checkout).
_PROJECT_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_file(name: str) -> Path:
    """Default path of an example file: ./examples/NAME, else the project's own.

    Relative to the working directory first (what the docs show, and what a
    user edits); a command run from anywhere else still finds the project's
    copy instead of failing on a relative path. When neither exists, the
    working-directory path is returned so the error names what was looked for.
    """
    local = Path("examples") / name
    if local.exists():
        return local
    bundled = _PROJECT_EXAMPLES / name
    return bundled if bundled.exists() else local


def examples(*lines: str, notes: str = "") -> str:
    """An `examples:` epilog: each line a command that works as written (a test runs them)."""
    text = "examples:\n" + "".join(f"  {line}\n" for line in lines)
    return text + (f"\n{notes.rstrip()}\n" if notes else "")


def examples_in(help_text: str) -> list[list[str]]:
    """argv of each `tokenpulse ...` line of a help text's `examples:` section (comments cut)."""
    out: list[list[str]] = []
    inside = False
    for line in help_text.splitlines():
        if line.strip() == "examples:":
            inside = True
        elif inside and not line.strip():
            inside = False
        elif inside and line.strip().startswith("tokenpulse "):
            out.append(shlex.split(line, comments=True))
    return out


def wrap(text: str, width: int = 78) -> str:
    """Fill each paragraph (blank-line separated); the raw formatter keeps epilogs as written."""
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(textwrap.fill(p, width) for p in paragraphs if p)


def add_parser(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str,
    example_lines: Sequence[str],
    notes: str = "",
) -> argparse.ArgumentParser:
    """A verb (or action) parser with a one-line help, a description and an examples epilog."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        description=wrap(description),
        epilog=examples(*example_lines, notes=notes),
        formatter_class=FORMATTER,
    )
    return parser


def add_format(
    parser: argparse.ArgumentParser, choices: Sequence[str] = ("text", "json"), default: str = ""
) -> None:
    """`--format`; json prints one machine-readable document on stdout, errors as JSON on stderr."""
    parser.add_argument(
        "--format",
        choices=tuple(choices),
        default=default or choices[0],
        help=f"output format (default {default or choices[0]}); json: one document on stdout,"
        " errors as JSON on stderr",
    )


def write_json(doc: Any) -> None:
    """One JSON document on stdout (indented for humans, still one parseable document)."""
    sys.stdout.write(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n"
    )


def topic_names(env: Mapping[str, str] | None = None) -> Any:
    """The five topics with TOKENPULSE_TOPIC_PREFIX/SUFFIX applied, as the worker names them."""
    from tokenpulse.streams.settings import TopicNames

    env = os.environ if env is None else env
    return TopicNames.with_affixes(
        env.get("TOKENPULSE_TOPIC_PREFIX", ""), env.get("TOKENPULSE_TOPIC_SUFFIX", "")
    )
