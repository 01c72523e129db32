"""The embedded ClickHouse endpoint, started as the real subprocess, seen by real clients.

clickhouse-connect (sync and async), curl and raw sockets talk to
`python -m tokenpulse.local.clickhouse_http` on a free loopback port with a
temporary data dir; nothing is mocked.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import gzip
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import lz4.frame
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

pytestmark = pytest.mark.integration

PASSWORD = "s3cret pass"
MODULE = "tokenpulse.local.clickhouse_http"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Endpoint:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    def client(self, **kwargs: Any) -> Any:
        return clickhouse_connect.get_client(
            host="127.0.0.1", port=self.port, username="default", password=PASSWORD, **kwargs
        )

    def url(self, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{query}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _start(data_dir: Path, password: str = PASSWORD) -> Endpoint:
    port = _free_port()
    log = data_dir.parent / f"endpoint-{port}.log"
    env = {**os.environ, "TOKENPULSE_CLICKHOUSE_PASSWORD": password}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"endpoint exited: {log.read_text()!r}")
        try:
            ping = f"http://127.0.0.1:{port}/ping"
            with urllib.request.urlopen(ping, timeout=1) as resp:
                if resp.read() == b"Ok.\n":
                    return Endpoint(proc, port, data_dir)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("endpoint did not answer /ping within 60 s")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    ep = _start(tmp_path_factory.mktemp("ch-endpoint") / "data")
    try:
        yield ep
    finally:
        ep.stop()


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60, check=False)


def _basic() -> str:
    return "Authorization: Basic " + base64.b64encode(f"default:{PASSWORD}".encode()).decode()


def test_insert_100k_rows_round_trip(endpoint: Endpoint, unique_name: str) -> None:
    client = endpoint.client()
    client.command(f"CREATE DATABASE {unique_name}")
    client.command(
        f"CREATE TABLE {unique_name}.usage (id UInt64, tenant String, "
        "ts DateTime64(3, 'UTC'), price Decimal(18, 6), model LowCardinality(String), "
        "attrs Map(String, String), note Nullable(String)) ENGINE = MergeTree ORDER BY id"
    )
    base = dt.datetime(2026, 11, 25, 8, tzinfo=dt.UTC)
    rows = [
        [
            i,
            f"tenant-{i % 7}",
            base + dt.timedelta(milliseconds=i),
            decimal.Decimal(i) / 1000,
            f"model-{i % 3}",
            {"k": str(i)},
            None if i % 2 else f"n{i}",
        ]
        for i in range(100_000)
    ]
    summary = client.insert(f"{unique_name}.usage", rows, column_names=list(_COLUMNS))
    assert summary.written_rows == 100_000
    db_client = endpoint.client(database=unique_name)
    totals = db_client.query(
        "SELECT count(), sum(id), sum(price), countIf(note IS NULL) FROM usage"
    )
    assert totals.result_rows == [
        (100_000, 4_999_950_000, decimal.Decimal("4999950.000000"), 50_000)
    ]
    sample = db_client.query("SELECT * FROM usage WHERE id = 12344").result_rows
    assert sample == [
        (
            12344,
            "tenant-3",
            dt.datetime(2026, 11, 25, 8, 0, 12, 344000),
            decimal.Decimal("12.344"),
            "model-2",
            {"k": "12344"},
            "n12344",
        )
    ]
    tricky = "it's'; DROP TABLE usage; --"
    bound = db_client.query(
        "SELECT {t:String}, count() FROM usage WHERE tenant = {t:String}", parameters={"t": tricky}
    )
    assert bound.result_rows == [(tricky, 0)]
    assert db_client.command("SELECT count() FROM usage") == 100_000


_COLUMNS = ("id", "tenant", "ts", "price", "model", "attrs", "note")


def test_engine_error_code_passes_through(endpoint: Endpoint) -> None:
    client = endpoint.client()
    with pytest.raises(DatabaseError, match="code: 60") as info:
        client.query("SELECT * FROM default.no_such_table")
    assert "UNKNOWN_TABLE" in str(info.value)
    with pytest.raises(DatabaseError, match="code: 62"):
        client.command("SELEC 1")


def test_auth_refused_without_password(endpoint: Endpoint) -> None:
    with pytest.raises(DatabaseError, match="516"):
        clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, password="wrong")
    out = _curl("-i", endpoint.url("?query=SELECT+1"))
    assert b" 403 " in out.stdout.splitlines()[0]
    assert b"X-ClickHouse-Exception-Code: 516" in out.stdout
    ok = _curl(endpoint.url("?query=SELECT+1&user=default&password=s3cret%20pass"))
    assert ok.stdout == b"1\n"


def test_curl_version_formats_and_settings(endpoint: Endpoint) -> None:
    out = _curl("-H", _basic(), endpoint.url("?query=SELECT+version()"))
    assert out.stdout.decode().strip().startswith("26.")
    keys = ["-H", "X-ClickHouse-User: default", "-H", f"X-ClickHouse-Key: {PASSWORD}"]
    json_out = _curl(*keys, "--data-binary", "SELECT 1 AS x FORMAT JSONEachRow", endpoint.url())
    assert json_out.stdout == b'{"x":1}\n'
    fmt = _curl(*keys, endpoint.url("?query=SELECT+2+AS+y&default_format=CSVWithNames"))
    assert fmt.stdout == b'"y"\n2\n'
    setting = _curl(
        *keys,
        endpoint.url(
            "?query=SELECT+value+FROM+system.settings+WHERE+name%3D%27max_threads%27&max_threads=1"
        ),
    )
    assert setting.stdout == b"1\n"
    param = _curl(*keys, endpoint.url("?query=SELECT+%7Bv:UInt8%7D%2B1&param_v=41"))
    assert param.stdout == b"42\n"
    compressed = _curl(*keys, "--compressed", endpoint.url("?query=SELECT+number+FROM+numbers(5)"))
    assert compressed.stdout == b"0\n1\n2\n3\n4\n"


def test_curl_insert_with_query_prefix_gzip_and_chunked(
    endpoint: Endpoint, unique_name: str
) -> None:
    client = endpoint.client()
    client.command(f"CREATE DATABASE {unique_name}")
    client.command(
        f"CREATE TABLE {unique_name}.t (a UInt64, s String) ENGINE = MergeTree ORDER BY a"
    )
    keys = ["-H", _basic()]
    prefix = endpoint.url(f"?database={unique_name}&query=INSERT+INTO+t+FORMAT+CSV")
    _curl(*keys, "--data-binary", "1,one\n2,two\n", prefix)
    body = gzip.compress(b"3,three\n")
    subprocess.run(
        ["curl", "-sS", *keys, "-H", "Content-Encoding: gzip", "--data-binary", "@-", prefix],
        input=body,
        check=True,
        timeout=60,
    )
    subprocess.run(
        ["curl", "-sS", *keys, "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", prefix],
        input=b"4,four\n",
        check=True,
        timeout=60,
    )
    rows = client.query(f"SELECT a, s FROM {unique_name}.t ORDER BY a").result_rows
    assert rows == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]


def test_session_keeps_use_and_set(endpoint: Endpoint, unique_name: str) -> None:
    client = endpoint.client()
    client.command(f"CREATE DATABASE {unique_name}")
    client.command(f"USE {unique_name}")
    assert client.command("SELECT currentDatabase()") == unique_name
    client.command("SET max_threads = 1")
    query = "SELECT value FROM system.settings WHERE name = 'max_threads'"
    assert client.command(query) == 1
    other = endpoint.client()
    assert other.command("SELECT currentDatabase()") == "default"


def test_request_settings_come_and_go_around_the_sessions_own(endpoint: Endpoint) -> None:
    # Each request's settings are applied over the session's and taken back
    # after; the endpoint only re-applies what changed between requests, and
    # re-reads the session's own values once a SET of the session moved them.
    client = endpoint.client()
    query = (
        "SELECT name, value, changed FROM system.settings"
        " WHERE name IN ('max_threads', 'max_block_size') ORDER BY name"
    )

    def seen(**settings: Any) -> list[tuple[str, str, int]]:
        return [tuple(r) for r in client.query(query, settings=settings).result_rows]

    client.command("SET max_block_size = 777")
    default_threads = client.command("SELECT value FROM system.settings WHERE name = 'max_threads'")
    assert seen(max_threads=3) == [("max_block_size", "777", 1), ("max_threads", "3", 1)]
    assert seen(max_threads=3, max_block_size=5) == [
        ("max_block_size", "5", 1),
        ("max_threads", "3", 1),
    ]
    assert seen(max_threads=2) == [("max_block_size", "777", 1), ("max_threads", "2", 1)]
    assert seen() == [("max_block_size", "777", 1), ("max_threads", default_threads, 0)]
    client.command("SET max_block_size = 888")  # the session's own value moves
    assert seen(max_block_size=9) == [
        ("max_block_size", "9", 1),
        ("max_threads", default_threads, 0),
    ]
    assert seen() == [("max_block_size", "888", 1), ("max_threads", default_threads, 0)]
    with pytest.raises(DatabaseError):
        seen(max_threads=2, no_such_setting_at_all=1)
    assert seen() == [("max_block_size", "888", 1), ("max_threads", default_threads, 0)]


def test_streamed_result_and_midstream_error(endpoint: Endpoint) -> None:
    client = endpoint.client()
    with client.query_row_block_stream("SELECT number FROM numbers(300000)") as stream:
        total = sum(len(block) for block in stream)
    assert total == 300_000
    with pytest.raises(Exception, match="395"):
        client.query(
            "SELECT throwIf(number = 250000) FROM numbers(300000)",
            settings={"max_block_size": 1000},
        )


def test_malformed_requests_get_4xx_and_server_keeps_serving(endpoint: Endpoint) -> None:
    auth = _basic().encode()
    lz4_ok = lz4.frame.compress(b"SELECT 1")
    cases = [
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nContent-Encoding: lz4\r\n"
        b"Content-Length: 12\r\n\r\nnot-lz4-data",
        b"POST / HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nContent-Length: -5\r\n\r\n",
        b"POST /?query=SELECT+%FF%FE HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nContent-Length: 5\r\n\r\n\xff\xfe\xfd12",
        b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nContent-Encoding: br\r\n"
        b"Content-Length: 1\r\n\r\nx",
    ]
    for raw in cases:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as sock:
            sock.sendall(raw)
            status_line = sock.makefile("rb").readline()
        assert status_line.startswith(b"HTTP/1."), raw
        assert 400 <= int(status_line.split()[1]) < 500, (raw, status_line)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as sock:
        request = b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nContent-Encoding: lz4\r\n"
        sock.sendall(request + b"Content-Length: %d\r\n\r\n" % len(lz4_ok) + lz4_ok)
        reply = b""
        # The end of the chunked body, not of the headers: a header value can
        # end in "0" too (X-ClickHouse-Exception-Tag is random hex).
        while not reply.partition(b"\r\n\r\n")[2].endswith(b"0\r\n\r\n"):
            more = sock.recv(65536)
            assert more, f"connection closed after {reply!r}"
            reply += more
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.endswith(b"\r\n2\r\n1\n\r\n0\r\n\r\n")  # chunked "1\n"
    with urllib.request.urlopen(endpoint.url("ping"), timeout=10) as resp:  # noqa: S310
        assert resp.read() == b"Ok.\n"


async def test_async_client(endpoint: Endpoint) -> None:
    client = await clickhouse_connect.get_async_client(
        host="127.0.0.1", port=endpoint.port, username="default", password=PASSWORD
    )
    try:
        result = await client.query("SELECT sum(number) FROM numbers(1000)")
        assert result.result_rows == [(499500,)]
        await client.command(
            "CREATE TABLE IF NOT EXISTS default.async_t (a UInt32) ENGINE = Memory"
        )
        summary = await client.insert("default.async_t", [[1], [2], [3]], column_names=["a"])
        assert summary.written_rows == 3
    finally:
        await client.close()


def test_long_bound_parameters_travel_as_multipart_form(endpoint: Endpoint) -> None:
    # Over 4 KiB of bound values, clickhouse-connect sends the query and its
    # param_* fields as multipart/form-data instead of URL parameters.
    ids = [f"evt-{i:06d}-'quoted'" for i in range(400)]
    client = endpoint.client()
    try:
        rows = client.query(
            "SELECT count(), max(x) FROM (SELECT arrayJoin({ids:Array(String)}) AS x) "
            "WHERE x != {skip:String}",
            parameters={"ids": ids, "skip": ids[0]},
        ).result_rows
    finally:
        client.close()
    assert rows == [(399, ids[-1])]


async def test_long_bound_parameters_async_client(endpoint: Endpoint) -> None:
    ids = [f"tenant/{i:06d}" for i in range(500)]
    client = await clickhouse_connect.get_async_client(
        host="127.0.0.1", port=endpoint.port, username="default", password=PASSWORD
    )
    try:
        result = await client.query("SELECT length({ids:Array(String)})", parameters={"ids": ids})
        assert result.result_rows == [(500,)]
    finally:
        await client.close()


def _metric(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_requests_errors_and_inserted_rows(
    endpoint: Endpoint, unique_name: str
) -> None:
    def scrape() -> str:
        with urllib.request.urlopen(endpoint.url("metrics"), timeout=10) as resp:  # noqa: S310 - our http URL
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return str(resp.read().decode())

    before = scrape()
    client = endpoint.client()
    try:
        client.command(f"CREATE TABLE default.{unique_name} (a UInt32) ENGINE = Memory")
        client.insert(f"default.{unique_name}", [[i] for i in range(1234)], column_names=["a"])
        with pytest.raises(DatabaseError):
            client.query("SELECT * FROM default.no_such_table_for_metrics")
    finally:
        client.close()
    after = scrape()
    rows = "tokenpulse_clickhouse_http_inserted_rows_total"
    assert _metric(after, rows) - _metric(before, rows) == 1234
    inserts = "tokenpulse_clickhouse_http_requests_total"
    assert _metric(after, inserts, 'kind="insert"') - _metric(before, inserts, 'kind="insert"') == 1
    errors = "tokenpulse_clickhouse_http_errors_total"
    assert _metric(after, errors, 'code="60"') - _metric(before, errors, 'code="60"') >= 1
    assert "tokenpulse_clickhouse_http_request_seconds_bucket" in after


def test_persistence_and_single_owner(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = _start(data_dir)
    try:
        client = first.client()
        client.command("CREATE TABLE default.kept (a UInt8) ENGINE = MergeTree ORDER BY a")
        client.insert("default.kept", [[7]], column_names=["a"])
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                MODULE,
                "--data-dir",
                str(data_dir),
                "--port",
                str(_free_port()),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 3
        assert f"pid {first.proc.pid}" in second.stderr.decode()
    finally:
        first.stop()
    restarted = _start(data_dir)
    try:
        assert restarted.client().command("SELECT sum(a) FROM default.kept") == 7
    finally:
        restarted.stop()


def test_foreign_data_dir_and_remote_host_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for extra in (
        ["--data-dir", str(not_a_dir)],
        ["--data-dir", str(tmp_path / "d"), "--host", "0.0.0.0"],  # noqa: S104 - must be refused,
    ):
        run = subprocess.run(
            [sys.executable, "-m", MODULE, "--port", str(_free_port()), *extra],
            capture_output=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "TOKENPULSE_CLICKHOUSE_PASSWORD"},
        )
        assert run.returncode == 2
        assert len(run.stderr.decode().strip().splitlines()) == 1


def _merge_thread_nices(pid: int) -> list[int]:
    """Nice values of the endpoint's merge threads that are running right now."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        if comm == "MergeMutate" and fields[0] == "R":
            found.append(int(fields[16]))
    return found


def test_merges_run_below_the_priority_of_everything_else(
    endpoint: Endpoint, unique_name: str
) -> None:
    """The endpoint's merge threads yield to the worker and Kafka on a shared machine."""
    from collections import Counter

    from tokenpulse.local.chhttp_engine import MERGE_NICE, can_renice

    client = endpoint.client()
    expected = MERGE_NICE if can_renice() else 0
    setting = (
        "SELECT value FROM system.server_settings WHERE name = 'os_threads_nice_value_merge_mutate'"
    )
    assert str(client.command(setting)) == str(MERGE_NICE)
    table = f"default.{unique_name}"
    client.command(f"CREATE TABLE {table} (a UInt64, s String) ENGINE = MergeTree ORDER BY a")
    seen: Counter[int] = Counter()
    deadline = time.monotonic() + 30
    n = 0
    while seen.total() < 50 and time.monotonic() < deadline:
        # Small parts, many of them: the engine merges them in the background.
        client.command(
            f"INSERT INTO {table} SELECT number, toString(number) FROM numbers({n}, 20000)"
        )
        n += 20000
        for _ in range(50):
            seen.update(_merge_thread_nices(endpoint.proc.pid))
    assert seen, "no merge was seen running within 30 s"
    # A merge task sets its thread's nice value when it starts and puts it
    # back when it ends: a sample between two tasks may see the thread at 0.
    assert seen.most_common(1)[0][0] == expected, seen
