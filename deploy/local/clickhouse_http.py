"""The embedded ClickHouse endpoint: the real engine (chdb) over ClickHouse's HTTP interface.

    python -m tokenpulse.local.clickhouse_http --data-dir DIR [--host 127.0.0.1]
        [--port 8123] [--user default] [--allow-remote] [--merge-nice 10]

The password comes from TOKENPULSE_CLICKHOUSE_PASSWORD (never argv, never
logged). Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad data dir or bind
address, 3 when another process owns the data dir. In-process use (tests):
`with EmbeddedClickHouseServer(path) as server: server.url`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType

from tokenpulse.local.chhttp_engine import (
    EXIT_FOREIGN_DIR,
    MERGE_NICE,
    DataDirError,
    Engine,
    can_renice,
)
from tokenpulse.local.chhttp_server import EndpointHTTPServer

PASSWORD_ENV = "TOKENPULSE_CLICKHOUSE_PASSWORD"  # noqa: S105 - a variable name
MERGE_NICE_ENV = "TOKENPULSE_ENDPOINT_MERGE_NICE"

__all__ = ["PASSWORD_ENV", "DataDirError", "EmbeddedClickHouseServer", "main", "serve"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, password: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless remote access is asked for and protected."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise DataDirError(
            f"--host {host} is not a loopback address; pass --allow-remote (and set "
            f"{PASSWORD_ENV}) to serve other machines",
            EXIT_FOREIGN_DIR,
        )
    if not password:
        raise DataDirError(f"--allow-remote needs a password: set {PASSWORD_ENV}", EXIT_FOREIGN_DIR)


class EmbeddedClickHouseServer:
    """The endpoint in a background thread of this process; port 0 picks a free port."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "default",
        password: str = "",
        *,
        allow_remote: bool = False,
        merge_nice: int = MERGE_NICE,
    ) -> None:
        check_bind(host, password, allow_remote)
        self.merge_nice = merge_nice
        self.data_dir = Path(data_dir)
        self.host = host
        self._requested_port = port
        self.user = user
        self._password = password
        self._engine: Engine | None = None
        self._httpd: EndpointHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """http://host:port/ without credentials."""
        return f"http://{self.host}:{self.port}/"

    def start(self) -> EmbeddedClickHouseServer:
        self._engine = Engine(self.data_dir, self.merge_nice)
        try:
            self._httpd = EndpointHTTPServer(
                (self.host, self._requested_port), self._engine, self.user, self._password
            )
        except OSError as exc:
            self._engine.close()
            self._engine = None
            raise DataDirError(
                f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror}; "
                "pick a free --port",
                EXIT_FOREIGN_DIR,
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="clickhouse-http", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until stop() is called from another thread."""
        if self._httpd is None:
            self._engine = Engine(self.data_dir, self.merge_nice)
            self._httpd = EndpointHTTPServer(
                (self.host, self._requested_port), self._engine, self.user, self._password
            )
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> EmbeddedClickHouseServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(data_dir: Path, host: str, port: int, user: str, password: str) -> None:
    """Serve in the foreground until SIGTERM or SIGINT; raises DataDirError."""
    server = EmbeddedClickHouseServer(data_dir, host, port, user, password, allow_remote=True)
    _serve_until_signal(server)


def _serve_until_signal(server: EmbeddedClickHouseServer) -> None:
    server.start()
    if server.merge_nice and not can_renice():
        print(
            f"clickhouse_http: --merge-nice {server.merge_nice} ignored: this process lacks "
            "CAP_SYS_NICE, merges run at the priority of every other thread",
            file=sys.stderr,
            flush=True,
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _merge_nice_from_env(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> int:
    """--merge-nice's default: TOKENPULSE_ENDPOINT_MERGE_NICE, else MERGE_NICE.

    Checked here: argparse applies `choices` to the command line only, and a
    value it cannot read must name the variable, not end in a traceback.
    """
    raw = env.get(MERGE_NICE_ENV, "").strip()
    if not raw:
        return MERGE_NICE
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not -20 <= value <= 19:
        parser.error(f"{MERGE_NICE_ENV} must be an integer within -20..19, got {raw!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tokenpulse.local.clickhouse_http",
        description="Serve the embedded ClickHouse engine over the ClickHouse HTTP interface.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="engine data directory")
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (loopback only by default)"
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port (default 8123)")
    parser.add_argument(
        "--user", default="default", help="the one user accepted (default: default)"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help=f"allow a non-loopback --host (needs {PASSWORD_ENV})",
    )
    parser.add_argument(
        "--merge-nice",
        type=int,
        default=_merge_nice_from_env(parser, os.environ),
        choices=range(-20, 20),
        metavar="N",
        help=f"nice value of the engine's merge threads, -20..19 (default: {MERGE_NICE_ENV} "
        f"or {MERGE_NICE}; 0 = as other threads; needs CAP_SYS_NICE, else ignored)",
    )
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV, "")
    try:
        server = EmbeddedClickHouseServer(
            args.data_dir,
            args.host,
            args.port,
            args.user,
            password,
            allow_remote=args.allow_remote,
            merge_nice=args.merge_nice,
        )
        _serve_until_signal(server)
    except DataDirError as exc:
        print(f"clickhouse_http: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
