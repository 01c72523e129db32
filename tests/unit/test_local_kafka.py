"""Kafka launcher: config rendering, jar cache, bad-input paths (no broker started)."""

from __future__ import annotations

import base64
import socket
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenpulse.errors import ConfigError, LocalStackError
from tokenpulse.local import kafka as kafka_mod
from tokenpulse.local._kafka_wire import broker_ready
from tokenpulse.local._process import pick_free_port
from tokenpulse.local.kafka import (
    KAFKA_VERSION,
    Compiler,
    KafkaNode,
    KafkaNodeConfig,
    kafka_tool_argv,
    new_cluster_id,
    resolve_kafka_jars,
)


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _fake_cache(cache: Path, version: str = KAFKA_VERSION) -> Path:
    libs = cache / f"kafka-{version}" / "libs"
    libs.mkdir(parents=True)
    names = [f"kafka_2.13-{version}.jar", "kafka-clients.jar"]
    for name in names:
        (libs / name).write_bytes(b"jar")
    (libs / ".tokenpulse-complete").write_text("\n".join(names) + "\n", encoding="utf-8")
    return libs


def test_version_is_the_tested_3_9_line() -> None:
    assert KAFKA_VERSION == "3.9.1"


def test_config_defaults() -> None:
    cfg = KafkaNodeConfig(data_dir=Path("/x"))
    assert (cfg.port, cfg.controller_port, cfg.host) == (9092, 9093, "127.0.0.1")
    assert (cfg.heap_mb, cfg.partitions, cfg.version) == (512, 3, KAFKA_VERSION)
    assert cfg.compiler == "c2"


def test_c1_stops_the_broker_jit_at_the_client_compiler(tmp_path: Path) -> None:
    def argv(compiler: Compiler) -> list[str]:
        node = KafkaNode(KafkaNodeConfig(tmp_path, compiler=compiler))
        return node._java_argv("java", tmp_path / "libs", "kafka.Kafka", "server.properties")

    c1, c2 = argv("c1"), argv("c2")
    assert "-XX:TieredStopAtLevel=1" in c1
    assert "-XX:TieredStopAtLevel=1" not in c2
    # Everything else is the same, and the main class still comes last but one.
    assert [a for a in c1 if a != "-XX:TieredStopAtLevel=1"] == c2
    assert c1[-2:] == ["kafka.Kafka", "server.properties"]


def test_unknown_compiler_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="compiler must be one of c1, c2, got 'c3'") as exc:
        KafkaNodeConfig(Path("/x"), compiler="c3")  # type: ignore[arg-type]
    assert exc.value.details == {"setting": "compiler"}


def test_server_properties_single_node_on_loopback(tmp_path: Path) -> None:
    node = KafkaNode(KafkaNodeConfig(tmp_path, port=19092, controller_port=19093, partitions=5))
    props = dict(
        line.split("=", 1)
        for line in node.server_properties("abc").splitlines()
        if line and not line.startswith("#")
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["num.partitions"] == "5"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == str(tmp_path / "kraft")
    assert node.bootstrap == "127.0.0.1:19092"
    assert node.log_path == tmp_path / "logs" / "server.log"


def test_cluster_id_is_a_kafka_uuid() -> None:
    cid = new_cluster_id()
    assert len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16
    assert new_cluster_id() != cid


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # kafka-storage reads "--cluster-id -x..." as a missing value: 1 in 64 random ids.
    draws = iter([b"\xfb" + b"\x00" * 15, b"\x01" * 16])  # "-w..." first, then "AQE..."
    monkeypatch.setattr(
        "tokenpulse.local.kafka.uuid.uuid4", lambda: types.SimpleNamespace(bytes=next(draws))
    )
    cid = new_cluster_id()
    assert not cid.startswith("-")
    assert cid == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_complete_cache_is_reused_without_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libs = _fake_cache(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no mvn, no java
    assert resolve_kafka_jars(cache=tmp_path) == libs


def test_missing_maven_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LocalStackError, match=r"apt-get install maven"):
        resolve_kafka_jars(cache=tmp_path / "cache")


def test_incomplete_cache_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = _fake_cache(tmp_path)
    (libs / "kafka-clients.jar").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LocalStackError, match="maven"):
        resolve_kafka_jars(cache=tmp_path)


def test_missing_java_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    node = KafkaNode(KafkaNodeConfig(tmp_path / "data"))
    with pytest.raises(LocalStackError, match=r"apt-get install default-jdk-headless"):
        node.start()
    assert not node.is_running()


def test_taken_port_is_refused_before_starting(tmp_path: Path, listening_port: int) -> None:
    node = KafkaNode(
        KafkaNodeConfig(tmp_path, port=listening_port, controller_port=pick_free_port())
    )
    with pytest.raises(LocalStackError, match=rf"{listening_port} is already taken.*KAFKA_PORT"):
        node.start()
    assert not (tmp_path / "kafka.pid").exists()


def test_foreign_cluster_data_is_refused_and_kept(tmp_path: Path) -> None:
    meta = tmp_path / "kraft" / "meta.properties"
    meta.parent.mkdir()
    meta.write_text("version=1\ncluster.id=someoneElsesCluster\nnode.id=1\n", encoding="utf-8")
    (tmp_path / "cluster.id").write_text("ourClusterId\n", encoding="utf-8")
    node = KafkaNode(
        KafkaNodeConfig(tmp_path, port=pick_free_port(), controller_port=pick_free_port())
    )
    with pytest.raises(LocalStackError, match=r"someoneElsesCluster.*nothing was deleted"):
        node.start()
    assert "someoneElsesCluster" in meta.read_text(encoding="utf-8")


def test_corrupt_meta_properties_is_refused(tmp_path: Path) -> None:
    meta = tmp_path / "kraft" / "meta.properties"
    meta.parent.mkdir()
    meta.write_text("garbage\n", encoding="utf-8")
    node = KafkaNode(
        KafkaNodeConfig(tmp_path, port=pick_free_port(), controller_port=pick_free_port())
    )
    with pytest.raises(LocalStackError, match="corrupt"):
        node.start()


def test_file_in_place_of_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "kafka"
    blocker.write_text("not a directory", encoding="utf-8")
    node = KafkaNode(
        KafkaNodeConfig(blocker, port=pick_free_port(), controller_port=pick_free_port())
    )
    with pytest.raises(LocalStackError, match="is a file, not a directory"):
        node.start()
    assert blocker.read_text(encoding="utf-8") == "not a directory"


def test_stale_pid_file_means_not_running(tmp_path: Path) -> None:
    (tmp_path / "kafka.pid").write_text("999999999\n", encoding="utf-8")
    node = KafkaNode(KafkaNodeConfig(tmp_path))
    assert not node.is_running()
    node.stop()  # nothing to stop: no error, stale pid file cleared
    assert not (tmp_path / "kafka.pid").exists()


def test_pid_of_an_unrelated_process_is_not_ours(tmp_path: Path) -> None:
    import os

    (tmp_path / "kafka.pid").write_text(f"{os.getpid()}\n", encoding="utf-8")
    assert not KafkaNode(KafkaNodeConfig(tmp_path)).is_running()


def test_probe_of_a_closed_port_is_not_ready() -> None:
    assert not broker_ready("127.0.0.1", pick_free_port())


def test_tool_argv_uses_the_cached_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = _fake_cache(tmp_path)
    monkeypatch.setenv("TOKENPULSE_CACHE_DIR", str(tmp_path))
    argv = kafka_tool_argv("org.apache.kafka.tools.ProducerPerformance", "--help")
    assert argv[-4:] == ["-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance", "--help"]
    assert argv[0].endswith("java")
    assert any(a.startswith("-Dlog4j.configuration=file:") for a in argv)


def test_log4j_configs_ship_with_the_module() -> None:
    server = Path(kafka_mod.__file__).with_name("kafka-log4j.properties")
    assert "${kafka.logs.dir}/server.log" in server.read_text(encoding="utf-8")
    assert Path(kafka_mod.__file__).with_name("kafka-tools-log4j.properties").is_file()
