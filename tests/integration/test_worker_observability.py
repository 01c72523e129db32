"""Metrics endpoint, alert webhook and JSON logs of a real worker process."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.test_worker import (
    Env,
    Worker,
    env,  # noqa: F401 - the fixture, reused
    event,
    produce,
    put_quota,
    record,
    wait_until,
    workers,  # noqa: F401 - the fixture, reused
)
from tokenpulse.schemas import QuotaDefinition
from tokenpulse.streams.webhook import ALERT_ID_HEADER, SIGNATURE_HEADER, verify

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SECRET = "hook-secret-integration-0123"


class Hook:
    """A webhook receiver on 127.0.0.1 that answers 503 to the first two attempts."""

    def __init__(self) -> None:
        self.attempts = 0
        self.delivered: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.attempts += 1
                if hook.attempts <= 2:
                    self.send_response(503)
                else:
                    hook.delivered.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_count_what_was_sent_and_the_alert_reaches_the_webhook(
    env: Env,  # noqa: F811 - the imported fixture
    workers: list[Worker],  # noqa: F811 - the imported fixture
    hook: Hook,
) -> None:
    valid = [event(f"acme/t{i % 3}", i) for i in range(300)]
    used = sum(e.input_tokens + e.output_tokens for e in valid)
    # Crosses 50 % (once) but not 80 %: exactly one alert.
    put_quota(
        env,
        QuotaDefinition(
            quota_id="q-obs",
            tenant_id="acme",
            metric="total",
            period="day",
            limit=used * 2 - 10,
            thresholds_pct=(50, 80),
        ),
    )
    port = _free_port()
    worker = Worker(
        env,
        "w1",
        TOKENPULSE_METRICS_PORT=str(port),
        TOKENPULSE_ALERT_WEBHOOK_URL=hook.url,
        TOKENPULSE_ALERT_WEBHOOK_SECRET=SECRET,
        TOKENPULSE_LOG_FORMAT="json",
        TOKENPULSE_LOGLEVEL="info",
    )
    workers.append(worker)
    records = [record(e) for e in valid]
    records += [record(e) for e in valid[:20]]  # duplicates
    records += [(b"acme", b"{bad", [])] * 5
    produce(env.bootstrap, env.topics.usage, records)

    want = {
        "tokenpulse_records_in_total": 325.0,
        "tokenpulse_events_accepted_total": 300.0,
        "tokenpulse_dedup_hits_total": 20.0,
        "tokenpulse_sink_rows_written_total": 300.0,
        'tokenpulse_records_rejected_total{reason="malformed_json"}': 5.0,
        "tokenpulse_alerts_produced_total": 1.0,
        'tokenpulse_webhook_events_total{outcome="delivered"}': 1.0,
    }

    def counted() -> bool:
        got = scrape(port)
        return all(got.get(k) == v for k, v in want.items())

    wait_until(counted, 120, f"metrics {want}", workers)
    got = scrape(port)
    assert got["tokenpulse_sink_batch_seconds_count"] >= 1
    assert got["tokenpulse_event_loop_lag_seconds_count"] >= 1  # the watch runs
    lags = {k: v for k, v in got.items() if k.startswith("tokenpulse_consumer_lag{")}
    wait_until(
        lambda: all(
            v == 0 for k, v in scrape(port).items() if k.startswith("tokenpulse_consumer_lag{")
        ),
        60,
        f"zero lag (was {lags})",
        workers,
    )
    assert env.totals()[0] == 300

    assert hook.attempts == 3
    assert len(hook.delivered) == 1
    headers, body = hook.delivered[0]
    alert = json.loads(body)
    assert headers[ALERT_ID_HEADER] == alert["alert_id"]
    assert alert["threshold_pct"] == 50
    assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER], now_s=time.time())

    assert worker.terminate() == 0
    lines = [ln for ln in worker.log.read_text().splitlines() if ln.startswith("{")]
    docs = [json.loads(ln) for ln in lines]
    assert docs
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    assert any(d["logger"].startswith("tokenpulse.") for d in docs)
    assert SECRET not in worker.log.read_text()
