"""`tokenpulse quota load/list/delete` against the real Kafka (in-process CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quotas.toml"


def _list(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["quota", "list", "--format", "json"]) == 0
    return {q["quota_id"]: q for q in json.loads(capsys.readouterr().out)}


def test_load_example_then_reload_replaces_and_delete_removes(
    services: Any,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka_bootstrap)
    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url + "tokenpulse")
    monkeypatch.setenv("TOKENPULSE_TOPIC_PREFIX", f"{unique_name}.")
    monkeypatch.setenv("TOKENPULSE_TOPIC_PARTITIONS", "1")

    assert main(["quota", "load", str(EXAMPLE)]) == 0
    assert "loaded 3 quotas" in capsys.readouterr().out
    quotas = _list(capsys)
    assert len(quotas) == 3
    assert quotas["acme-daily-tokens"]["limit"] == 50_000_000
    assert quotas["beta-monthly-spend"]["limit"] == "250.00"  # exact decimal on the wire
    assert quotas["beta-monthly-spend"]["currency"] == "USD"

    assert main(["quota", "load", str(EXAMPLE)]) == 0  # same keys: replaced, not added
    assert set(_list(capsys)) == set(quotas)

    assert main(["quota", "delete", "beta-monthly-spend"]) == 0
    assert set(_list(capsys)) == set(quotas) - {"beta-monthly-spend"}


def test_load_refuses_a_bad_file_and_publishes_nothing(
    services: Any,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka_bootstrap)
    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url + "tokenpulse")
    monkeypatch.setenv("TOKENPULSE_TOPIC_PREFIX", f"{unique_name}.")
    monkeypatch.setenv("TOKENPULSE_TOPIC_PARTITIONS", "1")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[quota]]\ntenant_id="a"\nmetric="total"\nperiod="day"\nlimit=5\n'
        '[[quota]]\ntenant_id="b"\nmetric="total"\nperiod="day"\nlimit=5.5\n',
        encoding="utf-8",
    )
    assert main(["quota", "load", str(bad)]) == 1
    assert "quota #2" in capsys.readouterr().err
    assert _list(capsys) == {}  # all or nothing: the valid first table was not published
