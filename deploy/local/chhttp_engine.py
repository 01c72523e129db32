"""The chdb engine behind the endpoint: data-dir ownership, handles and sessions.

One process owns a data directory (an exclusive flock on
DIR/.tokenpulse.lock). chdb hosts one engine per process but allows many
connection handles to it; USE and SET state is per handle and handles run
queries in parallel, while one handle must not serve two calls at once (a
query on a handle with an open stream silently ends that stream). So every
HTTP session (`session_id`) gets its own handle, requests without a session
borrow an idle handle, and each handle has a lock held for the whole call.
URL settings are applied with SET and restored afterwards, lazily: a client
that sends the same settings on every request pays for the SETs once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chdb

from tokenpulse.local.chhttp_protocol import (
    SESSION_IS_LOCKED,
    SESSION_NOT_FOUND,
    ClickHouseHTTPError,
    engine_error,
)

LOCK_FILE = ".tokenpulse.lock"
EXIT_FOREIGN_DIR = 2
EXIT_DIR_OWNED = 3
SESSION_WAIT_S = 30.0
# The nice value of the engine's merge threads (ClickHouse's server setting
# os_threads_nice_value_merge_mutate). The endpoint shares its machine with
# Kafka and the worker: merges are work that can wait, the worker's batches
# are not. A drain of 300,000 events, merge threads at 10 against 0, ABBA:
# faster in 4 of 4 pairs, medians 91.7k against 84.2k events/s (round 11).
MERGE_NICE = 10
_CAP_SYS_NICE = 23
MAX_IDLE_HANDLES = 8
# Entries a data dir may hold besides the engine's own: the launcher's pid and log.
_OUR_ENTRY_PREFIXES = (".tokenpulse", "tokenpulse-")


class DataDirError(Exception):
    """The data dir cannot be served; `exit_code` is the process's exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# What the engine itself creates in its data directory (a fresh one holds
# only tmp/ and status until the first database is created).
_ENGINE_ENTRIES = frozenset(
    {
        "access",
        "data",
        "dictionaries_lib",
        "flags",
        "format_schemas",
        "metadata",
        "metadata_dropped",
        "named_collections",
        "preprocessed_configs",
        "status",
        "store",
        "tmp",
        "user_defined",
        "user_files",
        "user_scripts",
        "uuid",
    }
)


def lock_data_dir(data_dir: Path) -> int:
    """Create/check DIR and take its exclusive lock; returns the lock fd."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(
            f"--data-dir {data_dir} exists but is not a directory; pass a directory path",
            EXIT_FOREIGN_DIR,
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DataDirError(
            f"cannot use --data-dir {data_dir}: {exc.strerror}", EXIT_FOREIGN_DIR
        ) from None
    # Lock before looking inside: a directory another process is filling
    # right now is "owned", not "foreign".
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise DataDirError(
            f"--data-dir {data_dir} is owned by another process (pid {owner}); "
            f"stop it (kill {owner}) or pass another --data-dir",
            EXIT_DIR_OWNED,
        ) from None
    entries = {p.name for p in data_dir.iterdir()}
    foreign = {
        e for e in entries if not e.startswith(_OUR_ENTRY_PREFIXES) and e not in _ENGINE_ENTRIES
    }
    if foreign:
        os.close(fd)
        raise DataDirError(
            f"--data-dir {data_dir} holds files that are not a ClickHouse data directory "
            f"({', '.join(sorted(foreign)[:3])}); pass an empty or tokenpulse-owned directory",
            EXIT_FOREIGN_DIR,
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Summary:
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    elapsed_ns: int = 0


def _wrap(exc: Exception, version: str) -> ClickHouseHTTPError:
    code, text = engine_error(str(exc), version)
    return ClickHouseHTTPError(code, text, body=text)


class Handle:
    """One chdb connection with its lock and the state this endpoint put on it."""

    def __init__(self, conn: Any, version: str) -> None:
        self.conn = conn
        self.version = version
        self.lock = threading.Lock()
        self.current_db = "default"
        self.session_db = "default"  # what the session's own USE chose
        self.overlay: dict[str, str] = {}  # URL settings applied with SET
        # (value, changed) of settings before the overlay touched them, read
        # from system.settings once (5 ms a read, against 0.2 ms a SET) and
        # valid until a statement of the session itself changes settings.
        self._originals: dict[str, tuple[str, bool]] = {}
        self.last_used = time.monotonic()
        self.timeout_s = 60.0
        self.discard = False

    def _run(
        self, sql: str, fmt: str = "TabSeparated", params: Mapping[str, str] | None = None
    ) -> Any:
        try:
            return self.conn.query(sql, fmt, params=dict(params or {}))
        except Exception as exc:  # chdb raises ChdbError/RuntimeError with the engine text
            raise _wrap(exc, self.version) from None

    def prepare(self, database: str | None, settings: Mapping[str, str]) -> None:
        """Make the handle's current database and settings those of this request."""
        target = database or self.session_db
        if target != self.current_db:
            self._run(f"USE {quote_identifier(target)}")
            self.current_db = target
        wanted = dict(settings)
        if wanted == self.overlay:
            return
        # Only what differs from the previous request: an insert after an
        # insert changes its deduplication token alone.
        for name in [n for n in self.overlay if n not in wanted]:
            self._restore(name)
        changed = {k: v for k, v in wanted.items() if self.overlay.get(k) != v}
        try:
            self._remember_originals(changed)
            for key, value in changed.items():
                self._run(f"SET {key} = {quote_literal(value)}")
                self.overlay[key] = value
        except ClickHouseHTTPError:
            self.overlay.update(changed)  # restore every one: a SET may have half-applied
            self.restore_settings()
            raise

    def _remember_originals(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self._originals]
        if not unknown:
            return
        listed = ", ".join(quote_literal(k) for k in unknown)
        rows = self._run(
            f"SELECT name, value, changed FROM system.settings WHERE name IN ({listed})",
            "JSONEachRow",
        ).bytes()
        for line in rows.splitlines():
            row = json.loads(line)
            self._originals[row["name"]] = (row["value"], bool(row["changed"]))
        for name in unknown:  # not a setting: its SET fails, its restore is a no-op
            self._originals.setdefault(name, ("", False))

    def _restore(self, name: str) -> None:
        self.overlay.pop(name, None)
        value, changed = self._originals.get(name, ("", False))
        try:
            if changed:
                quoted = value if value[:1] == "'" and value[-1:] == "'" else quote_literal(value)
                self._run(f"SET {name} = {quoted}")
            else:
                self._run(f"SET {name} = DEFAULT")
        except ClickHouseHTTPError:
            # A setting the engine rejected never took effect; nothing to undo.
            pass

    def restore_settings(self) -> None:
        """Put every overlaid setting back as the session had it."""
        for name in list(self.overlay):
            self._restore(name)

    def forget_originals(self) -> None:
        """A statement of the session changed settings: read them afresh next time."""
        self.restore_settings()
        self._originals.clear()

    def after_use(self) -> None:
        """A session's USE moved it: remember the database it chose."""
        db = self._run("SELECT currentDatabase()").bytes().decode().strip()
        self.current_db = self.session_db = db

    def query(self, sql: str, fmt: str, params: Mapping[str, str]) -> tuple[bytes, Summary]:
        result = self._run(sql, fmt, params)
        return result.bytes() or b"", _summary(result)

    def stream(self, sql: str, fmt: str, params: Mapping[str, str]) -> Generator[bytes, None, None]:
        """Result blocks as they come; the first block is fetched before returning."""
        try:
            streaming = self.conn.send_query(sql, fmt, params=dict(params))
        except Exception as exc:
            raise _wrap(exc, self.version) from None
        return self._blocks(streaming)

    def _blocks(self, streaming: Any) -> Generator[bytes, None, None]:
        try:
            while True:
                try:
                    chunk = next(streaming)
                except StopIteration:
                    return
                except Exception as exc:
                    raise _wrap(exc, self.version) from None
                data = chunk.bytes()
                if data:
                    yield data
        finally:
            with contextlib.suppress(Exception):
                streaming.close()

    def insert(self, statement: str, fmt: str, chunks: Iterable[bytes]) -> Summary:
        """Stream `chunks` into `statement` (no FORMAT clause) with send_insert."""
        started = time.monotonic_ns()
        try:
            inserter = self.conn.send_insert(statement, fmt)
        except Exception as exc:
            raise _wrap(exc, self.version) from None
        try:
            for chunk in chunks:
                inserter.append(chunk)
            result = inserter.finish()
        except ClickHouseHTTPError:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise
        except Exception as exc:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise _wrap(exc, self.version) from None
        return Summary(
            written_rows=int(result.rows_written),
            written_bytes=int(result.bytes_written),
            elapsed_ns=time.monotonic_ns() - started,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _summary(result: Any) -> Summary:
    try:
        return Summary(
            read_rows=int(result.rows_read()),
            read_bytes=int(result.bytes_read()),
            written_rows=int(result.rows_written()),
            written_bytes=int(result.bytes_written()),
            elapsed_ns=int(result.elapsed() * 1e9),
        )
    except Exception:
        return Summary()


def can_renice() -> bool:
    """Whether this process holds CAP_SYS_NICE: ClickHouse sets thread nice values only then."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except OSError:
        pass
    return False


def engine_dsn(data_dir: Path, merge_nice: int) -> str:
    """chdb's connection string: the data dir, with the server settings of this endpoint."""
    if merge_nice == 0 or "?" in str(data_dir):
        return str(data_dir)  # a "?" would start the settings: the path alone, no nice
    return f"file:{data_dir}?os_threads_nice_value_merge_mutate={merge_nice}"


class Engine:
    """The engine of one data dir; lease handles per request or per session."""

    def __init__(self, data_dir: Path, merge_nice: int = MERGE_NICE) -> None:
        if not -20 <= merge_nice <= 19:
            raise ValueError(f"merge_nice must be within -20..19, got {merge_nice}")
        self.data_dir = data_dir
        self._dsn = engine_dsn(data_dir, merge_nice)
        self._lock_fd = lock_data_dir(data_dir)
        try:
            self._anchor = chdb.connect(self._dsn)
            row = self._anchor.query("SELECT version(), timezone()", "TabSeparated").bytes()
        except Exception as exc:
            os.close(self._lock_fd)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataDirError(
                f"cannot open the ClickHouse data in {data_dir}: {message}; "
                "restore it from a backup or pass another --data-dir",
                EXIT_FOREIGN_DIR,
            ) from None
        self.version, self.timezone = row.decode().strip().split("\t")
        self._mutex = threading.Lock()
        self._sessions: dict[str, Handle] = {}
        self._idle: list[Handle] = []
        self._closed = False

    def _new_handle(self) -> Handle:
        with self._mutex:
            if self._closed:
                raise ClickHouseHTTPError(210, "the server is shutting down", status=503)
            return Handle(chdb.connect(self._dsn), self.version)

    def _reap(self, now: float) -> None:
        expired = [
            sid
            for sid, h in self._sessions.items()
            if now - h.last_used > h.timeout_s and not h.lock.locked()
        ]
        for sid in expired:
            self._sessions.pop(sid).close()

    @contextlib.contextmanager
    def lease(
        self, session_id: str | None, *, timeout_s: float = 60.0, check: bool = False
    ) -> Iterator[Handle]:
        if session_id is None:
            with self._mutex:
                handle = self._idle.pop() if self._idle else None
            handle = handle or self._new_handle()
            handle.lock.acquire()
            try:
                yield handle
            finally:
                handle.lock.release()
                with self._mutex:
                    keep = not handle.discard and not self._closed
                    keep = keep and len(self._idle) < MAX_IDLE_HANDLES
                    if keep:
                        self._idle.append(handle)
                if not keep:
                    handle.close()
            return
        with self._mutex:
            self._reap(time.monotonic())
            session = self._sessions.get(session_id)
        if session is None:
            if check:
                raise ClickHouseHTTPError(
                    SESSION_NOT_FOUND, f"Session {session_id} not found", status=404
                )
            created = self._new_handle()
            with self._mutex:
                session = self._sessions.setdefault(session_id, created)
            if session is not created:
                created.close()
        if not session.lock.acquire(timeout=SESSION_WAIT_S):
            raise ClickHouseHTTPError(
                SESSION_IS_LOCKED, f"Session {session_id} is locked by a concurrent client"
            )
        try:
            yield session
        finally:
            session.last_used = time.monotonic()
            session.timeout_s = timeout_s
            session.lock.release()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            handles = [*self._sessions.values(), *self._idle]
            self._sessions.clear()
            self._idle.clear()
        for handle in handles:
            if handle.lock.acquire(timeout=5):
                handle.close()
                handle.lock.release()
        with contextlib.suppress(Exception):
            self._anchor.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
