"""A real KafkaNode (jars from Maven Central) against the pinned aiokafka client.

One broker per module, in a temporary data dir on free ports: admin topic
creation, produce/consume, consumer-group commits, transactions, the perf
tool helper, and a clean stop. These are the client features the pipeline
relies on; they are the evidence behind KAFKA_VERSION.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownTopicOrPartitionError

from tokenpulse.local._kafka_wire import metadata_broker_count
from tokenpulse.local._process import pick_free_port, port_is_free
from tokenpulse.local.kafka import KafkaNode, KafkaNodeConfig, kafka_tool_argv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaNode]:
    data_dir: Path = tmp_path_factory.mktemp("kafka-node")
    node = KafkaNode(
        KafkaNodeConfig(data_dir, port=pick_free_port(), controller_port=pick_free_port())
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


async def _create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def _consume(
    bootstrap: str, topic: str, count: int, **kwargs: object
) -> list[tuple[bytes | None, bytes | None]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **kwargs
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes | None]] = []
    try:
        async with asyncio.timeout(60):
            async for msg in consumer:
                out.append((msg.key, msg.value))
                if len(out) == count:
                    break
        if kwargs.get("group_id"):
            await consumer.commit()
    finally:
        await consumer.stop()
    return out


def test_node_answers_metadata_and_start_is_idempotent(node: KafkaNode) -> None:
    assert node.is_running()
    pid = node.pid()
    node.start()  # already running: no second JVM
    assert node.pid() == pid
    host, port = node.bootstrap.split(":")
    assert metadata_broker_count(host, int(port)) == 1
    assert node.running_compiler() == "c2"  # the JVM's default tiers


def test_a_c1_broker_runs_without_the_c2_compiler(tmp_path: Path) -> None:
    # TOKENPULSE_KAFKA_COMPILER=c1 reaches the JVM that runs (its command
    # line, no C2 compiler thread), and that broker answers.
    node = KafkaNode(
        KafkaNodeConfig(
            tmp_path, port=pick_free_port(), controller_port=pick_free_port(), compiler="c1"
        )
    )
    node.start()
    try:
        pid = node.pid()
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"-XX:TieredStopAtLevel=1" in argv
        names = [
            (task / "comm").read_text(encoding="utf-8").strip()
            for task in Path(f"/proc/{pid}/task").iterdir()
            if (task / "comm").exists()
        ]
        assert any(n.startswith("C1 Compiler") for n in names), names
        assert not any(n.startswith("C2 Compiler") for n in names), names
        host, port = node.bootstrap.split(":")
        assert metadata_broker_count(host, int(port)) == 1
        assert node.running_compiler() == "c1"
    finally:
        node.stop()
    assert node.running_compiler() is None


def test_broker_logs_go_to_the_log_file(node: KafkaNode) -> None:
    text = node.log_path.read_text(encoding="utf-8")
    assert "Kafka Server started" in text
    assert "KafkaRaftServer" in text


async def test_produce_and_consume_keyed_records(node: KafkaNode, unique_name: str) -> None:
    await _create_topic(node.bootstrap, unique_name)
    producer = AIOKafkaProducer(bootstrap_servers=node.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(30):
            await producer.send(unique_name, key=f"tenant-{i % 3}".encode(), value=b"%d" % i)
        await producer.flush()
        partitions = await producer.partitions_for(unique_name)
    finally:
        await producer.stop()
    assert partitions == {0, 1, 2}
    got = await _consume(node.bootstrap, unique_name, 30)
    assert sorted(int(v or b"-1") for _, v in got) == list(range(30))


async def test_consumer_group_commit_resumes_after_the_commit(
    node: KafkaNode, unique_name: str
) -> None:
    await _create_topic(node.bootstrap, unique_name, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=node.bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(unique_name, value=b"first-%d" % i)
        first = await _consume(
            node.bootstrap, unique_name, 10, group_id=unique_name, enable_auto_commit=False
        )
        for i in range(5):
            await producer.send_and_wait(unique_name, value=b"second-%d" % i)
    finally:
        await producer.stop()
    assert len(first) == 10
    # A new member of the same group starts at the committed offset.
    second = await _consume(
        node.bootstrap, unique_name, 5, group_id=unique_name, enable_auto_commit=False
    )
    assert [v for _, v in second] == [b"second-%d" % i for i in range(5)]
    check = AIOKafkaConsumer(bootstrap_servers=node.bootstrap, group_id=unique_name)
    await check.start()
    try:
        assert await check.committed(TopicPartition(unique_name, 0)) == 15
    finally:
        await check.stop()


async def test_transactions_commit_and_abort(node: KafkaNode, unique_name: str) -> None:
    await _create_topic(node.bootstrap, unique_name, partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=node.bootstrap, transactional_id=f"{unique_name}-tx"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(unique_name, value=b"committed-1")
            await producer.send(unique_name, value=b"committed-2")
        await producer.begin_transaction()
        await producer.send(unique_name, value=b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(unique_name, value=b"committed-3")
    finally:
        await producer.stop()
    got = await _consume(node.bootstrap, unique_name, 3, isolation_level="read_committed")
    assert [v for _, v in got] == [b"committed-1", b"committed-2", b"committed-3"]


async def test_topics_are_not_auto_created(node: KafkaNode, unique_name: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=node.bootstrap, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(unique_name, value=b"x")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=node.bootstrap)
    await admin.start()
    try:
        assert unique_name not in await admin.list_topics()
    finally:
        await admin.close()


def test_perf_tools_run_from_the_cached_jars(node: KafkaNode, unique_name: str) -> None:
    asyncio.run(_create_topic(node.bootstrap, unique_name))
    produce = kafka_tool_argv(
        "org.apache.kafka.tools.ProducerPerformance",
        *("--topic", unique_name, "--num-records", "2000", "--record-size", "100"),
        *("--throughput", "-1", "--producer-props", f"bootstrap.servers={node.bootstrap}"),
    )
    done = subprocess.run(produce, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "2000 records sent" in done.stdout
    consume = kafka_tool_argv(
        "org.apache.kafka.tools.ConsumerPerformance",
        *("--bootstrap-server", node.bootstrap, "--topic", unique_name),
        *("--messages", "2000", "--timeout", "60000"),
    )
    done = subprocess.run(consume, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "data.consumed.in.MB" in done.stdout


def test_stop_is_clean_and_frees_the_ports(node: KafkaNode) -> None:
    # Last in the module: the fixture's own stop() is then a no-op.
    node.stop()
    assert not node.is_running()
    assert not (node.config.data_dir / "kafka.pid").exists()
    assert "shut down completed" in node.log_path.read_text(encoding="utf-8")
    assert port_is_free(node.config.host, node.config.port)
    assert port_is_free(node.config.host, node.config.controller_port)
