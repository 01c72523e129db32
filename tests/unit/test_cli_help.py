"""The `tokenpulse` command's surface: verbs, help with examples, --format json, exit codes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest

from tokenpulse import __version__
from tokenpulse.cli import build_parser, main
from tokenpulse.cli._common import examples_in

VERBS = [
    "dev",
    "db",
    "worker",
    "simulate",
    "quota",
    "bill",
    "capacity",
    "report",
    "reconcile",
    "dlq",
    "bench",
    "demo",
]

# Commands that read, each with the arguments it needs besides --format json.
READING = [
    ["dev", "status"],
    ["db", "status"],
    ["db", "migrate"],
    ["quota", "list"],
    ["simulate"],
    ["bill", "--month", "2026-11"],
    ["capacity"],
    ["report", "--html", "r.html"],
    ["reconcile", "--since", "1h"],
    ["dlq", "summary", "--since", "1h"],
    ["dlq", "replay", "--since", "1h", "--reason", "bad_signature"],
]


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def _listed_verbs(help_text: str) -> list[str]:
    lines = help_text.splitlines()
    start = lines.index("verbs:") + 2  # the section title, then the VERB metavar line
    names = []
    for line in lines[start:]:
        if not line.strip():
            break
        if line.startswith("    ") and not line.startswith("     "):
            names.append(line.split()[0])
    return names


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _parsers(sub, (*path, name))


def test_top_level_help_lists_every_verb_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert _listed_verbs(text) == VERBS
    for needle in ("a typical session:", "tokenpulse db migrate", "tokenpulse worker"):
        assert needle in text
    for code in ("0 ", "1 ", "2 ", "70 ", "130 "):
        assert f"\n  {code}" in text.split("exit codes:", 1)[1]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"tokenpulse {__version__}\n"


def test_every_parser_has_help_description_and_examples() -> None:
    found = list(_parsers(build_parser()))
    assert {p[0] for p, _, _ in found} == set(VERBS)
    for path, parser, help_text in found:
        name = " ".join(path)
        assert help_text, f"{name}: no one-line help"
        assert parser.description, f"{name}: no description"
        lines = examples_in(parser.format_help())
        assert lines, f"{name}: no `examples:` section with a tokenpulse command line"
        assert any(argv[1 : 1 + len(path)] == list(path) for argv in lines), name


def test_every_example_parses(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    seen = 0
    for _, sub, _ in _parsers(parser):
        for argv in examples_in(sub.format_help()):
            args = parser.parse_args(argv[1:])  # a usage error would raise SystemExit(2)
            assert callable(args.func), argv
            seen += 1
    assert seen >= 30


@pytest.mark.parametrize("argv", READING, ids=lambda a: " ".join(a[:2]))
def test_reading_commands_accept_format_json(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--format", "json"])
    assert args.format == "json"


def test_no_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: tokenpulse" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["nosuchverb"],
        ["quota"],
        ["bill"],
        ["db", "migrate", "-x"],
        ["dlq", "replay", "--since", "1h"],  # which reasons: required
        ["dlq", "replay", "--since", "1h", "--reason", "no_such_reason"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["bill", "--month", "2026-13"],
        ["reconcile", "--since", "yesterday-ish"],
        ["capacity", "--until", "not-a-date"],
        ["dlq", "summary", "--since", "2h", "--until", "3h"],
    ],
)
def test_errors_are_one_line_or_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("tokenpulse: error: ")
    assert err.count("\n") == 1
    assert main([*argv, "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().err)
    assert doc["error"]["message"]
    assert isinstance(doc["error"]["retriable"], bool)
