"""Launcher of the embedded ClickHouse HTTP endpoint (tokenpulse.local.clickhouse_http).

The endpoint serves the real ClickHouse engine (chdb) over the HTTP
interface; one process owns a data directory. This module starts it as a
detached subprocess, waits for `GET /ping` to answer `Ok.`, and stops it
with SIGTERM. The password travels in the environment
(TOKENPULSE_CLICKHOUSE_PASSWORD), never in argv, where `ps` would show it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tokenpulse.errors import LocalStackError
from tokenpulse.local import _process

log = logging.getLogger("tokenpulse.local.clickhouse")

SERVER_MODULE = "tokenpulse.local.clickhouse_http"
PASSWORD_ENV = "TOKENPULSE_CLICKHOUSE_PASSWORD"  # noqa: S105 - a variable name
# The endpoint's documented exit code for "another process owns the data dir".
EXIT_DATA_DIR_OWNED = 3


@dataclass(frozen=True)
class ClickHouseNodeConfig:
    data_dir: Path
    port: int = 8123
    host: str = "127.0.0.1"
    user: str = "default"
    password: str = field(default="", repr=False)


def ping(host: str, port: int, *, timeout_s: float = 2.0) -> bool:
    """True when the endpoint on host:port answers GET /ping with `Ok.`."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=timeout_s) as resp:
            body: bytes = resp.read()
            return resp.status == 200 and body.strip() == b"Ok."
    except (OSError, urllib.error.URLError, ValueError):
        return False


class ClickHouseNode:
    """Start, stop and inspect the endpoint serving `config.data_dir`.

    Beside the engine's own files the data dir holds this launcher's
    tokenpulse-endpoint.pid and tokenpulse-endpoint.log (stdout + stderr).
    """

    def __init__(self, config: ClickHouseNodeConfig) -> None:
        self.config = config
        self._dir = config.data_dir
        self._pid_file = self._dir / "tokenpulse-endpoint.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server URL without a database, ending in '/'; holds the password."""
        c = self.config
        user = quote(c.user, safe="")
        password = quote(c.password, safe="")
        return f"http://{user}:{password}@{c.host}:{c.port}/"

    @property
    def log_path(self) -> Path:
        return self._dir / "tokenpulse-endpoint.log"

    def pid(self) -> int | None:
        # The data dir path is in the endpoint's argv: it tells our server
        # apart from an unrelated process that inherited a recycled pid.
        return _process.running_pid(self._pid_file, marker=str(self._dir))

    def is_running(self) -> bool:
        return self.pid() is not None

    def argv(self) -> list[str]:
        c = self.config
        return [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--data-dir",
            str(self._dir),
            "--host",
            c.host,
            "--port",
            str(c.port),
            "--user",
            c.user,
        ]

    def start(self, timeout_s: float = 60) -> None:
        """Start the endpoint and return once /ping answers; no-op if running."""
        if self.is_running():
            return
        c = self.config
        _process.ensure_directory(self._dir, what="the ClickHouse data directory")
        _process.require_free_port(
            c.host, c.port, service="ClickHouse", env_var="TOKENPULSE_CLICKHOUSE_PORT"
        )
        env = dict(os.environ)
        env.pop(PASSWORD_ENV, None)
        if c.password:
            env[PASSWORD_ENV] = c.password
        log.info(
            "starting the ClickHouse endpoint on %s:%d (log: %s)", c.host, c.port, self.log_path
        )
        self._proc = _process.spawn_detached(
            self.argv(), log_path=self.log_path, pid_file=self._pid_file, cwd=self._dir, env=env
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        c = self.config
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._pid_file.unlink(missing_ok=True)
                self._proc = None
                last = _process.tail(self.log_path, 1).strip()
                if code == EXIT_DATA_DIR_OWNED:
                    raise LocalStackError(
                        f"the ClickHouse data directory {self._dir} is owned by another "
                        f"process ({last}); stop that process or point TOKENPULSE_HOME "
                        "elsewhere",
                        details={"data_dir": str(self._dir)},
                    )
                raise LocalStackError(
                    f"the ClickHouse endpoint exited with code {code} during start-up: "
                    f"{last}; see {self.log_path}",
                )
            if ping(c.host, c.port):
                return
            time.sleep(0.2)
        self.stop()
        raise LocalStackError(
            f"the ClickHouse endpoint did not answer /ping on {c.host}:{c.port} within "
            f"{timeout_s:.0f} s; it was stopped. See {self.log_path}",
        )

    def stop(self, timeout_s: float = 30) -> None:
        pid = self.pid()
        if pid is not None:
            log.info("stopping the ClickHouse endpoint (pid %d)", pid)
        _process.stop_detached(pid, self._proc, self._pid_file, timeout_s=timeout_s)
        self._proc = None
