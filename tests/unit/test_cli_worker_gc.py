"""The worker's garbage-collector tuning: the setting, and what it does to the process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tokenpulse.cli.worker import tune_gc
from tokenpulse.errors import ConfigError
from tokenpulse.streams.settings import WorkerSettings

ENV = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "CLICKHOUSE_URL": "http://h:8123/db"}


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_default_and_environment() -> None:
    assert WorkerSettings.from_env(ENV).gc_gen0_threshold == 50_000
    env = {**ENV, "TOKENPULSE_GC_GEN0_THRESHOLD": "0"}
    assert WorkerSettings.from_env(env).gc_gen0_threshold == 0


def test_negative_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="TOKENPULSE_GC_GEN0_THRESHOLD") as err:
        WorkerSettings.from_env({**ENV, "TOKENPULSE_GC_GEN0_THRESHOLD": "-1"})
    assert err.value.details["setting"] == "TOKENPULSE_GC_GEN0_THRESHOLD"


@pytest.mark.usefixtures("restore_gc")
def test_tuning_freezes_the_start_and_raises_the_young_threshold() -> None:
    _, gen1, gen2 = gc.get_threshold()
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, gen1, gen2)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restore_gc")
def test_zero_leaves_python_alone() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


@pytest.mark.usefixtures("restore_gc")
def test_cycles_are_still_collected_after_tuning() -> None:
    tune_gc(50_000)

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
