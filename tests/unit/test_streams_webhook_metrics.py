"""Alert webhooks against a local aiohttp server, JSON logs, the metrics collector."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from tokenpulse.schemas import Keyring
from tokenpulse.streams.logs import JsonFormatter
from tokenpulse.streams.metrics import WorkerMetrics
from tokenpulse.streams.processor import Counters
from tokenpulse.streams.webhook import ALERT_ID_HEADER, SIGNATURE_HEADER, WebhookSender, verify

SECRET = b"hook-secret-0123456789"
BODY = b'{"alert_id":"a1","tenant_id":"acme","threshold_pct":80}'


@dataclass
class Receiver:
    fail_first: int = 2
    attempts: int = 0
    delivered: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    got_one: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.delivered.append((dict(request.headers), body))
        self.got_one.set()
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield rec, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def test_webhook_retries_until_delivered_once_signed(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    sender = WebhookSender(url, SECRET, initial_backoff_s=0.01, max_backoff_s=0.05)
    events: list[str] = []
    sender.on_event = events.append
    await sender.start()
    try:
        assert sender.offer("a1", BODY)
        await asyncio.wait_for(rec.got_one.wait(), 30)
        await asyncio.sleep(0.1)  # nothing else may arrive
    finally:
        await sender.stop()
    assert rec.attempts == 3
    assert len(rec.delivered) == 1
    headers, body = rec.delivered[0]
    assert body == BODY
    assert headers[ALERT_ID_HEADER] == "a1"
    assert verify(SECRET, body, headers[SIGNATURE_HEADER], now_s=time.time())
    assert not verify(b"other", body, headers[SIGNATURE_HEADER], now_s=time.time())
    assert not verify(SECRET, body + b" ", headers[SIGNATURE_HEADER], now_s=time.time())
    # replay protection: the same signature an hour later is stale
    assert not verify(SECRET, body, headers[SIGNATURE_HEADER], now_s=time.time() + 3600)
    assert (sender.delivered, sender.failed, events.count("attempt_failed")) == (1, 0, 2)
    assert "hook-secret" not in repr(sender)


async def test_full_queue_drops_with_a_count_and_gives_up_after_max_attempts(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    rec, url = receiver
    rec.fail_first = 1000
    sender = WebhookSender(url, None, queue_max=1, max_attempts=2, initial_backoff_s=0.01)
    # Not started: nothing drains, so the second offer finds the queue full.
    assert sender.offer("a1", BODY)
    with caplog.at_level(logging.ERROR, logger="tokenpulse.streams.webhook"):
        assert not sender.offer("a2", BODY)
    assert sender.dropped == 1
    assert any("queue full" in r.getMessage() for r in caplog.records)
    await sender.start()
    try:
        for _ in range(300):
            if sender.failed:
                break
            await asyncio.sleep(0.02)
    finally:
        await sender.stop()
    assert (sender.failed, sender.delivered, rec.attempts) == (1, 0, 2)


def test_json_log_lines_carry_extras_and_mask_secrets() -> None:
    record = logging.LogRecord("tokenpulse.x", logging.WARNING, __file__, 1, "n=%d", (3,), None)
    record.tenant_id = "acme"
    record.webhook_secret = "s3cr3t"
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert doc["level"] == "warning"
    assert doc["logger"] == "tokenpulse.x"
    assert doc["msg"] == "n=3"
    assert doc["tenant_id"] == "acme"
    assert doc["webhook_secret"] == "***"
    assert "s3cr3t" not in line
    assert doc["ts"].endswith("+00:00")


def test_metrics_are_read_from_the_processor_counters() -> None:
    class Quotas:
        periods_read = 3
        periods_exact = 11
        periods_quiet = 4

    class Proc:
        counters = Counters(records=7, accepted=5, duplicates=1, late=2, rows_written=5, alerts=1)
        quotas = Quotas()

    Proc.counters.rejected_by_reason["malformed_json"] = 1
    metrics = WorkerMetrics(lambda: Proc(), lambda: {("usage", 3): 42})
    metrics.webhook_event("delivered")
    metrics.sink_batch_seconds.observe(0.02)
    text = generate_latest(metrics.registry).decode()
    for line in (
        "tokenpulse_records_in_total 7.0",
        "tokenpulse_events_accepted_total 5.0",
        "tokenpulse_dedup_hits_total 1.0",
        "tokenpulse_late_events_total 2.0",
        'tokenpulse_records_rejected_total{reason="malformed_json"} 1.0',
        "tokenpulse_alerts_produced_total 1.0",
        'tokenpulse_webhook_events_total{outcome="delivered"} 1.0',
        'tokenpulse_consumer_lag{partition="3",topic="usage"} 42.0',
        "tokenpulse_sink_batch_seconds_count 1.0",
        'tokenpulse_quota_periods_checked_total{source="store"} 3.0',
        'tokenpulse_quota_periods_checked_total{source="sole_owner"} 11.0',
        'tokenpulse_quota_periods_checked_total{source="quiet"} 4.0',
    ):
        assert line in text, text
    assert "tokenpulse_keyring" not in text  # not verifying: no keyring to report


def test_the_keyring_in_use_and_its_reloads_are_reported() -> None:
    class Decoder:
        keyring = Keyring({"acme": {"k1": b"a", "k2": b"b"}, "globex": {"g1": b"g"}})

    class Proc:
        counters = Counters(keyring_reloads=2, keyring_reload_failures=1)
        decoder = Decoder()

    text = generate_latest(WorkerMetrics(lambda: Proc()).registry).decode()
    for line in (
        "tokenpulse_keyring_keys 3.0",
        'tokenpulse_keyring_reloads_total{result="applied"} 2.0',
        'tokenpulse_keyring_reloads_total{result="failed"} 1.0',
    ):
        assert line in text, text
