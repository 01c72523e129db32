"""`tokenpulse reconcile`: compare Kafka with ClickHouse and the DLQ, name every difference.

Exit codes: 0 no differences, 1 differences (or an error), 2 usage error.
Pending offsets (not processed yet) are reported but are differences only
with --strict. See docs/reconcile.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, topic_names, write_json
from tokenpulse.cli._progress import Progress
from tokenpulse.config import TOPIC_USAGE, Settings
from tokenpulse.errors import ConfigError

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FALSE = {"0", "false", "no", "off"}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """RFC 3339 with an offset (2026-11-25T08:00:00Z) or a duration ago (90s, 15m, 2h, 7d)."""
    now = now or datetime.now(UTC)
    match = _DURATION_RE.match(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        at = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise ConfigError(
            f"cannot read time {text!r}; use RFC 3339 with an offset "
            "(2026-11-25T08:00:00Z) or a duration such as 30m, 2h, 7d"
        )
    return at.astimezone(UTC)


def time_window(since_text: str, until_text: str | None) -> tuple[datetime, datetime | None]:
    """--since and --until as times (until None: now); until must come after since."""
    since = parse_time(since_text)
    until = parse_time(until_text) if until_text else None
    if until is not None and until <= since:
        raise ConfigError("--until must be later than --since")
    return since, until


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "reconcile",
        help="compare Kafka with ClickHouse and the DLQ (exit 1: differ)",
        description=(
            "Read the usage topic from --since to its end (or --until), apply the worker's "
            "acceptance rules and compare with usage_events and the DLQ, per partition, "
            "tenant and event id. Exit 0: no differences; 1: differences (or an error). "
            "Offsets the worker has not processed yet are reported as pending, and count "
            "as differences only with --strict. See docs/reconcile.md."
        ),
        example_lines=(
            "tokenpulse reconcile --since 2h",
            "tokenpulse reconcile --since 24h --until 5m --format json",
        ),
        notes="In a script, after the worker has drained: "
        "tokenpulse reconcile --since 1d --strict || alert",
    )
    p.add_argument("--since", required=True, help="RFC 3339 time or a duration ago (2h, 30m)")
    p.add_argument("--until", default=None, help="RFC 3339 time or a duration ago (default: now)")
    p.add_argument(
        "--topic",
        default=None,
        help=f"usage topic (default {TOPIC_USAGE} with TOKENPULSE_TOPIC_PREFIX/SUFFIX)",
    )
    p.add_argument("--dlq-topic", default=None, help="DLQ topic (default: beside --topic)")
    p.add_argument("--database", default=None, help="database (default: from CLICKHOUSE_URL)")
    p.add_argument(
        "--keyring",
        type=Path,
        default=None,
        help="the worker's keyring when it verifies signatures (TOKENPULSE_KEYRING_FILE)",
    )
    p.add_argument("--strict", action="store_true", help="pending offsets count as differences")
    p.add_argument(
        "--worker-group",
        default=None,
        help="the workers' consumer group, whose commits say how far they got (default "
        "TOKENPULSE_WORKER_GROUP or tokenpulse-worker; '' to not read it)",
    )
    add_format(p, ("table", "json"))
    p.add_argument("--timeout-s", type=float, default=120.0, help="per-side read timeout")
    p.set_defaults(func=_run)


def _keyring(args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    from tokenpulse.schemas import Keyring

    if args.keyring is not None:
        return Keyring.from_file(args.keyring)
    if env.get("TOKENPULSE_VERIFY_SIGNATURES", "").strip().lower() in _FALSE:
        return None
    path = env.get("TOKENPULSE_KEYRING_FILE")
    return Keyring.from_file(path) if path else None


def options(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Any:
    from tokenpulse.reconcile import ReconcileOptions

    env = os.environ if env is None else env
    settings = Settings.from_env(env)
    raw_max = env.get("TOKENPULSE_MAX_RECORD_BYTES") or "1048576"
    try:
        max_record_bytes = int(raw_max)
    except ValueError:
        raise ConfigError(
            f"TOKENPULSE_MAX_RECORD_BYTES must be an integer, got {raw_max!r}"
        ) from None
    since, until = time_window(args.since, args.until)
    return ReconcileOptions(
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        clickhouse=settings.clickhouse,
        since=since,
        until=until,
        topic=args.topic or topic_names(env).usage,
        dlq_topic=args.dlq_topic,
        database=args.database,
        keyring=_keyring(args, env),
        max_record_bytes=max_record_bytes,
        strict=args.strict,
        timeout_s=args.timeout_s,
        worker_group=(
            args.worker_group
            if args.worker_group is not None
            else env.get("TOKENPULSE_WORKER_GROUP") or "tokenpulse-worker"
        )
        or None,
    )


def _run(args: argparse.Namespace) -> int:
    from tokenpulse.reconcile import reconcile

    opts = options(args)
    with Progress(f"reading {opts.topic}", unit="records") as bar:
        report = asyncio.run(reconcile(opts, progress=bar.update))
    if args.format == "json":
        write_json(report.to_dict())
    else:
        sys.stdout.write(render_table(report.to_dict()))
    return 0 if report.ok else 1


def render_table(data: Mapping[str, Any]) -> str:
    """The human view of Report.to_dict(): summary, per partition/tenant, differences, lag."""
    s = data["summary"]
    lines = [
        f"reconcile {data['topic']} -> {data['database']}.usage_events: "
        + ("OK" if data["ok"] else f"{s['differences']} DIFFERENCES"),
        f"records {s['records']}  accepted {s['accepted']}  kafka duplicates "
        f"{s['kafka_duplicates']}  rejected {s['rejected']}  dlq {s['dlq_records']}  "
        f"counted before range {s['counted_before_range']}  pending offsets "
        f"{s['pending_offsets']}",
        "",
        f"{'part':>4}  {'tenant':<24} {'events exp/act':>16} {'input exp/act':>24} "
        f"{'output exp/act':>24} {'pending':>7}",
    ]
    for t in data["tenants"]:
        e, a = t["expected"], t["actual"]
        mark = "" if t["matches"] else "  <-- differs"
        lines.append(
            f"{t['partition']:>4}  {t['tenant_id']:<24} "
            f"{e['events']:>7}/{a['events']:<8} {e['input_tokens']:>11}/{a['input_tokens']:<12} "
            f"{e['output_tokens']:>11}/{a['output_tokens']:<12} {t['pending_events']:>7}{mark}"
        )
    if data["differences"]:
        lines += ["", "differences:"]
        for d in data["differences"]:
            where = f"p{d['partition']}" + (f"@{d['offset']}" if d["offset"] is not None else "")
            who = " ".join(
                x
                for x in (
                    f"tenant={d['tenant_id']}" if d["tenant_id"] is not None else "",
                    f"event_id={d['event_id']}" if d["event_id"] is not None else "",
                )
                if x
            )
            lines.append(f"  {d['kind']:<15} {where:<12} {who}  {d['detail']}")
    lines += ["", "lag:"]
    for lag in data["lag"]:
        lines.append(
            f"  p{lag['partition']}: offsets [{lag['start_offset']}, {lag['end_offset']}) "
            f"processed up to {lag['processed_upto']}, pending {lag['pending_offsets']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`tokenpulse reconcile ARGS` as a function (scripts, tests), with the CLI's exit codes."""
    from tokenpulse.errors import TokenpulseError

    parser = argparse.ArgumentParser(prog="tokenpulse")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["reconcile", *(argv or ())])
    try:
        rc: int = args.func(args)
    except TokenpulseError as exc:
        if args.format == "json":
            import orjson

            sys.stderr.write(orjson.dumps({"error": exc.to_dict()}).decode() + "\n")
        else:
            sys.stderr.write(f"tokenpulse: error: {exc.message}\n")
        return 1
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
