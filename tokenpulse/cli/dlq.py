"""`tokenpulse dlq`: what the dead-letter topic holds, and replaying records once fixed.

`summary` counts the parked records by reason; `replay` sends the originals
of the chosen reasons back to the usage topic as they were (key, bytes,
headers). See docs/operations.md, "DLQ handling and replays".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, topic_names, write_json
from tokenpulse.cli._progress import Progress
from tokenpulse.cli.reconcile import time_window
from tokenpulse.config import Settings
from tokenpulse.schemas import RejectReason

# Every reason the worker parks a record with (docs/contract.md), and the one
# for a record whose processing failed (a bug, not the record's fault).
REASONS = (*sorted(str(r) for r in RejectReason), "processing_error")


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "dlq",
        help="parked records by reason; replay them once fixed",
        description="The worker parks every record it rejects on tokenpulse.usage.dlq.v1 (with "
        "TOKENPULSE_TOPIC_PREFIX/SUFFIX): its reason, its origin, its original bytes and "
        "headers. `summary` counts them by reason; `replay` sends the originals back to the "
        "usage topic once their cause is fixed (a key the workers' keyring lacked, a limit "
        "raised). Replays are safe to repeat: an event is counted once.",
        example_lines=_EXAMPLES,
    )
    sub = p.add_subparsers(dest="dlq_cmd", metavar="ACTION", required=True)
    s = add_parser(
        sub,
        "summary",
        help="parked records per reason and origin topic",
        description="Read the DLQ topic from --since to --until (Kafka timestamps) and count "
        "its records per reason: records, and distinct original records (one SDK envelope "
        "with three bad events is three records, one origin).",
        example_lines=(_EXAMPLES[0], _EXAMPLES[1]),
    )
    _window(s)
    add_format(s, ("table", "json"))
    s.set_defaults(func=_summary)
    r = add_parser(
        sub,
        "replay",
        help="send parked records back to the usage topic",
        description="Send the original of every parked record of the chosen reasons (from "
        "--since to --until) back to the usage topic: its key, bytes and headers as they "
        "were, so a signature still holds, plus a tp-replay-of header naming where it was "
        "first parked from. Each original record is sent once however many DLQ records name "
        "it, also after earlier replays. Fix the cause first: a record that is still bad is "
        "parked again. Events already counted are dropped by the worker's dedup.",
        example_lines=(_EXAMPLES[2], _EXAMPLES[3]),
    )
    _window(r)
    r.add_argument(
        "--reason",
        action="append",
        required=True,
        choices=REASONS,
        metavar="REASON",
        help=f"replay records parked for this reason (repeatable): {', '.join(REASONS)}",
    )
    r.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
    add_format(r, ("table", "json"))
    r.set_defaults(func=_replay)


_EXAMPLES = (
    "tokenpulse dlq summary --since 24h",
    "tokenpulse dlq summary --since 2026-11-01T00:00:00Z --format json",
    "tokenpulse dlq replay --since 2h --reason bad_signature --dry-run",
    "tokenpulse dlq replay --since 1d --reason bad_signature --reason record_too_large",
)


def _window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", required=True, help="RFC 3339 time or a duration ago (2h, 30m)")
    p.add_argument("--until", default=None, help="RFC 3339 time or a duration ago (default: now)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="read timeout")


def _read(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from tokenpulse.dlq import read_parked

    since, until = time_window(args.since, args.until)
    settings = Settings.from_env()
    topics = topic_names()
    with Progress(f"reading {topics.dlq}", unit="records") as bar:
        parking = asyncio.run(
            read_parked(
                settings.kafka_bootstrap_servers, topics.dlq, since, until,
                timeout_s=args.timeout_s, progress=bar.update,
            )
        )  # fmt: skip
    return settings, topics, parking


def _summary(args: argparse.Namespace) -> int:
    from tokenpulse.dlq import summarize

    _, topics, parking = _read(args)
    doc = {"topic": topics.dlq, **summarize(parking)}
    if args.format == "json":
        write_json(doc)
    else:
        sys.stdout.write(_table(doc))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from tokenpulse.dlq import replay, summarize, to_replay

    settings, topics, parking = _read(args)
    chosen = to_replay(parking.parked, topics.usage, set(args.reason))
    sent = 0
    if chosen and not args.dry_run:
        sent = asyncio.run(replay(settings.kafka_bootstrap_servers, topics.usage, chosen))
    doc = {
        "topic": topics.usage,
        "dry_run": args.dry_run,
        "reasons": sorted(set(args.reason)),
        "to_send": len(chosen),
        "sent": sent,
        "parked": summarize(parking),
    }
    if args.format == "json":
        write_json(doc)
    else:
        verb = "would send" if args.dry_run else "sent"
        count = len(chosen) if args.dry_run else sent
        sys.stdout.write(
            f"{verb} {count} original record(s) of {', '.join(doc['reasons'])} to {topics.usage}\n"
        )
    return 0


def _table(doc: Mapping[str, Any]) -> str:
    lines = [
        f"{doc['topic']}: {doc['records']} record(s), {doc['origins']} original record(s)"
        + (f", {doc['unreadable']} unreadable" if doc["unreadable"] else ""),
    ]
    if doc["by_reason"]:
        lines += ["", f"{'reason':<28} {'records':>8} {'originals':>10}"]
        for reason, n in doc["by_reason"].items():
            lines.append(f"{reason:<28} {n['records']:>8} {n['origins']:>10}")
    return "\n".join(lines) + "\n"
