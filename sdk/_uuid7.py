"""UUIDv7 (RFC 9562): time-ordered event ids, monotonic within a process.

Layout: 48-bit Unix milliseconds | ver 7 | 12-bit rand_a | var 10 | 62-bit rand_b.
Monotonicity (RFC 9562 §6.2, method 1): rand_a plus the top 30 bits of rand_b
form a 42-bit counter seeded randomly (top bit clear, leaving room to count)
at each new millisecond and incremented within one; on counter overflow, or if
the clock steps back, the timestamp is advanced past the last one issued.
"""

from __future__ import annotations

import os
import random
import threading
import time

_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_SEED_MASK = (1 << (_COUNTER_BITS - 1)) - 1  # top bit clear: at least 2^41 increments per ms


class _Generator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(os.urandom(32))  # noqa: S311 - uniqueness, not secrecy
        self._last_ms = 0
        self._counter = 0
        # A forked child must not replay the parent's sequence.
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(os.urandom(32))  # noqa: S311
        self._last_ms = 0

    def next_parts(self) -> tuple[int, int, int]:
        """(unix ms, 42-bit counter, 32 random bits) for the next id."""
        ms = time.time_ns() // 1_000_000
        with self._lock:
            if ms > self._last_ms:
                self._last_ms = ms
                self._counter = self._rng.getrandbits(_COUNTER_BITS) & _SEED_MASK
            else:
                self._counter += 1
                if self._counter > _COUNTER_MAX:
                    self._last_ms += 1
                    self._counter = self._rng.getrandbits(_COUNTER_BITS) & _SEED_MASK
                ms = self._last_ms
            return ms, self._counter, self._rng.getrandbits(32)


_GEN = _Generator()


def uuid7_int() -> int:
    ms, counter, tail = _GEN.next_parts()
    rand_b = ((counter & 0x3FFFFFFF) << 32) | tail
    return (ms << 80) | (0x7 << 76) | ((counter >> 30) << 64) | (0b10 << 62) | rand_b


def uuid7() -> str:
    """A new UUIDv7 in canonical 8-4-4-4-12 lowercase form."""
    h = uuid7_int().to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
