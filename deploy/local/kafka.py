"""Real Apache Kafka on a bare machine: jars from Maven Central, one KRaft node.

`resolve_kafka_jars` lets the machine's `mvn` copy the broker's jars (and the
perf tools') into the tokenpulse cache, once. `KafkaNode` formats KRaft
storage and runs `java -cp libs/* kafka.Kafka server.properties` detached on
127.0.0.1: one combined broker + controller, the same broker code a
production cluster runs, only with replication factors of 1.

Why Kafka 3.9.1 (KAFKA_VERSION): it is the newest 3.x release and was tested
here with the pinned clients: aiokafka 0.14.0 produce, consume, consumer-group
commit and the transactional producer (tests/integration/test_kafka_local.py),
and faust-streaming 0.15.3, which drives aiokafka. The 3.9 line still accepts
every older protocol version a client may negotiate, while Kafka 4.0 removed
many (KIP-896) and switched its logging to log4j2, so a 4.x broker would need
another logging backend in pom.xml and buys nothing the pipeline uses.

Topic auto-creation is off (auto.create.topics.enable=false), as on most
production clusters: the pipeline creates its topics explicitly with the
partition count and compaction it needs, and tests create uniquely named
topics through the admin client. A typo in a topic name then fails loudly
instead of silently creating a new topic.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from tokenpulse.config import cache_dir
from tokenpulse.errors import ConfigError, LocalStackError
from tokenpulse.local import _process
from tokenpulse.local._kafka_wire import broker_ready

KAFKA_VERSION = "3.9.1"

log = logging.getLogger("tokenpulse.local.kafka")

_POM = Path(__file__).with_name("pom.xml")
_MARKER = ".tokenpulse-complete"
_MVN_TIMEOUT_S = 1800

# Broker logging (files under the data dir's logs/) and the tools' logging
# (warnings to stderr): reload4j configs shipped beside this module.
_SERVER_LOG4J = Path(__file__).with_name("kafka-log4j.properties")
_TOOLS_LOG4J = Path(__file__).with_name("kafka-tools-log4j.properties")


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LocalStackError(
            f"`{name}` is not on PATH; install it with `sudo apt-get install {package}`",
            details={"missing": name, "debian_package": package},
        )
    return path


def _version_dir(version: str, cache: Path | None) -> Path:
    return (cache if cache is not None else cache_dir()) / f"kafka-{version}"


def _libs_complete(libs: Path) -> bool:
    marker = libs / _MARKER
    if not marker.is_file():
        return False
    names = [n for n in marker.read_text(encoding="utf-8").splitlines() if n]
    return bool(names) and all((libs / n).is_file() for n in names)


def resolve_kafka_jars(version: str = KAFKA_VERSION, *, cache: Path | None = None) -> Path:
    """The directory holding every jar of Kafka `version`, resolving it if needed.

    Idempotent: a complete directory (marker file listing its jars) is reused
    without running Maven. Concurrent callers serialise on a lock file; the
    download goes to a temporary directory that is renamed into place only
    when complete, so an interrupted run never leaves a half-filled libs dir.
    """
    root = _version_dir(version, cache)
    libs = root / "libs"
    if _libs_complete(libs):
        return libs
    _process.ensure_directory(root, what="the Kafka jar cache")
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _libs_complete(libs):  # another process finished while we waited
            return libs
        mvn = _require_tool("mvn", "maven")
        _require_tool("java", "default-jdk-headless")
        pom = root / "pom.xml"
        shutil.copyfile(_POM, pom)
        staging = root / "libs.partial"
        if staging.exists():
            shutil.rmtree(staging)  # our own leftover from an interrupted run
        log.info(
            "resolving Apache Kafka %s jars from Maven Central into %s "
            "(first run only, about 60 MB)",
            version,
            libs,
        )
        started = time.monotonic()
        argv = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={staging}",
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalStackError(
                f"mvn did not finish resolving Kafka {version} within {_MVN_TIMEOUT_S} s; "
                "check access to Maven Central (repo.maven.apache.org) and retry",
            ) from exc
        if done.returncode != 0:
            detail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise LocalStackError(
                f"mvn could not resolve Kafka {version} from Maven Central "
                f"(exit {done.returncode}): {' | '.join(detail)}; "
                "check the version and access to repo.maven.apache.org, then retry",
                details={"argv": argv},
            )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if not any(n.startswith(f"kafka_2.13-{version}") for n in jars):
            raise LocalStackError(
                f"mvn finished but kafka_2.13-{version}.jar is missing in {staging}; "
                "remove that directory and retry"
            )
        (staging / _MARKER).write_text("\n".join(jars) + "\n", encoding="utf-8")
        if libs.exists():
            shutil.rmtree(libs)  # incomplete (no valid marker), ours to replace
        staging.rename(libs)
        size_mb = sum(p.stat().st_size for p in libs.glob("*.jar")) / 1e6
        log.info(
            "resolved %d jars (%.0f MB) in %.1f s",
            len(jars),
            size_mb,
            time.monotonic() - started,
        )
    return libs


def kafka_tool_argv(main_class: str, *args: str, version: str = KAFKA_VERSION) -> list[str]:
    """argv running one of Kafka's command-line tools from the resolved jars.

    E.g. kafka_tool_argv("org.apache.kafka.tools.ProducerPerformance",
    "--topic", "t", "--num-records", "100000", "--record-size", "200",
    "--throughput", "-1", "--producer-props", "bootstrap.servers=127.0.0.1:9092").
    The consumer side is org.apache.kafka.tools.ConsumerPerformance.
    """
    java = _require_tool("java", "default-jdk-headless")
    libs = resolve_kafka_jars(version)
    return [
        java,
        "-Xmx512m",
        f"-Dlog4j.configuration=file:{_TOOLS_LOG4J}",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]


def new_cluster_id() -> str:
    """A Kafka Uuid string: 16 random bytes, URL-safe base64 without padding.

    Never starting with "-": kafka-storage's argument parser reads
    `--cluster-id -abc...` as a missing value (1 id in 64 failed the format,
    a flaky CI run); Kafka's own Uuid.randomUuid() redraws such ids too.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# The broker JVM's just-in-time compilers (`compiler`, TOKENPULSE_KAFKA_COMPILER).
Compiler = Literal["c1", "c2"]
COMPILERS: Final[tuple[Compiler, ...]] = ("c1", "c2")
_C1_ONLY: Final = "-XX:TieredStopAtLevel=1"


@dataclass(frozen=True)
class KafkaNodeConfig:
    """One combined broker + controller; ports on `host` only (never 0.0.0.0).

    compiler: "c2" (default) runs the broker JVM with its default tiers;
    "c1" with the client compiler only (-XX:TieredStopAtLevel=1), for a
    small machine shared with the worker and the engine, where a fresh
    broker keeps C2 compiling for minutes. Measured on the 2-core bench
    machine (BENCHMARKS.md, round 12): at 50,000 events/s, 20-40 s after the
    start, C1 took the broker from 4.1-5.4 us of CPU an event (C2 compiling
    1.9-3.1 of it) to 2.5-2.7, and drains were no slower; but the broker
    served kafka-consumer-perf-test 89k-112k records/s against 102k-195k,
    so C1 lowers the ceiling the bench measures the worker against.
    """

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    heap_mb: int = 512
    partitions: int = 3
    version: str = KAFKA_VERSION
    compiler: Compiler = "c2"

    def __post_init__(self) -> None:
        if self.compiler not in COMPILERS:
            raise ConfigError(
                f"the Kafka compiler must be one of {', '.join(COMPILERS)}, got {self.compiler!r}",
                details={"setting": "compiler"},
            )


class KafkaNode:
    """Start, stop and inspect one local Kafka node living in `config.data_dir`.

    Layout of data_dir: server.properties, cluster.id,
    kafka.pid, kraft/ (the partitions and KRaft metadata), logs/ (server.log,
    controller.log, stdout.log for JVM output such as a crash).
    """

    def __init__(self, config: KafkaNodeConfig) -> None:
        self.config = config
        self._dir = config.data_dir
        self._pid_file = self._dir / "kafka.pid"
        self._properties = self._dir / "server.properties"
        self._kraft_dir = self._dir / "kraft"
        self._logs_dir = self._dir / "logs"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def log_path(self) -> Path:
        return self._logs_dir / "server.log"

    @property
    def stdout_path(self) -> Path:
        return self._logs_dir / "stdout.log"

    def pid(self) -> int | None:
        return _process.running_pid(self._pid_file, marker=str(self._properties))

    def is_running(self) -> bool:
        return self.pid() is not None

    def running_compiler(self) -> Compiler | None:
        """The JIT the running broker was started with; None when none runs.

        It can differ from `config.compiler`: a broker started earlier keeps
        its JVM's flags until it is stopped.
        """
        pid = self.pid()
        if pid is None:
            return None
        return "c1" if _C1_ONLY in _process.pid_cmdline(pid) else "c2"

    def server_properties(self, cluster_id: str) -> str:
        c = self.config
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{c.host}:{c.controller_port}",
            "listeners": f"PLAINTEXT://{c.host}:{c.port},CONTROLLER://{c.host}:{c.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{c.host}:{c.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._kraft_dir),
            "num.partitions": str(c.partitions),
            # One node: every internal topic can only have one replica.
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "min.insync.replicas": "1",
            # Tests and dev runs start consumers one after another; the
            # default 3 s delay would only slow every first rebalance.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
        }
        body = "\n".join(f"{k}={v}" for k, v in lines.items())
        return f"# Written by tokenpulse (deploy/local/kafka.py); cluster {cluster_id}\n{body}\n"

    def _cluster_id(self) -> str:
        """Our cluster id, checking that kraft/ belongs to it (never deleting)."""
        id_file = self._dir / "cluster.id"
        meta = self._kraft_dir / "meta.properties"
        ours = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else None
        theirs: str | None = None
        if meta.exists():
            if not meta.is_file():
                raise self._foreign(f"{meta} is not a file")
            for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "cluster.id":
                    theirs = value.strip()
            if theirs is None:
                raise self._foreign(f"{meta} has no cluster.id (corrupt)")
            if ours != theirs:
                raise self._foreign(
                    f"{meta} belongs to Kafka cluster {theirs!r}, not this node's "
                    f"{ours or '(none recorded in cluster.id)'}"
                )
            return theirs
        if self._kraft_dir.exists() and any(self._kraft_dir.iterdir()):
            raise self._foreign(f"{self._kraft_dir} holds files but no meta.properties")
        if ours is None:
            ours = new_cluster_id()
            id_file.write_text(ours + "\n", encoding="utf-8")
        return ours

    def _foreign(self, why: str) -> LocalStackError:
        return LocalStackError(
            f"Kafka data directory {self._dir} is not usable: {why}; move it away "
            "(or point TOKENPULSE_HOME elsewhere) and run again — nothing was deleted",
            details={"data_dir": str(self._dir)},
        )

    def _java_argv(self, java: str, libs: Path, main_class: str, *args: str) -> list[str]:
        return [
            java,
            f"-Xmx{self.config.heap_mb}m",
            f"-Xms{min(self.config.heap_mb, 128)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            *((_C1_ONLY,) if self.config.compiler == "c1" else ()),
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self._logs_dir}",
            f"-Dlog4j.configuration=file:{_SERVER_LOG4J}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    def _format(self, java: str, libs: Path, cluster_id: str) -> None:
        if (self._kraft_dir / "meta.properties").is_file():
            return
        argv = self._java_argv(
            java,
            libs,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self._properties),
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise LocalStackError(
                f"formatting KRaft storage in {self._kraft_dir} failed "
                f"(exit {done.returncode}): {(done.stdout + done.stderr).strip()[-400:]}",
            )

    def start(self, timeout_s: float = 90) -> None:
        """Start the node and return once it answers a Metadata request.

        A node that is already running is left alone (no-op).
        """
        if self.is_running():
            return
        c = self.config
        java = _require_tool("java", "default-jdk-headless")
        _process.ensure_directory(self._dir, what="the Kafka data directory")
        for port, var in (
            (c.port, "TOKENPULSE_KAFKA_PORT"),
            (c.controller_port, "TOKENPULSE_KAFKA_CONTROLLER_PORT"),
        ):
            _process.require_free_port(c.host, port, service="Kafka", env_var=var)
        cluster_id = self._cluster_id()
        libs = resolve_kafka_jars(c.version)
        self._logs_dir.mkdir(exist_ok=True)
        self._properties.write_text(self.server_properties(cluster_id), encoding="utf-8")
        self._format(java, libs, cluster_id)
        argv = self._java_argv(java, libs, "kafka.Kafka", str(self._properties))
        log.info("starting Kafka %s on %s (logs: %s)", c.version, self.bootstrap, self.log_path)
        self._proc = _process.spawn_detached(
            argv, log_path=self.stdout_path, pid_file=self._pid_file, cwd=self._dir
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._pid_file.unlink(missing_ok=True)
                raise LocalStackError(
                    f"Kafka exited with code {self._proc.returncode} during start-up; see "
                    f"{self.log_path} and {self.stdout_path}. Last lines: "
                    f"{_process.tail(self.stdout_path, 5) or _process.tail(self.log_path, 5)}",
                )
            if broker_ready(self.config.host, self.config.port):
                return
            time.sleep(0.25)
        self.stop()
        raise LocalStackError(
            f"Kafka did not answer on {self.bootstrap} within {timeout_s:.0f} s; it was "
            f"stopped. See {self.log_path}, or raise the timeout on a slow machine",
        )

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (a clean controlled shutdown), then SIGKILL after timeout_s."""
        pid = self.pid()
        if pid is not None:
            log.info("stopping Kafka (pid %d)", pid)
        _process.stop_detached(pid, self._proc, self._pid_file, timeout_s=timeout_s)
        self._proc = None
