"""UUIDv7 (RFC 9562): time-ordered event ids, monotonic within a process.

Layout: 48-bit Unix milliseconds | ver 7 | 12-bit rand_a | var 10 | 62-bit rand_b.
Monotonicity (RFC 9562 §6.2, method 1): rand_a plus the top 30 bits of rand_b
form a 42-bit counter right after the timestamp, seeded randomly (top bit
clear, leaving room to count) at each new millisecond and incremented within
one; on counter overflow, or if the clock steps back, the timestamp is
advanced past the last one issued. The low 32 bits are fresh random bits for
every id.

Speed (this runs once per record()): everything up to the last group,
"tttttttt-tttt-7aaa-vbbb-", depends only on the millisecond and the counter's
top 26 bits, so it is formatted when those change (a new millisecond, or
every 65,536 ids); each id formats only its last 48 bits.
"""

from __future__ import annotations

import os
import random
import threading
import time

_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_SEED_MASK = (1 << (_COUNTER_BITS - 1)) - 1  # top bit clear: at least 2^41 increments per ms
_LOW_COUNTER_MASK = 0xFFFF  # the counter bits in the last group (with 32 random bits)

_time_ns = time.time_ns
_lock = threading.Lock()
_getrandbits = random.Random(os.urandom(32)).getrandbits  # noqa: S311 - uniqueness, not secrecy
_last_ms = 0
_counter = 0
_head = ""


def _new_head() -> None:
    """Format the id text that _last_ms and the counter's top bits fix (lock held)."""
    global _head
    ms, c = _last_ms, _counter
    _head = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{c >> 30:03x}-{0x8000 | (c >> 16) & 0x3FFF:04x}-"


def _reseed_after_fork() -> None:
    # A forked child must not replay the parent's sequence (nor inherit a held lock).
    global _lock, _getrandbits, _last_ms
    _lock = threading.Lock()
    _getrandbits = random.Random(os.urandom(32)).getrandbits  # noqa: S311
    _last_ms = 0


os.register_at_fork(after_in_child=_reseed_after_fork)


def uuid7() -> str:
    """A new UUIDv7 in canonical 8-4-4-4-12 lowercase form."""
    global _last_ms, _counter
    ms = _time_ns() // 1_000_000
    with _lock:
        if ms > _last_ms:
            _last_ms = ms
            _counter = _getrandbits(_COUNTER_BITS) & _SEED_MASK
            _new_head()
        else:  # same millisecond (or the clock stepped back): count on
            _counter += 1
            if not _counter & _LOW_COUNTER_MASK:  # carried into the head's bits
                if _counter > _COUNTER_MAX:
                    _last_ms += 1
                    _counter = _getrandbits(_COUNTER_BITS) & _SEED_MASK
                _new_head()
        return f"{_head}{(_counter & _LOW_COUNTER_MASK) << 32 | _getrandbits(32):012x}"
