"""The peer: per-tenant per-minute usage written the way a user would without
tokenpulse, with quixstreams, consuming the same topic and writing to the
same ClickHouse (clickhouse-connect).

Run as a process: `python -m tokenpulse.bench.peer --bootstrap B --topic T
--records N --clickhouse-url URL --database DB --group G --state-dir DIR`;
prints one JSON line {"records", "elapsed_s", "rate_rps", "rows_written"}.
It parses JSON, skips what does not parse, windows by event time (tumbling
1 min, 5 min grace), sums tokens per model inside each tenant's window and
writes closed windows in batches. It does not dedup by event_id or validate
fields: that is what a quick hand-written job typically leaves out.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

import orjson

PEER_TABLE = "peer_usage_by_minute"


def _ts_ms(value: Any) -> int | None:
    try:
        doc = orjson.loads(value)
        return int(datetime.fromisoformat(doc["occurred_at"]).timestamp() * 1000)
    except Exception:
        return None


def run_peer(args: argparse.Namespace) -> dict[str, float]:
    try:
        from quixstreams import Application
        from quixstreams.sinks import BatchingSink, SinkBatch
    except ImportError as exc:
        raise SystemExit(
            f"the quixstreams peer needs the bench extra: pip install 'tokenpulse[bench]' ({exc})"
        ) from None
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=args.clickhouse_url)
    client.command(
        f"CREATE TABLE IF NOT EXISTS {args.database}.{PEER_TABLE} (tenant_id String,"
        " model String, minute DateTime('UTC'), events UInt64, input_tokens UInt64,"
        " output_tokens UInt64) ENGINE = SummingMergeTree ORDER BY (tenant_id, model, minute)"
    )
    state = {"seen": 0, "first": 0.0, "last": 0.0, "rows": 0}

    class ClickHouseMinutes(BatchingSink):
        def write(self, batch: SinkBatch) -> None:
            rows = [
                (r["tenant_id"], r["model"], r["minute"], r["events"], r["input"], r["output"])
                for item in batch
                for r in [item.value]
            ]
            if rows:
                client.insert(
                    f"{args.database}.{PEER_TABLE}",
                    rows,
                    column_names=[
                        "tenant_id", "model", "minute", "events", "input_tokens", "output_tokens"
                    ],
                )  # fmt: skip
                state["rows"] += len(rows)

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )

    def extract(value: Any, headers: Any, timestamp: float, ts_type: Any) -> int:
        ms = _ts_ms(value)
        return int(timestamp) if ms is None else ms

    topic = app.topic(
        args.topic, key_deserializer="str", value_deserializer="bytes", timestamp_extractor=extract
    )
    sdf = app.dataframe(topic)

    def count(value: Any) -> None:
        now = time.monotonic()
        if state["seen"] == 0:
            state["first"] = now
        state["seen"] += 1
        state["last"] = now
        if state["seen"] >= args.records:
            app.stop()

    def parse(value: Any) -> dict[str, Any] | None:
        try:
            doc = orjson.loads(value)
            return {
                "model": str(doc["model"]),
                "input": int(doc["input_tokens"]),
                "output": int(doc["output_tokens"]),
            }
        except Exception:
            return None

    def add(acc: dict[str, list[int]], ev: dict[str, Any]) -> dict[str, list[int]]:
        s = acc.setdefault(ev["model"], [0, 0, 0])
        s[0] += 1
        s[1] += ev["input"]
        s[2] += ev["output"]
        return acc

    def init(ev: dict[str, Any]) -> dict[str, list[int]]:
        return add({}, ev)

    def rows(value: dict[str, Any], key: Any, ts: Any, headers: Any) -> list[dict[str, Any]]:
        minute = datetime.fromtimestamp(value["start"] / 1000, UTC)
        return [
            {"tenant_id": key, "model": m, "minute": minute,
             "events": s[0], "input": s[1], "output": s[2]}
            for m, s in value["value"].items()
        ]  # fmt: skip

    sdf = sdf.update(count)
    sdf = sdf.apply(parse).filter(lambda v: v is not None)
    sdf = sdf.tumbling_window(duration_ms=60_000, grace_ms=300_000).reduce(add, init).final()
    sdf = sdf.apply(rows, expand=True, metadata=True)
    sdf.sink(ClickHouseMinutes())
    app.run()
    client.close()
    elapsed = max(state["last"] - state["first"], 1e-9)
    return {
        "records": state["seen"],
        "elapsed_s": elapsed,
        "rate_rps": state["seen"] / elapsed,
        "rows_written": state["rows"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    for name in ("bootstrap", "topic", "clickhouse-url", "database", "group", "state-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--records", type=int, required=True)
    print(json.dumps(run_peer(p.parse_args())), flush=True)


if __name__ == "__main__":
    main()
