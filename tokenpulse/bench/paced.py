"""The bench's paced load in a process of its own, like an agent runtime.

`python -m tokenpulse.bench.paced --bootstrap ... --topic ... --rate-eps ...`
runs `load.produce_paced` and prints one JSON line per sampled event
(`{"fresh": event_id, "at": wall time}`) and per quota crossing
(`{"cross": tenant, "at": wall time}`) as it sends them, then
`{"sent": n, "cpu_s": its CPU seconds}`. In the bench's own process the generator shared one GIL
(and the collector passes over the backlog's records) with the freshness
poll and the alert watcher: at 22k events/s its events waited seconds in
the SDK's buffer, and that wait was measured as pipeline latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import IO, Any

from tokenpulse.bench.load import PacedResult, produce_paced


class _Reporting(PacedResult):
    """A PacedResult whose samples are printed the moment they are recorded."""

    def __init__(self, out: IO[str]) -> None:
        super().__init__()
        self.fresh_sent_at = _Printing(out, "fresh")
        self.crossing_sent_at = _Printing(out, "cross")


class _Printing(dict[str, float]):
    def __init__(self, out: IO[str], kind: str) -> None:
        super().__init__()
        self.out = out
        self.kind = kind

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        self.out.write(json.dumps({self.kind: key, "at": value}) + "\n")
        self.out.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--rate-eps", type=float, required=True)
    p.add_argument("--duration-s", type=float, required=True)
    p.add_argument("--sample-every", type=int, required=True)
    p.add_argument("--alert-tenants", default="")
    p.add_argument("--alert-limit", type=int, default=10_000)
    p.add_argument("--id-prefix", default="fresh")
    args = p.parse_args(argv)
    result = _Reporting(sys.stdout)
    asyncio.run(
        produce_paced(
            args.bootstrap,
            args.topic,
            rate_eps=args.rate_eps,
            duration_s=args.duration_s,
            sample_every=args.sample_every,
            alert_tenants=[t for t in args.alert_tenants.split(",") if t],
            alert_limit=args.alert_limit,
            result=result,
            id_prefix=args.id_prefix,
        )
    )
    # Its own CPU (user + system), which the bench cannot read once it exited.
    cpu_s = sum(os.times()[:2])
    sys.stdout.write(json.dumps({"sent": result.sent, "cpu_s": cpu_s}) + "\n")
    return 0


@dataclass
class PacedProcess:
    """The generator process seen from the bench: its samples, filled as they arrive."""

    argv: list[str]
    result: PacedResult = field(default_factory=PacedResult)
    _proc: Any = None
    _reader: threading.Thread | None = None

    def start(self) -> None:
        import subprocess

        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tokenpulse.bench.paced", *self.argv],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            item = json.loads(line)
            if "fresh" in item:
                self.result.fresh_sent_at[item["fresh"]] = float(item["at"])
            elif "cross" in item:
                self.result.crossing_sent_at[item["cross"]] = float(item["at"])
            elif "sent" in item:
                self.result.sent = int(item["sent"])
                self.result.cpu_s = float(item.get("cpu_s", 0.0))

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Ends the process if it still runs; raises if it failed."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
        code = self._proc.wait(30)
        if self._reader is not None:
            self._reader.join(10)
        if code not in (0, -15):
            raise RuntimeError(f"the paced load generator exited with {code}")


if __name__ == "__main__":
    sys.exit(main())
