"""The VM's own speed: a fixed unit of Python work, timed in CPU time.

On the bench VM the same code runs up to 2x slower at some moments than at
others with nothing stolen (round 21): the host's other guests share its
caches, memory bandwidth and clocks. The worker is one thread of Python and
its rate follows that speed, so `tokenpulse bench` reads it before and after
its drains, and bench/vm_speed.py reads it on its own. CPU time, not wall
time: waiting for a core or for the hypervisor is not counted.
"""

from __future__ import annotations

import statistics
import time

from tokenpulse.bench.services import machine_times


def unit(items: int = 8_000) -> int:
    """~2 ms of the kind of work the worker does: tuples, a dict, bytes and small ints."""
    seen: dict[bytes, int] = {}
    total = 0
    for i in range(items):
        key = b"tenant-%d" % (i % 97)
        pair = (key, i * 7 % 13)
        seen[key] = seen.get(key, 0) + pair[1]
        total += len(key) + pair[1]
    return total + len(seen)


def measure(seconds: float, idle_s: float = 0.0) -> tuple[list[float], float, float]:
    """CPU ms of each unit run over `seconds` (each after `idle_s` of sleep);
    the machine's busy and stolen % meanwhile."""
    samples_ms: list[float] = []
    before, t0 = machine_times(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        if idle_s:
            time.sleep(idle_s)
        started = time.process_time()
        unit()
        samples_ms.append((time.process_time() - started) * 1000)
    busy_pct, stolen_pct = machine_times().pct_since(before, time.monotonic() - t0)
    return samples_ms, busy_pct, stolen_pct


def unit_ms(seconds: float) -> float:
    """The median CPU ms of a unit run back to back for `seconds` (lower: a faster VM)."""
    samples_ms, _, _ = measure(seconds)
    return statistics.median(samples_ms)
