"""The worker's signature check alone: a slice in C against one record at a time in Python.

Signs 2,000 fleet-sized record values (~330 B) with 25 org keys, as
`tokenpulse simulate` signs, and checks them as the worker does: once with
`Keyring.signers_of` (the slice in one C call, schemas/_sigcheck.c) and once
record by record with `Keyring.signer_of` (the Python check, also what
TOKENPULSE_NATIVE_SIGNATURE_CHECK=false runs), in alternation, from a warm
key cache. CPU us per record, median of 30 passes each. In a drain the
Python check costs about twice its hot figure (round 21: caches, the GIL
handed to the consumer thread between records); this is the floor of each.

    .venv/bin/python bench/sigcheck_bench.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

from tokenpulse.schemas.signing import NATIVE_CHECK, Keyring, sign_record
from tokenpulse.streams.records import InRecord

RECORDS = 2_000
ORGS = 25
PASSES = 30


def main() -> int:
    if not NATIVE_CHECK:
        print("the C check is not built (make setup needs gcc and libssl-dev)", file=sys.stderr)
        return 1
    ring = Keyring()
    recs: list[InRecord] = []
    pairs: list[tuple[bytes, tuple[tuple[str, bytes], ...]]] = []
    for org in range(ORGS):
        ring.add(f"org{org}", "k1", os.urandom(32))
    for i in range(RECORDS):
        tenant = f"org{i % ORGS}"
        value = os.urandom(165).hex().encode()
        secret = ring.secret(tenant, "k1") or b""
        headers = tuple(sign_record(value, tenant_id=tenant, key_id="k1", secret=secret))
        recs.append(InRecord("usage", 0, i, None, value, headers))
        pairs.append((value, headers))

    def python() -> object:
        return [ring.signer_of(value, headers) for value, headers in pairs]

    def c_slice() -> object:
        return ring.signers_of(recs, 1 << 20)

    assert python() == c_slice()
    runs: dict[str, list[float]] = {"C, a slice a call": [], "Python, a record a call": []}
    checks: dict[str, Callable[[], object]] = dict(zip(runs, (c_slice, python), strict=True))
    for _ in range(PASSES):
        for name, check in checks.items():
            started = time.process_time()
            check()
            runs[name].append((time.process_time() - started) / RECORDS * 1e6)
    c_us, py_us = (statistics.median(v) for v in runs.values())
    print("| check | CPU us per record | x Python |")
    print("| --- | --- | --- |")
    print(f"| C, a slice a call | {c_us:.3f} | {c_us / py_us:.2f} |")
    print(f"| Python, a record a call | {py_us:.3f} | 1.00 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
