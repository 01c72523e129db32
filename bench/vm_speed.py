"""How much this VM's speed moves by itself: fixed Python work, timed again and again.

    .venv/bin/python bench/vm_speed.py [--seconds 15]

Runs one fixed unit of pure-Python work (tuples, a dict, bytes and small
ints, the kind the worker does; ~2 ms) over and over for `--seconds`, three
ways: back to back, and after 20 ms or 200 ms of sleep each (the worker
waits between batches), on an otherwise idle machine; prints the CPU time a
unit took: median, p10, p90, and the slowest over the fastest. CPU time, not wall
time: waiting for a core or for the hypervisor is not counted, so what moves
is the speed at which this VM executes the same instructions (the host's
other guests share caches, memory bandwidth and clocks). It also prints the
CPU the hypervisor stole meanwhile (/proc/stat). Read a drain's events/s
(`tokenpulse bench`, bench/drain_bench.py) against this spread: the worker
is one thread of Python, and its rate follows this speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from tokenpulse.bench.vm import measure

# (label, idle seconds before each unit)
MODES = (("back to back", 0.0), ("after 20 ms idle", 0.02), ("after 200 ms idle", 0.2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per mode")
    args = parser.parse_args()
    print(
        "| units run | units | CPU ms a unit: median | p10 | p90 | slowest / fastest "
        "| machine busy | stolen |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, idle_s in MODES:
        samples_ms, busy_pct, stolen_pct = measure(args.seconds, idle_s)
        deciles = statistics.quantiles(samples_ms, n=10, method="inclusive")
        print(
            f"| {label} | {len(samples_ms)} | {statistics.median(samples_ms):.2f} "
            f"| {deciles[0]:.2f} | {deciles[-1]:.2f} "
            f"| {max(samples_ms) / min(samples_ms):.2f}x | {busy_pct:.0f} % "
            f"| {stolen_pct:.1f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
