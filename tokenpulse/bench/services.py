"""Where the benchmark runs: the services, and one Pipeline (topics, database, worker).

KAFKA_BOOTSTRAP_SERVERS and CLICKHOUSE_URL, when both are set, name a running
stack; otherwise a LocalStack starts in a temporary home on free ports and is
stopped afterwards. Every pipeline gets its own topic prefix, consumer group
and database, dropped at the end, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from tokenpulse.errors import ServiceUnavailable

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Services:
    bootstrap: str
    clickhouse_url: str  # server URL ending in '/', no database
    origin: str
    home: Path  # scratch space: worker data dirs and logs
    # The local stack's processes, whose CPU the drain also reports (None:
    # services of the environment, not on this machine's process table).
    store_pid: int | None = None
    broker_pid: int | None = None


@contextlib.contextmanager
def obtain_services(keep_dir: Path | None = None) -> Iterator[Services]:
    """The running stack named by the environment, or a temporary local one."""
    with tempfile.TemporaryDirectory(prefix="tokenpulse-bench-") as tmp:
        home = keep_dir or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        ch = os.environ.get("CLICKHOUSE_URL")
        if kafka and ch:
            root = urlunsplit(urlsplit(ch)._replace(path="/"))
            yield Services(kafka, root, "environment", home)
            return
        from tokenpulse.local.stack import LocalStack

        stack = LocalStack.for_tests(home / "stack")
        stack.up()
        try:
            yield Services(
                stack.kafka_bootstrap,
                stack.clickhouse_url,
                "local stack",
                home,
                store_pid=stack.clickhouse.pid(),
                broker_pid=stack.kafka.pid(),
            )
        finally:
            stack.down()


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (from /proc)."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text(encoding="utf-8"))


def _stat_cpu_s(stat: str) -> float:
    """utime + stime of a /proc/.../stat line, in seconds (after the ")" of comm)."""
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def jit_cpu_s(pid: int) -> float:
    """CPU seconds a JVM's JIT compiler threads ("C1/C2 CompilerThread") have spent.

    A freshly started broker compiles its hot paths while the bench runs: at
    43k events/s, half of its CPU in the first minute went to C2, against
    a tenth once warm.
    """
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text(encoding="utf-8")
        except OSError:  # the thread ended
            continue
        if "CompilerThre" in stat[: stat.rfind(")")]:
            total += _stat_cpu_s(stat)
    return total


class MachineTimes(NamedTuple):
    """CPU seconds of all cores since boot (/proc/stat), split by who had them."""

    busy_s: float  # running this machine's work (not idle, not iowait, not stolen)
    stolen_s: float  # taken by the hypervisor for other guests while this one could run

    def pct_since(self, before: MachineTimes, wall_s: float) -> tuple[float, float]:
        """Busy and stolen % of one core over `wall_s` since `before` (2 cores = 200 %)."""
        wall_s = max(wall_s, 1e-9)
        return (
            (self.busy_s - before.busy_s) / wall_s * 100,
            (self.stolen_s - before.stolen_s) / wall_s * 100,
        )


def machine_times() -> MachineTimes:
    """The machine's busy and stolen CPU seconds so far.

    Steal is reported apart because it is the bench VM's main noise: in
    drains where 15-25 % of the two cores were stolen, the same code ran
    at 0.6-0.7x its rate in a quiet minute (BENCHMARKS.md, round 20).
    """
    # user nice system idle iowait irq softirq steal
    f = [int(v) for v in Path("/proc/stat").read_text(encoding="utf-8").split()[1:9]]
    return MachineTimes((f[0] + f[1] + f[2] + f[5] + f[6]) / _CLK_TCK, f[7] / _CLK_TCK)


def proc_rss_mb(pid: int, key: str = "VmRSS") -> float:
    """Resident memory in MB; key=VmHWM gives the peak since the process started."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Pipeline:
    """One tokenpulse pipeline: its topics, its database, and at most one worker."""

    def __init__(self, services: Services, run_id: str, name: str, partitions: int = 6) -> None:
        from tokenpulse.streams.settings import TopicNames

        self.services = services
        self.name = name
        self.prefix = f"{run_id}-{name}."
        self.topics = TopicNames.with_affixes(prefix=self.prefix)
        self.database = f"{run_id}_{name}".replace("-", "_")
        self.group = f"{run_id}-{name}-workers"
        self.partitions = partitions
        self.worker: subprocess.Popen[bytes] | None = None
        # Set: the worker verifies tenant signatures with this keyring (its
        # default); None: it trusts the broker's ACLs (VERIFY_SIGNATURES=false).
        self.keyring_file: Path | None = None
        self.log_path = services.home / f"worker-{name}.log"
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import clickhouse_connect

            self._client = clickhouse_connect.get_client(dsn=self.services.clickhouse_url)
        return self._client

    def setup(self) -> None:
        from tokenpulse.sinks.migrations import RenderOptions, migrate
        from tokenpulse.streams.settings import WorkerSettings
        from tokenpulse.streams.topics import ensure_topics

        self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        migrate(self.client, RenderOptions(database=self.database))
        settings = WorkerSettings(
            kafka_bootstrap_servers=self.services.bootstrap,
            clickhouse_url=self.services.clickhouse_url + self.database,
            topics=self.topics,
            partitions=self.partitions,
        )
        asyncio.run(ensure_topics(settings))

    def sibling(self, name: str) -> Pipeline:
        """Another worker's handle on this pipeline: its topics, database and group.

        Its worker has its own log and data dir; its setup and teardown are
        this pipeline's (call neither on it).
        """
        other = Pipeline(self.services, "sibling", name, self.partitions)
        other.prefix, other.topics = self.prefix, self.topics
        other.database, other.group = self.database, self.group
        other.keyring_file = self.keyring_file
        return other

    def sign_with_org_keys(self, orgs: Iterable[str], *, verify: bool = True) -> dict[str, bytes]:
        """One key per org (a keyring in the services' home, as `tokenpulse
        simulate` keeps) to sign the backlog with; the secrets. The worker
        verifies with them, unless `verify` is false (it trusts the ACLs)."""
        from tokenpulse.simulate import ensure_keyring

        path = self.services.home / "bench-keyring.json"
        secrets = ensure_keyring(path, sorted(set(orgs)))
        self.keyring_file = path if verify else None
        return secrets

    def start_worker(self) -> int:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.services.bootstrap,
            CLICKHOUSE_URL=self.services.clickhouse_url + self.database,
            TOKENPULSE_HOME=str(self.services.home),
            TOKENPULSE_TOPIC_PREFIX=self.prefix,
            TOKENPULSE_WORKER_GROUP=self.group,
            TOKENPULSE_TOPIC_PARTITIONS=str(self.partitions),
            TOKENPULSE_WORKER_DATA_DIR=str(self.services.home / f"worker-{self.name}"),
            TOKENPULSE_VERIFY_SIGNATURES=str(self.keyring_file is not None).lower(),
            TOKENPULSE_LOGLEVEL="warning",
            TOKENPULSE_METRICS_PORT="0",  # no fixed port: other workers may share the host
        )
        if self.keyring_file is not None:
            env["TOKENPULSE_KEYRING_FILE"] = str(self.keyring_file)
        with self.log_path.open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "tokenpulse", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.worker.pid

    def check_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServiceUnavailable(
                f"the bench worker {self.name} exited with {self.worker.returncode}; "
                f"see {self.log_path}:\n{tail}"
            )

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(60)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(30)
        self.worker = None

    def rows(self) -> int:
        return int(
            self.client.query(f"SELECT count() FROM {self.database}.usage_events").result_rows[0][0]
        )

    def wait_merges(self, timeout_s: float = 60.0) -> float:
        """Wait until ClickHouse has no merge running in this pipeline's database.

        A drain leaves hundreds of fresh parts in usage_events and the view
        tables; their merges take the cores for a while afterwards. Latency
        measured in that storm measures the storm. Returns the seconds waited.
        """
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            running = self.client.query(
                "SELECT count() FROM system.merges WHERE database = {db:String}",
                parameters={"db": self.database},
            ).result_rows[0][0]
            if not running:
                break
            time.sleep(0.5)
        return time.monotonic() - started

    def wait_rows(self, target: int, timeout_s: float, poll_s: float = 0.25) -> float:
        """Poll until usage_events holds `target` rows; returns the monotonic time seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.rows() >= target:
                return time.monotonic()
            self.check_worker()
            time.sleep(poll_s)
        raise ServiceUnavailable(
            f"pipeline {self.name}: {self.rows()} of {target} rows after {timeout_s:.0f} s; "
            f"see {self.log_path}"
        )

    def teardown(self) -> None:
        self.stop_worker()
        with contextlib.suppress(Exception):
            self.client.command(f"DROP DATABASE IF EXISTS {self.database}")
        with contextlib.suppress(Exception):
            asyncio.run(_delete_topics(self.services.bootstrap, self.prefix))
        if self._client is not None:
            self._client.close()
            self._client = None


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
