"""`tokenpulse report --html out.html`: usage, quotas, costs and capacity as one page."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, example_file, write_json
from tokenpulse.config import TOPIC_QUOTAS, Settings
from tokenpulse.errors import ServiceUnavailable, TokenpulseError

DEFAULT_PRICEBOOK = Path("examples/pricebook.toml")
DEFAULT_SERVING = Path("examples/serving.toml")


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "report",
        help="an HTML report: usage, quotas, costs, capacity",
        description=(
            "One HTML file with inline SVG charts: tokens per day by tenant and model, top"
            " tenants, each quota's burn-down, cost by department and GPU capacity with its"
            " forecast. Opening it fetches nothing. Parts whose input is missing (no price"
            " book, Kafka not reachable) are replaced by a note. stdout: the file's path"
            " (text) or a summary (json)."
        ),
        example_lines=(
            "tokenpulse report --html report.html --month 2026-11",
            "tokenpulse report --html report.html --no-quotas --format json",
        ),
    )
    p.add_argument("--html", type=Path, required=True, help="output file")
    p.add_argument("--month", help="YYYY-MM (default: the current month, UTC)")
    p.add_argument("--database", help="database (default: from CLICKHOUSE_URL)")
    p.add_argument(
        "--pricebook",
        type=Path,
        help="price book TOML (default: $TOKENPULSE_PRICEBOOK, else examples/pricebook.toml;"
        " a missing default only omits the costs)",
    )
    p.add_argument(
        "--serving",
        type=Path,
        help="serving table TOML (default: examples/serving.toml; a missing default only"
        " omits capacity)",
    )
    p.add_argument(
        "--quotas-topic",
        help="quota definitions topic (default: tokenpulse.quotas.v1 with"
        " TOKENPULSE_TOPIC_PREFIX/SUFFIX, as the worker uses)",
    )
    p.add_argument("--no-quotas", action="store_true", help="do not read quotas from Kafka")
    p.add_argument(
        "--kafka-timeout-s", type=float, default=10.0, help="give up on Kafka after this long"
    )
    add_format(p)
    p.set_defaults(func=run)


def _progress(message: str, started: float) -> None:
    # Progress goes to stderr so the one line on stdout (the file) stays scriptable.
    sys.stderr.write(f"tokenpulse: [{time.monotonic() - started:6.1f}s] {message}\n")
    sys.stderr.flush()


def _optional(explicit: Path | None, env_key: str | None, default: Path) -> tuple[Path, bool]:
    if explicit is not None:
        return explicit, True
    env = os.environ.get(env_key) if env_key else None
    return (Path(env), True) if env else (default, False)


def run(args: argparse.Namespace) -> int:
    from tokenpulse.report import Inputs, gather, load_definitions, render_html
    from tokenpulse.sinks._client import sync_client
    from tokenpulse.sinks.billing import load_pricebook, parse_month
    from tokenpulse.sinks.capacity import load_serving

    started = time.monotonic()
    now = datetime.now(UTC)
    month = parse_month(args.month) if args.month else now.date().replace(day=1)
    settings = Settings.from_env()
    database = args.database or settings.clickhouse.database

    kw: dict[str, Any] = {}
    book_path, explicit = _optional(
        args.pricebook, "TOKENPULSE_PRICEBOOK", example_file(DEFAULT_PRICEBOOK.name)
    )
    if explicit or book_path.exists():
        kw["pricebook"] = load_pricebook(book_path)  # an explicit bad file is an error
    else:
        kw["pricebook_note"] = "costs omitted: no price book (pass --pricebook PATH)"
    serving_path, explicit = _optional(args.serving, None, example_file(DEFAULT_SERVING.name))
    if explicit or serving_path.exists():
        kw["serving"] = load_serving(serving_path)
    else:
        kw["serving_note"] = "no serving table (pass --serving PATH)"

    if args.no_quotas:
        kw["quota_note"] = "not requested (--no-quotas)"
    else:
        topic = args.quotas_topic or (
            os.environ.get("TOKENPULSE_TOPIC_PREFIX", "")
            + TOPIC_QUOTAS
            + os.environ.get("TOKENPULSE_TOPIC_SUFFIX", "")
        )
        _progress(f"reading quota definitions from {topic}", started)
        try:
            kw["quotas"] = load_definitions(
                settings.kafka_bootstrap_servers, topic, timeout_s=args.kafka_timeout_s
            )
            _progress(f"{len(kw['quotas'])} quota definitions", started)
        except ServiceUnavailable as exc:
            kw["quota_note"] = f"Kafka not reachable ({exc.message})"
            _progress("Kafka not reachable: quotas omitted", started)

    _progress(f"querying ClickHouse {settings.clickhouse} database {database}", started)
    from clickhouse_connect.driver.exceptions import DatabaseError

    client = sync_client(settings.clickhouse)
    try:
        data = gather(client, Inputs(database=database, month=month, now=now, **kw))
    except DatabaseError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TokenpulseError(
            f"ClickHouse query for the report failed ({first[:300]}); is the schema there?"
            f" run `tokenpulse db migrate --database {database}`",
        ) from None
    finally:
        client.close()
    _progress("rendering", started)
    page = render_html(data)
    out: Path = args.html
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)  # readers never see a half-written report
    except OSError as exc:
        raise TokenpulseError(
            f"cannot write {out}: {exc.strerror}; choose another --html path"
        ) from None
    size = len(page.encode())
    _progress(f"wrote {size:,} bytes", started)
    if args.format == "json":
        write_json(
            {
                "html": str(out),
                "bytes": size,
                "month": f"{month:%Y-%m}",
                "database": database,
                "notes": {k: v for k, v in kw.items() if k.endswith("_note")},
                "elapsed_s": round(time.monotonic() - started, 3),
            }
        )
    else:
        sys.stdout.write(f"{out}\n")
    return 0
