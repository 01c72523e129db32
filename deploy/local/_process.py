"""Process plumbing shared by the Kafka and ClickHouse launchers.

Pid files, "is this pid still our server?", port checks and a clean
SIGTERM-then-SIGKILL stop. The servers run detached (their own session) so
that `tokenpulse dev up` can exit while they keep running; a later
`dev down` in another process finds them again through the pid file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenpulse.errors import LocalStackError


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind succeeds).

    SO_REUSEADDR so that a port left in TIME_WAIT by our own previous run
    does not count as taken: only a live listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(host: str, port: int, *, service: str, env_var: str) -> None:
    if not port_is_free(host, port):
        raise LocalStackError(
            f"{service} port {host}:{port} is already taken by another process; "
            f"stop that process or pick another port with {env_var}=<port>",
            details={"service": service, "port": port},
        )


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out; free right now, not reserved."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _reap(pid: int) -> None:
    # When this very process started the server (tests), a dead child stays
    # a zombie until waited for; reap it so liveness checks see it gone.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z = zombie.
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"]


def pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_pid(pid_file: Path, *, marker: str) -> int | None:
    """The pid in pid_file if that process is alive and is still our server.

    `marker` must appear in the process's command line (the config or data
    path), so a recycled pid that now belongs to something else is ignored.
    """
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid):
        return None
    if not any(marker in arg for arg in pid_cmdline(pid)):
        return None
    return pid


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_file: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server in its own session (it outlives the CLI), output to log_path."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n", encoding="utf-8")
    return proc


def stop_detached(
    pid: int | None, proc: subprocess.Popen[bytes] | None, pid_file: Path, *, timeout_s: float
) -> None:
    """Stop a server started by spawn_detached (by this process or an earlier one)."""
    if pid is not None:
        terminate(pid, timeout_s=timeout_s)
    if proc is not None:
        proc.wait(timeout=10)  # reap our own child so it leaves no zombie
    pid_file.unlink(missing_ok=True)


def terminate(pid: int, *, timeout_s: float) -> None:
    """SIGTERM, wait up to timeout_s for a clean shutdown, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def ensure_directory(path: Path, *, what: str) -> None:
    """Create path as a directory; a file in its place is an error, not deleted."""
    if path.exists() and not path.is_dir():
        raise LocalStackError(
            f"{what} {path} is a file, not a directory; move it away or point "
            "TOKENPULSE_HOME somewhere else",
            details={"path": str(path)},
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise LocalStackError(
                f"{parent} is a file, not a directory, so {what} {path} cannot be "
                "created; move it away or point TOKENPULSE_HOME somewhere else",
                details={"path": str(parent)},
            )
    path.mkdir(parents=True, exist_ok=True)
