"""The worker's processing: an older commit against the working tree, batch by batch in one process.

`bench/prepare_bench.py` measures one tree, and on the 2-core bench VM its
passes move by 30 % within a minute: more than most changes. Here both
trees' `UsageProcessor`s run in one process, driven by this tree's
prepare_bench (same records, same batches, same 100 quotas), and take turns
batch by batch (a batch of 2,000 records is ~15 ms of CPU), so a change in
the VM's speed reaches both alike. The cyclic GC is off during a pass (a
collection would be charged to whichever tree allocated last, and it scans
both trees' objects): this compares the code paths, not their garbage.

    .venv/bin/python bench/ab_prepare.py REV [PASSES] [--signed]
    .venv/bin/python bench/ab_prepare.py 9ac7048 12

With --signed, every record is signed and each tree verifies it
(prepare_bench.py --signed; REV must be of round 19 on).

REV is checked out into a temporary git worktree. Prints one row: each
tree's median us of CPU per record, and new/old per pass (median, range,
passes in which the tree was faster). REV must have the processor API this
tree's prepare_bench drives (round 19 on: `_batches(keyring)`).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "bench" / "prepare_bench.py"


def _load_driver(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DRIVER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_both(old_root: Path) -> tuple[ModuleType, ModuleType]:
    """The driver bound to this tree's tokenpulse, then to the one under `old_root`."""
    new = _load_driver("prepare_new")
    for name in [n for n in sys.modules if n == "tokenpulse" or n.startswith("tokenpulse.")]:
        del sys.modules[name]
    # The editable install's finder would resolve `tokenpulse` to this tree again.
    sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
    sys.path.insert(0, str(old_root))
    old = _load_driver("prepare_old")
    for module, root in ((new, ROOT), (old, old_root)):
        where = module.UsageProcessor.prepare.__code__.co_filename
        if not where.startswith(str(root)):
            raise SystemExit(f"the processor came from {where}, not from {root}")
    return new, old


def _processor(driver: ModuleType, keyring: Any) -> Any:
    return driver.UsageProcessor(
        sink=driver._EncodingSink(),
        producer=driver._Sent(),
        committer=driver._commit,
        dlq_topic="dlq",
        keyring=keyring,
        quotas=driver.quota_engine(),
    )


async def _pass(
    n: int,
    trees: tuple[ModuleType, ModuleType],
    batches: tuple[list[Any], list[Any]],
    keyrings: tuple[Any, Any],
) -> tuple[float, float]:
    """CPU seconds of (new, old) over every batch, alternating which goes first."""
    procs = (_processor(trees[0], keyrings[0]), _processor(trees[1], keyrings[1]))
    spent = [0.0, 0.0]
    for j, pair in enumerate(zip(*batches, strict=True)):
        for side in (0, 1) if (n + j) % 2 == 0 else (1, 0):
            started = time.process_time()
            await procs[side].process(pair[side])
            spent[side] += time.process_time() - started
    return spent[0], spent[1]


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--signed"]
    if not args:
        print(__doc__)
        return 2
    rev, passes = args[0], int(args[1]) if len(args) > 1 else 12
    signed = "--signed" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="tokenpulse-ab-") as tmp:
        old_root = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old_root), rev],
            check=True,
        )
        try:
            trees = _load_both(old_root)
            # Each tree's own Keyring (each signs its records and verifies them).
            keyrings = tuple(t.Keyring() if signed else None for t in trees)
            batches = (trees[0]._batches(keyrings[0]), trees[1]._batches(keyrings[1]))
            records = sum(map(len, batches[0]))
            rows: list[tuple[float, float]] = []
            for n in range(passes):
                gc.collect()
                gc.disable()
                try:
                    rows.append(asyncio.run(_pass(n, trees, batches, keyrings)))
                finally:
                    gc.enable()
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_root)],
                check=False,
            )
    new_us = statistics.median(r[0] for r in rows) / records * 1e6
    old_us = statistics.median(r[1] for r in rows) / records * 1e6
    ratios = sorted(r[0] / r[1] for r in rows)
    faster = sum(x < 1 for x in ratios)
    print(f"| {rev} us/record | tree us/record | tree/{rev} per pass | tree faster |")
    print("| --- | --- | --- | --- |")
    print(
        f"| {old_us:.2f} | {new_us:.2f} | {statistics.median(ratios):.3f}"
        f" ({ratios[0]:.3f}-{ratios[-1]:.3f}) | {faster} of {len(ratios)} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
