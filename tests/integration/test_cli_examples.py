"""Every example in `tokenpulse ... --help` runs as written, against the real services.

The examples are read from the help output itself (the `examples:` section
of every verb and action), so help text and behaviour cannot drift apart.
Each runs as a subprocess of the installed command, as a user would run it,
in a scratch directory (with `examples/` linked, as in a checkout), on a
fresh database and under a unique TOKENPULSE_TOPIC_PREFIX, so the default
topics and databases are never touched.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.cli._common import examples_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]

# The order of a fresh session: schema first, quotas (which create the
# prefixed topics), traffic, then the commands that read it.
ORDER = ["db", "quota", "simulate", "bill", "capacity", "report", "reconcile", "dlq", "dev"]

# Examples not run here, and why. Their --help is still checked below.
EXEMPT = {
    ("dev", "up"): "starts long-running Kafka and ClickHouse processes (tests/integration/"
    "test_dev_cli.py runs up/down on its own ports)",
    ("dev", "down"): "stops the stack `dev up` started (covered by test_dev_cli.py)",
    ("worker",): "runs until SIGTERM (tests/integration/test_worker.py runs it)",
    ("bench",): "several minutes of load (test_bench_smoke.py runs --quick)",
    ("demo",): "starts a stack and a worker and waits for them (make demo)",
}


def _tokenpulse(
    argv: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenpulse", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _help_paths() -> list[tuple[str, ...]]:
    from tokenpulse.cli import build_parser

    paths: list[tuple[str, ...]] = []

    def walk(parser: Any, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    paths.append((*path, name))
                    walk(sub, (*path, name))

    walk(build_parser(), ())
    return paths


@pytest.fixture(scope="module")
def session(
    services: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Path]]:
    import uuid

    unique = f"cli{uuid.uuid4().hex[:10]}"
    work = tmp_path_factory.mktemp("cli-examples")
    (work / "examples").symlink_to(REPO / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPULSE_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=services.kafka_bootstrap,
        CLICKHOUSE_URL=services.clickhouse_url + unique,
        TOKENPULSE_TOPIC_PREFIX=f"{unique}.",
        TOKENPULSE_TOPIC_PARTITIONS="2",
        TOKENPULSE_HOME=str(work / "home"),  # `dev status` looks here, never at ~
        TOKENPULSE_CACHE_DIR=os.environ.get("TOKENPULSE_CACHE_DIR", ""),
    )
    if not env["TOKENPULSE_CACHE_DIR"]:
        del env["TOKENPULSE_CACHE_DIR"]
    yield env, work
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=services.clickhouse_url)
    try:
        client.command(f"DROP DATABASE IF EXISTS {unique}")
    finally:
        client.close()


def test_every_help_example_runs_as_written(session: tuple[dict[str, str], Path]) -> None:
    env, work = session
    # Every verb's and action's --help, as the user sees it.
    examples: dict[str, list[list[str]]] = {}
    for path in _help_paths():
        done = _tokenpulse([*path, "--help"], env, work)
        assert done.returncode == 0, (path, done.stderr)
        assert "examples:" in done.stdout, path
        for argv in examples_in(done.stdout):
            if argv not in examples.setdefault(path[0], []):
                examples[path[0]].append(argv)
    assert set(examples) == set(ORDER) | {p[0] for p in EXEMPT}

    ran: list[str] = []
    timings: list[tuple[float, str]] = []
    for verb in ORDER:
        for argv in examples[verb]:
            line = shlex.join(argv)
            if any(tuple(argv[1 : 1 + len(k)]) == k for k in EXEMPT):
                continue
            started = time.monotonic()
            done = _tokenpulse(argv[1:], env, work)
            timings.append((time.monotonic() - started, line))
            assert done.returncode == 0, f"{line}\nstdout: {done.stdout}\nstderr: {done.stderr}"
            if "--format" in argv and argv[argv.index("--format") + 1] == "json":
                json.loads(done.stdout)  # one machine-readable document
            ran.append(line)
    exempt = [
        shlex.join(a)
        for v, lines in examples.items()
        for a in lines
        if any(tuple(a[1 : 1 + len(k)]) == k for k in EXEMPT)
    ]
    # Every example either ran or is exempt with a reason; the exempt ones are
    # exactly the long-running verbs.
    assert len(ran) + len(exempt) == sum(len(v) for v in examples.values())
    assert {tuple(shlex.split(e)[1:3]) for e in exempt} >= {("dev", "up"), ("dev", "down")}
    assert len(ran) >= 25
    slowest = sorted(timings, reverse=True)[:3]
    print("slowest examples:", "; ".join(f"{s:.1f}s {line}" for s, line in slowest))


def test_examples_stay_off_the_default_topics(session: tuple[dict[str, str], Path]) -> None:
    """The prefix reaches every command that names topics (what the test above relies on)."""
    env, work = session
    done = _tokenpulse(
        ["simulate", "--events", "10", "--tenants", "2", "--format", "json"], env, work
    )
    assert done.returncode == 0, done.stderr
    assert (
        json.loads(done.stdout)["topic"] == env["TOKENPULSE_TOPIC_PREFIX"] + "tokenpulse.usage.v1"
    )
    done = _tokenpulse(["reconcile", "--since", "1h", "--format", "json"], env, work)
    assert done.returncode == 0, done.stderr
    assert (
        json.loads(done.stdout)["topic"] == env["TOKENPULSE_TOPIC_PREFIX"] + "tokenpulse.usage.v1"
    )
