"""LocalStack, the ClickHouse launcher and `tokenpulse dev`: ports, files, bad input.

Nothing here starts a server; every failure path must fire before one would.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenpulse.cli import main
from tokenpulse.config import read_connection_file
from tokenpulse.errors import ConfigError, LocalStackError
from tokenpulse.local._process import pick_free_port, port_is_free
from tokenpulse.local.clickhouse import PASSWORD_ENV, ClickHouseNode, ClickHouseNodeConfig, ping
from tokenpulse.local.stack import LocalStack


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_default_uses_home_and_standard_ports(tmp_path: Path) -> None:
    stack = LocalStack.default({"TOKENPULSE_HOME": str(tmp_path)})
    assert stack.home == tmp_path
    assert stack.kafka_bootstrap == "127.0.0.1:9092"
    assert stack.kafka.config.controller_port == 9093
    assert stack.clickhouse_url == "http://default:@127.0.0.1:8123/"
    assert stack.kafka.config.data_dir == tmp_path / "kafka"
    assert stack.clickhouse.config.data_dir == tmp_path / "clickhouse"


def test_ports_are_overridable_by_env(tmp_path: Path) -> None:
    env = {
        "TOKENPULSE_HOME": str(tmp_path),
        "TOKENPULSE_KAFKA_PORT": "29092",
        "TOKENPULSE_KAFKA_CONTROLLER_PORT": "29093",
        "TOKENPULSE_CLICKHOUSE_PORT": "28123",
    }
    stack = LocalStack.default(env)
    assert stack.connection_lines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092",
        "export CLICKHOUSE_URL=http://default:@127.0.0.1:28123/tokenpulse",
    ]
    assert stack.kafka.config.controller_port == 29093


def test_broker_compiler_is_c2_unless_the_env_says_c1(tmp_path: Path) -> None:
    home = {"TOKENPULSE_HOME": str(tmp_path)}
    assert LocalStack.default(home).kafka.config.compiler == "c2"
    c1 = {**home, "TOKENPULSE_KAFKA_COMPILER": " C1 "}
    assert LocalStack.default(c1).kafka.config.compiler == "c1"
    assert LocalStack.for_tests(tmp_path, c1).kafka.config.compiler == "c1"
    assert LocalStack.for_tests(tmp_path, {}).kafka.config.compiler == "c2"


def test_bad_compiler_env_is_a_config_error_naming_it(tmp_path: Path) -> None:
    env = {"TOKENPULSE_HOME": str(tmp_path), "TOKENPULSE_KAFKA_COMPILER": "graal"}
    with pytest.raises(ConfigError, match="TOKENPULSE_KAFKA_COMPILER must be one of c1, c2"):
        LocalStack.default(env)
    with pytest.raises(ConfigError, match="got 'graal'"):
        LocalStack.for_tests(tmp_path, env)


@pytest.mark.parametrize("bad", ["abc", "0", "70000", "-1"])
def test_bad_port_env_is_a_config_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="TOKENPULSE_KAFKA_PORT must be a TCP port"):
        LocalStack.default({"TOKENPULSE_HOME": str(tmp_path), "TOKENPULSE_KAFKA_PORT": bad})


def test_equal_ports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        LocalStack(tmp_path, kafka_port=1234, controller_port=1234, clickhouse_port=8123)


def test_for_tests_picks_distinct_free_ports(tmp_path: Path) -> None:
    stack = LocalStack.for_tests(tmp_path)
    ports = {
        stack.kafka.config.port,
        stack.kafka.config.controller_port,
        stack.clickhouse.config.port,
    }
    assert len(ports) == 3
    assert all(port_is_free("127.0.0.1", p) for p in ports)


def test_status_of_a_stack_never_started(tmp_path: Path) -> None:
    status = LocalStack.for_tests(tmp_path).status()
    assert status["kafka"]["running"] is False
    assert status["clickhouse"]["running"] is False
    assert status["kafka"]["pid"] is None
    assert status["kafka"]["compiler"] == "c2"  # the one `up` would start


def test_a_running_broker_with_another_jit_gets_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = LocalStack.for_tests(tmp_path, {"TOKENPULSE_KAFKA_COMPILER": "c1"})
    assert stack.compiler_note() is None  # nothing runs
    running: dict[str, str | None] = {"jit": "c1"}
    monkeypatch.setattr(stack.kafka, "running_compiler", lambda: running["jit"])
    assert stack.compiler_note() is None  # the running one is the configured one
    running["jit"] = "c2"
    note = stack.compiler_note()
    assert note is not None
    assert "started with the c2 JIT" in note
    assert "TOKENPULSE_KAFKA_COMPILER=c1 applies from its next start" in note
    assert stack.status()["kafka"]["compiler"] == "c2"  # what runs, not what is configured


@pytest.mark.parametrize("which", ["kafka", "controller", "clickhouse"])
def test_up_refuses_a_taken_port_before_starting_anything(
    tmp_path: Path, listening_port: int, which: str
) -> None:
    ports = {
        "kafka": pick_free_port(),
        "controller": pick_free_port(),
        "clickhouse": pick_free_port(),
    }
    ports[which] = listening_port
    stack = LocalStack(
        tmp_path,
        kafka_port=ports["kafka"],
        controller_port=ports["controller"],
        clickhouse_port=ports["clickhouse"],
    )
    with pytest.raises(LocalStackError, match=f"{listening_port} is already taken"):
        stack.up()
    assert not stack.connection_file.exists()
    assert not (tmp_path / "kafka" / "kafka.pid").exists()


def test_up_refuses_a_home_that_is_a_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("precious", encoding="utf-8")
    with pytest.raises(LocalStackError, match="is a file, not a directory"):
        LocalStack.for_tests(home).up()
    assert home.read_text(encoding="utf-8") == "precious"


def test_connection_file_is_private_and_readable_by_config(tmp_path: Path) -> None:
    stack = LocalStack.for_tests(tmp_path)
    stack.connection_file.parent.mkdir(parents=True)
    stack._write_connection_file()
    assert stack.connection_file.stat().st_mode & 0o777 == 0o600
    values = read_connection_file(stack.connection_file)
    assert values["KAFKA_BOOTSTRAP_SERVERS"] == stack.kafka_bootstrap
    assert values["CLICKHOUSE_URL"] == stack.clickhouse_url + "tokenpulse"


def test_clickhouse_password_stays_out_of_argv_and_repr(tmp_path: Path) -> None:
    cfg = ClickHouseNodeConfig(tmp_path, port=18123, user="ops", password="s3cr/t@x")
    node = ClickHouseNode(cfg)
    assert "s3cr" not in repr(cfg)
    assert not any("s3cr" in a for a in node.argv())
    assert node.argv()[1:3] == ["-m", "tokenpulse.local.clickhouse_http"]
    assert node.url == "http://ops:s3cr%2Ft%40x@127.0.0.1:18123/"
    assert PASSWORD_ENV == "TOKENPULSE_CLICKHOUSE_PASSWORD"


def test_clickhouse_taken_port_is_refused(tmp_path: Path, listening_port: int) -> None:
    node = ClickHouseNode(ClickHouseNodeConfig(tmp_path, port=listening_port))
    with pytest.raises(LocalStackError, match="TOKENPULSE_CLICKHOUSE_PORT"):
        node.start()
    assert not node.is_running()


def test_ping_of_a_closed_port_is_false() -> None:
    assert not ping("127.0.0.1", pick_free_port())


def test_dev_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dev", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "tokenpulse dev up" in help_text
    assert "--format env" in help_text


def test_dev_status_env_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("TOKENPULSE_KAFKA_PORT", "39092")
    monkeypatch.setenv("TOKENPULSE_CLICKHOUSE_PORT", "38123")
    assert main(["dev", "status", "--format", "env"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092",
        "export CLICKHOUSE_URL=http://default:@127.0.0.1:38123/tokenpulse",
    ]


def test_dev_status_text_says_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENPULSE_HOME", str(tmp_path))
    assert main(["dev", "status"]) == 0
    out = capsys.readouterr().out
    assert "kafka:      stopped" in out
    assert "JIT c2" in out
    assert "clickhouse: stopped" in out


def test_dev_bad_port_env_exits_1_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("TOKENPULSE_CLICKHOUSE_PORT", "http")
    assert main(["dev", "status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "TOKENPULSE_CLICKHOUSE_PORT" in err


@pytest.mark.parametrize("raw", ["abc", "20", "-21", "1.5"])
def test_bad_merge_nice_env_names_the_variable(
    raw: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenpulse.local import clickhouse_http

    monkeypatch.setenv("TOKENPULSE_ENDPOINT_MERGE_NICE", raw)
    with pytest.raises(SystemExit) as exc:
        clickhouse_http.main(["--data-dir", "/nonexistent"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"TOKENPULSE_ENDPOINT_MERGE_NICE must be an integer within -20..19, got {raw!r}" in err


def test_merge_nice_env_sets_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from tokenpulse.local import clickhouse_http

    parser = argparse.ArgumentParser()
    assert clickhouse_http._merge_nice_from_env(parser, {}) == clickhouse_http.MERGE_NICE
    env = {"TOKENPULSE_ENDPOINT_MERGE_NICE": " 5 "}
    assert clickhouse_http._merge_nice_from_env(parser, env) == 5
