"""`tokenpulse demo`: the main job on a fresh machine, end to end.

Starts the local stack (real Kafka, the embedded ClickHouse endpoint) unless
KAFKA_BOOTSTRAP_SERVERS and CLICKHOUSE_URL point elsewhere, migrates the
database, sets example quotas, runs a worker, sends a simulated fleet through
the SDK (signed per org), waits until ClickHouse has counted every accepted
event, and prints the usage and the month's bill. The stack stays up for
further commands; `tokenpulse dev down` stops it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenpulse.cli._common import add_parser, topic_names
from tokenpulse.errors import ServiceUnavailable


def register(subparsers: Any) -> None:
    from tokenpulse.cli.simulate import add_fleet_arguments

    p = add_parser(
        subparsers,
        "demo",
        help="the whole pipeline on a simulated fleet, end to end",
        description=__doc__ or "",
        example_lines=(
            "tokenpulse demo                              # 20,000 records from 40 tenants",
            "tokenpulse demo --events 100000 --tenants 200 --seed 1",
        ),
    )
    add_fleet_arguments(p)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for counting")
    p.set_defaults(func=run)


def _say(text: str) -> None:
    sys.stdout.write(f"==> {text}\n")
    sys.stdout.flush()


def _connection() -> dict[str, str]:
    """The stack's connection settings; starts the local stack when none are given."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("CLICKHOUSE_URL"):
        _say("using KAFKA_BOOTSTRAP_SERVERS and CLICKHOUSE_URL from the environment")
        return {}
    from tokenpulse.local.stack import LocalStack

    _say("starting the local stack (real Kafka + embedded ClickHouse); first run downloads jars")
    stack = LocalStack.default()
    stack.up()
    from tokenpulse.config import connection_file, read_connection_file

    return read_connection_file(connection_file())


def run(args: argparse.Namespace) -> int:
    import asyncio

    from tokenpulse.cli import main as cli_main
    from tokenpulse.cli.simulate import fleet_config
    from tokenpulse.config import Settings, tokenpulse_home
    from tokenpulse.fleet import tenant_ids
    from tokenpulse.simulate import ensure_keyring, org_of, run_simulation

    os.environ.update(_connection())
    settings = Settings.from_env()
    _say(f"Kafka {settings.kafka_bootstrap_servers}, ClickHouse {settings.clickhouse}")

    _say("migrating ClickHouse")
    if cli_main(["db", "migrate"]) != 0:
        return 1

    config = fleet_config(args)
    home = tokenpulse_home()
    keyring = home / "dev" / "keyring.json"
    orgs = sorted({org_of(t) for t in tenant_ids(config.tenants)} | {"acme"})
    secrets = ensure_keyring(keyring, orgs)

    _say("setting example quotas (daily token budgets per org and a department)")
    for tenant, limit in (
        ("acme", 20_000_000),
        ("acme/research", 5_000_000),
        ("globex", 8_000_000),
    ):
        quota_id = "demo-" + tenant.replace("/", "-")
        rc = cli_main(
            ["quota", "set", "--tenant", tenant, "--period", "day", "--limit", str(limit),
             "--id", quota_id]
        )  # fmt: skip
        if rc != 0:
            return rc

    log_path = home / "dev" / "worker.log"
    _say(f"starting a worker (log: {log_path})")
    worker = _start_worker(keyring, log_path)
    try:
        _say(f"sending {config.events} records from {config.tenants} simulated agents")
        result = asyncio.run(
            run_simulation(
                config,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic=topic_names().usage,  # the worker's names (TOKENPULSE_TOPIC_PREFIX)
                org_secrets=secrets,
            )
        )
        _say(
            f"sent {sum(result.sent.values())} records in {result.elapsed_s:.1f}s: "
            + ", ".join(f"{v} {k}" for k, v in sorted(result.sent.items()))
        )
        counted = _wait_counted(settings, config.seed, result.expected_events, args.timeout, worker)
    finally:
        _stop_worker(worker)
    _say(f"ClickHouse counted {counted} of {result.expected_events} unique accepted events")
    _print_summary(settings, config.seed)
    _print_alerts(settings)
    month = datetime.now(UTC).strftime("%Y-%m")
    top = _print_invoices(settings, month)
    if top:
        _say(f"the invoice of {top} (tokenpulse bill --month {month} --account {top} --by-tenant)")
        cli_main(["bill", "--month", month, "--account", top, "--by-tenant"])
    _say("done. The stack is still up: `tokenpulse dev status`, `tokenpulse dev down`.")
    return 0 if counted == result.expected_events else 1


def _start_worker(keyring: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TOKENPULSE_KEYRING_FILE=str(keyring))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tokenpulse", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _client(settings: Any) -> Any:
    import clickhouse_connect

    ch = settings.clickhouse
    return clickhouse_connect.get_client(
        host=ch.host,
        port=ch.port,
        username=ch.username,
        password=ch.password,
        database=ch.database,
        secure=ch.secure,
    )


def _wait_counted(
    settings: Any, seed: int, expected: int, timeout_s: float, worker: subprocess.Popen[bytes]
) -> int:
    client = _client(settings)
    deadline = time.monotonic() + timeout_s
    counted = -1
    try:
        while time.monotonic() < deadline:
            counted = int(
                client.query(
                    "SELECT count() FROM usage_events WHERE startsWith(event_id, {p:String})",
                    parameters={"p": f"sim-{seed}-"},
                ).result_rows[0][0]
            )
            if counted >= expected:
                return counted
            if worker.poll() is not None:
                raise ServiceUnavailable(
                    f"the worker exited with code {worker.returncode}; see its log"
                )
            time.sleep(0.5)
    finally:
        client.close()
    return counted


def _print_summary(settings: Any, seed: int) -> None:
    client = _client(settings)
    try:
        rows = client.query(
            """
            SELECT splitByChar('/', tenant_id)[1] AS org, count() AS events,
                   sum(input_tokens) AS input, sum(cached_input_tokens) AS cached,
                   sum(output_tokens) AS output, countIf(late) AS late
            FROM usage_events WHERE startsWith(event_id, {p:String})
            GROUP BY org ORDER BY input + output DESC
            """,
            parameters={"p": f"sim-{seed}-"},
        ).result_rows
    finally:
        client.close()
    header = f"{'org':10} {'events':>8} {'input':>12} {'cached':>12} {'output':>12} {'late':>5}"
    sys.stdout.write(header + "\n" + "-" * len(header) + "\n")
    for org, events, inp, cached, out, late in rows:
        sys.stdout.write(f"{org:10} {events:>8} {inp:>12} {cached:>12} {out:>12} {late:>5}\n")


def _print_invoices(settings: Any, month: str) -> str | None:
    """Invoice totals of the month per billing account (top ten) and in all.

    Returns the top account, whose invoice the demo then prints split by tenant.
    """
    from decimal import Decimal

    from tokenpulse.cli.bill import _pricebook_path
    from tokenpulse.sinks.billing import compute_invoices, fetch_usage, load_pricebook
    from tokenpulse.sinks.billing.invoice import parse_month

    book = load_pricebook(_pricebook_path(None))
    first = parse_month(month)
    client = _client(settings)
    try:
        rows = fetch_usage(client, settings.clickhouse.database, first)
    finally:
        client.close()
    invoices = sorted(compute_invoices(rows, book, first), key=lambda i: -i.total)
    grand = sum((i.total for i in invoices), Decimal(0))
    _say(
        f"invoices for {month}: {len(invoices)} billing accounts, {grand} in all "
        "(examples/pricebook.toml bills each org)"
    )
    for inv in invoices[:10]:
        sys.stdout.write(
            f"  {inv.account_id:16} {inv.currency} {inv.total:>12}  ({len(inv.tenants)} tenants)\n"
        )
    return invoices[0].account_id if invoices else None


def _print_alerts(settings: Any) -> None:
    """The quota alerts on the alerts topic (all runs of the demo today)."""
    import asyncio

    from tokenpulse.schemas import decode_quota_alert

    alerts_topic = topic_names().alerts

    async def read() -> list[Any]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            alerts_topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=2000)
            return [decode_quota_alert(m.value) for msgs in batches.values() for m in msgs]
        finally:
            await consumer.stop()

    alerts = asyncio.run(read())
    _say(f"{len(alerts)} quota alerts on {alerts_topic}")
    for a in alerts[-10:]:
        sys.stdout.write(
            f"  {a.tenant_id:16} {a.quota_id:22} crossed {a.threshold_pct:>3}% "
            f"({a.used} of {a.limit} tokens, period from {a.period_start:%Y-%m-%d %H:%M})\n"
        )
