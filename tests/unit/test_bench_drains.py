"""A throughput row of `tokenpulse bench` is the median of its drains.

The table's arithmetic only (the drains themselves run on Kafka and
ClickHouse: tests/integration/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse

import pytest

from tokenpulse.bench.result import BenchResult, DrainCpu, Drains, Latency
from tokenpulse.bench.run import BenchConfig
from tokenpulse.cli import bench as bench_cli


def _cpu(worker: float) -> DrainCpu:
    return DrainCpu(worker=worker, store=1.0, broker=0.5, stolen_pct=worker / 10)


def test_the_row_is_the_median_drain_and_names_every_drain() -> None:
    drains = Drains()
    for eps, worker in ((115_318.4, 0.72), (71_949.0, 1.2), (102_211.0, 0.87)):
        drains.add(eps, _cpu(worker))
    assert drains.median_eps == 102_211.0
    assert drains.cpu.worker == 0.87  # the CPU of that same drain, not a mix
    assert drains.describe() == "102,211 events/s (median of 3: 115,318 / 71,949 / 102,211)"


def test_an_even_count_takes_the_lower_middle_drain_never_a_mean() -> None:
    drains = Drains()
    for eps, worker in ((90_000.0, 1.0), (130_000.0, 0.6), (110_000.0, 0.8), (80_000.0, 1.1)):
        drains.add(eps, _cpu(worker))
    assert drains.median_eps == 90_000.0
    assert drains.cpu.worker == 1.0


def test_one_drain_is_its_own_value_and_none_is_zero() -> None:
    one = Drains()
    one.add(123_456.0, _cpu(0.7))
    assert one.describe() == "123,456 events/s"
    empty = Drains()
    assert empty.median_eps == 0.0
    assert empty.cpu == DrainCpu()
    assert empty.describe() == "0 events/s"


def test_the_table_reads_the_medians() -> None:
    res = BenchResult()
    for eps, worker in ((120_000.0, 0.7), (100_000.0, 0.9), (110_000.0, 0.8)):
        res.single.add(eps, _cpu(worker))
    res.raw_consume_rps = res.raw_consume_after_rps = 220_000.0
    rows = {name: value for name, value, _goal in res.rows()}
    assert rows["worker sustained, 1 event/record"].startswith("110,000 events/s (median of 3")
    assert rows["tokenpulse / raw consume (mean of before and after)"] == "0.50x (50 %)"
    assert rows["worker CPU per 100,000 events (the median single-record drain)"] == "0.8 CPU s"
    stolen = next(v for k, v in rows.items() if k.startswith("CPU stolen"))
    assert stolen.split(" / ")[1] == "0"  # the median drain's 0.08 %, rounded


def test_the_full_run_drains_three_times_and_the_smoke_run_once() -> None:
    assert BenchConfig().drains == 3
    assert BenchConfig.quick_run().drains == 1


def test_drains_must_be_positive() -> None:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    assert parser.parse_args(["--drains", "5"]).drains == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--drains", "0"])


def test_the_freshness_row_says_how_much_of_a_core_its_generator_took() -> None:
    half = Latency("half", rate_eps=75_697.0, p50_s=0.52, p99_s=1.38, samples=601)
    half.generator_cpu_s, half.duration_s = 27.3, 30.0
    row = half.rows()[0]
    assert row[0] == "freshness p50 / p99, half load (75,697 events/s)"
    assert row[1] == "0.52 s / 1.38 s (601 samples; its SDK generator 91 % of a core)"
    assert Latency("quarter").generator_core_pct == 0.0  # never ran: no division by zero
