"""The local dev stack: one Kafka node and one ClickHouse endpoint under TOKENPULSE_HOME.

`tokenpulse dev up|down|status` and the integration-test fixtures use this
one code path; tests only differ in a temporary home and free random ports.
Layout of home: kafka/ (KafkaNode data dir), clickhouse/ (the engine's data
dir), dev/connection.env (the `export KEY=value` lines that
tokenpulse.config.Settings.from_env reads).
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tokenpulse.config import redact_url, tokenpulse_home
from tokenpulse.errors import ConfigError, LocalStackError
from tokenpulse.local import _process
from tokenpulse.local.clickhouse import ClickHouseNode, ClickHouseNodeConfig
from tokenpulse.local.kafka import (
    COMPILERS,
    Compiler,
    KafkaNode,
    KafkaNodeConfig,
    resolve_kafka_jars,
)

log = logging.getLogger("tokenpulse.local.stack")

DATABASE = "tokenpulse"
_PORT_VARS = (
    ("TOKENPULSE_KAFKA_PORT", 9092),
    ("TOKENPULSE_KAFKA_CONTROLLER_PORT", 9093),
    ("TOKENPULSE_CLICKHOUSE_PORT", 8123),
)


COMPILER_ENV = "TOKENPULSE_KAFKA_COMPILER"


def compiler_from_env(env: Mapping[str, str]) -> Compiler:
    """The local broker's JIT compilers: TOKENPULSE_KAFKA_COMPILER, c2 (default) or c1."""
    raw = env.get(COMPILER_ENV, "").strip().lower()
    if not raw:
        return "c2"
    for compiler in COMPILERS:
        if raw == compiler:
            return compiler
    raise ConfigError(
        f"{COMPILER_ENV} must be one of {', '.join(COMPILERS)}, got {raw!r}",
        details={"setting": COMPILER_ENV},
    )


def _port_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(
            f"{name} must be a TCP port number between 1 and 65535, got {raw!r}",
            details={"setting": name},
        )
    return int(raw)


class LocalStack:
    """Kafka + ClickHouse for development, all state under `home`."""

    def __init__(
        self,
        home: Path,
        *,
        kafka_port: int,
        controller_port: int,
        clickhouse_port: int,
        kafka_compiler: Compiler = "c2",
    ) -> None:
        if len({kafka_port, controller_port, clickhouse_port}) != 3:
            raise ConfigError(
                "the Kafka, Kafka controller and ClickHouse ports must differ, got "
                f"{kafka_port}, {controller_port}, {clickhouse_port}; set "
                "TOKENPULSE_KAFKA_PORT, TOKENPULSE_KAFKA_CONTROLLER_PORT, "
                "TOKENPULSE_CLICKHOUSE_PORT",
            )
        self.home = home
        self.kafka = KafkaNode(
            KafkaNodeConfig(
                data_dir=home / "kafka",
                port=kafka_port,
                controller_port=controller_port,
                compiler=kafka_compiler,
            )
        )
        self.clickhouse = ClickHouseNode(
            ClickHouseNodeConfig(data_dir=home / "clickhouse", port=clickhouse_port)
        )

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> LocalStack:
        """The user's stack: TOKENPULSE_HOME, the TOKENPULSE_*_PORT overrides and the compiler."""
        env = os.environ if env is None else env
        kafka, controller, clickhouse = (_port_from_env(env, n, d) for n, d in _PORT_VARS)
        return cls(
            tokenpulse_home(env),
            kafka_port=kafka,
            controller_port=controller,
            clickhouse_port=clickhouse,
            kafka_compiler=compiler_from_env(env),
        )

    @classmethod
    def for_tests(cls, home: Path, env: Mapping[str, str] | None = None) -> LocalStack:
        """A stack in `home` on free random ports, so parallel runs never collide.

        The compiler still comes from the environment: the bench starts its
        stack here, and an A/B of the broker's JIT needs to choose it.
        """
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(_process.pick_free_port())
        kafka, controller, clickhouse = sorted(ports)
        return cls(
            home,
            kafka_port=kafka,
            controller_port=controller,
            clickhouse_port=clickhouse,
            kafka_compiler=compiler_from_env(os.environ if env is None else env),
        )

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def clickhouse_url(self) -> str:
        """The server URL without a database path, ending in '/'."""
        return self.clickhouse.url

    @property
    def connection_file(self) -> Path:
        return self.home / "dev" / "connection.env"

    def connection_lines(self) -> list[str]:
        return [
            f"export KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap}",
            f"export CLICKHOUSE_URL={self.clickhouse_url}{DATABASE}",
        ]

    def _preflight(self) -> None:
        """Every check that needs no download or process, before starting anything."""
        _process.ensure_directory(self.home, what="TOKENPULSE_HOME")
        for sub in ("kafka", "clickhouse", "dev"):
            _process.ensure_directory(self.home / sub, what=f"the {sub} directory")
        k, ch = self.kafka.config, self.clickhouse.config
        if not self.kafka.is_running():
            _process.require_free_port(k.host, k.port, service="Kafka", env_var=_PORT_VARS[0][0])
            _process.require_free_port(
                k.host, k.controller_port, service="Kafka controller", env_var=_PORT_VARS[1][0]
            )
        if not self.clickhouse.is_running():
            _process.require_free_port(
                ch.host, ch.port, service="ClickHouse", env_var=_PORT_VARS[2][0]
            )

    def up(self) -> None:
        """Start what is not running yet; write the connection file.

        If one service fails, the other one this call started is stopped
        again, so a failed `up` leaves nothing half-running behind.
        """
        self._preflight()
        resolve_kafka_jars(self.kafka.config.version)
        started: list[KafkaNode | ClickHouseNode] = []
        nodes: list[KafkaNode | ClickHouseNode] = [self.kafka, self.clickhouse]
        todo = [n for n in nodes if not n.is_running()]
        errors: list[BaseException] = []
        # Both start in parallel: the JVM and the engine each take seconds.
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {pool.submit(n.start): n for n in todo}
        for future, node in futures.items():
            exc = future.exception()
            if exc is None:
                started.append(node)
            else:
                errors.append(exc)
        if errors:
            for node in started:
                node.stop()
            raise errors[0]
        self._create_database()
        self._write_connection_file()

    def _create_database(self) -> None:
        """Make the database CLICKHOUSE_URL names exist, so that URL works at once.

        Idempotent; the schema itself is `tokenpulse db migrate`'s job.
        """
        c = self.clickhouse.config
        request = urllib.request.Request(
            f"http://{c.host}:{c.port}/",
            data=f"CREATE DATABASE IF NOT EXISTS {DATABASE}".encode(),
            headers={"X-ClickHouse-User": c.user, "X-ClickHouse-Key": c.password},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                resp.read()
        except (OSError, urllib.error.URLError) as exc:
            raise LocalStackError(
                f"the ClickHouse endpoint is up but creating database {DATABASE!r} failed: "
                f"{exc}; see {self.clickhouse.log_path}",
            ) from exc

    def _write_connection_file(self) -> None:
        path = self.connection_file
        text = "# Written by `tokenpulse dev up`; removed by `tokenpulse dev down`.\n"
        text += "\n".join(self.connection_lines()) + "\n"
        tmp = path.with_suffix(".tmp")
        # 0600: the URL may carry the ClickHouse password.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        tmp.replace(path)

    def down(self) -> None:
        """Stop both services (data is kept) and remove the connection file."""
        problems: list[str] = []
        for node in (self.clickhouse, self.kafka):
            try:
                node.stop()
            except (OSError, LocalStackError) as exc:
                problems.append(str(exc))
        self.connection_file.unlink(missing_ok=True)
        if problems:
            raise LocalStackError("stopping the local stack failed: " + "; ".join(problems))

    def compiler_note(self) -> str | None:
        """A note when the running broker's JIT is not the configured one, else None."""
        running = self.kafka.running_compiler()
        wanted = self.kafka.config.compiler
        if running is None or running == wanted:
            return None
        return (
            f"the running Kafka broker was started with the {running} JIT; "
            f"{COMPILER_ENV}={wanted} applies from its next start "
            "(`tokenpulse dev down`, then `tokenpulse dev up`)"
        )

    def status(self) -> dict[str, Any]:
        k, ch = self.kafka, self.clickhouse
        return {
            "home": str(self.home),
            "connection_file": str(self.connection_file),
            "kafka": {
                "running": k.is_running(),
                "pid": k.pid(),
                "bootstrap": k.bootstrap,
                "controller_port": k.config.controller_port,
                "version": k.config.version,
                # The running broker's, else the one `up` would start.
                "compiler": k.running_compiler() or k.config.compiler,
                "log": str(k.log_path),
            },
            "clickhouse": {
                "running": ch.is_running(),
                "pid": ch.pid(),
                "url": f"{redact_url(ch.url)}{DATABASE}",
                "log": str(ch.log_path),
            },
        }
