"""`tokenpulse report` on a seeded database, opened in headless Chromium over the DevTools protocol.

Seeds a unique ClickHouse database through the ClickHouseSink (hostile
tenant ids and model names included) and quota definitions on a unique
Kafka topic, renders the report with the CLI, then loads it in Chromium and
checks: no console error or exception, no dialog (no injected script ran),
no request but the file itself, every chart drawn. A full-page screenshot
is kept under artifacts/ (Chromium comes from scripts/ensure-chromium.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tokenpulse.cli import report as report_cli
from tokenpulse.schemas import QuotaDefinition, encode_quota_definition, quota_state_key
from tokenpulse.sinks.clickhouse import ClickHouseSink
from tokenpulse.sinks.migrations import RenderOptions, migrate
from tokenpulse.sinks.synthetic import as_batches, random_events

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HOSTILE_TENANT = "acme/<script>"
HOSTILE_MODEL = "<img src=x onerror=alert(1)>"
TENANTS = ("acme/research", "acme/research/agent-7", "acme/ops", HOSTILE_TENANT, "globex")
MODELS = ("frontier-large", "small-fast", HOSTILE_MODEL)

PRICEBOOK = f"""
currency = "EUR"
[[versions]]
id = "2026-q4"
effective_from = 2026-10-01
[versions.models."frontier-large"]
input = "15.00"
output = "75.00"
[versions.models."small-fast"]
input = "0.15"
output = "0.60"
[versions.models.{json.dumps(HOSTILE_MODEL)}]
input = "3.00"
output = "9.00"
"""

SERVING = f"""
headroom = 0.30
sizing = "p99"
[models."frontier-large"]
H100 = 40.0
[models."small-fast"]
L4 = 300.0
[models.{json.dumps(HOSTILE_MODEL)}]
H100 = 120.0
"""

CHART_IDS = {"tokens", "top-tenants", "quota-0", "quota-1", "cost", "capacity-demand"}
MIN_DRAWN = 10


async def _seed(url: str, database: str) -> int:
    """October 2026 with growth and a weekday rhythm, so trend and forecast have a shape."""
    start = datetime(2026, 10, 1, tzinfo=UTC)
    events = []
    for day in range(31):
        weekday_boost = 1.0 if (start + timedelta(days=day)).weekday() < 5 else 0.4
        n = int((120 + day * 8) * weekday_boost)
        events += random_events(
            n,
            start=start + timedelta(days=day),
            span=timedelta(days=1),
            tenants=TENANTS,
            models=MODELS,
            seed=day,
            prefix=f"d{day}",
        )
    async with ClickHouseSink(url, database=database) as sink:
        for batch in as_batches(events, batch_rows=2_000):
            await sink.write(batch)
    return len(events)


async def _publish_quotas(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    quotas = [
        QuotaDefinition(
            quota_id="acme-monthly",
            tenant_id="acme",
            metric="total",
            period="month",
            limit=120_000_000,
            thresholds_pct=(50, 80, 100),
        ),
        QuotaDefinition(
            quota_id="globex-daily-small",
            tenant_id="globex",
            metric="input",
            period="day",
            limit=1_500_000,
            model="small-fast",
            hard=True,
        ),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for q in quotas:
            key = quota_state_key(q.tenant_id, q.quota_id)
            await producer.send_and_wait(topic, encode_quota_definition(q), key=key)
    finally:
        await producer.stop()


class DevTools:
    """A minimal DevTools-protocol client on aiohttp's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self.ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 60)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return dict(reply.get("result", {}))

    async def wait_for(self, method: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev["method"] == method:
                    return ev
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {method} within {timeout_s} s")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _launch(profile: Path, log: Path) -> subprocess.Popen[bytes]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run scripts/ensure-chromium.sh"
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1", "about:blank",
    ]  # fmt: skip
    with log.open("wb") as err:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    """Chromium writes the port it picked (port 0) to DevToolsActivePort."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 90
    while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
        assert proc.poll() is None, f"chromium exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        time.sleep(0.1)
    return int(port_file.read_text().splitlines()[0])


@contextlib.asynccontextmanager
async def _chromium(profile: Path, log: Path) -> AsyncIterator[DevTools]:
    proc = await asyncio.to_thread(_launch, profile, log)
    try:
        port = await asyncio.to_thread(_devtools_port, profile, proc, log)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                try:
                    yield tools
                finally:
                    await tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CHECK_JS = """JSON.stringify({
  charts: Array.from(document.querySelectorAll('svg.chart')).map(s => ({
    id: s.dataset.chart,
    drawn: s.querySelectorAll('path, rect, circle, line, polyline').length,
    width: s.getBoundingClientRect().width,
    height: s.getBoundingClientRect().height,
  })),
  scripts: document.querySelectorAll('script').length,
  images: document.querySelectorAll('img').length,
  tables: document.querySelectorAll('details table').length,
  text: document.body.innerText,
})"""


async def test_report_opens_in_chromium_with_every_chart_and_nothing_else(
    services: Any,
    clickhouse_client: Any,
    clickhouse_database: str,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = time.monotonic()
    db = clickhouse_database
    migrate(clickhouse_client, RenderOptions(database=db))
    n_events = await _seed(services.clickhouse_url, db)
    topic = f"{unique_name}.tokenpulse.quotas.v1"
    await _publish_quotas(services.kafka_bootstrap, topic)
    (tmp_path / "pricebook.toml").write_text(PRICEBOOK, encoding="utf-8")
    (tmp_path / "serving.toml").write_text(SERVING, encoding="utf-8")
    monkeypatch.setenv("CLICKHOUSE_URL", services.clickhouse_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka_bootstrap)

    out = tmp_path / "report.html"
    parser = argparse.ArgumentParser()
    report_cli.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "report", "--html", str(out), "--month", "2026-10", "--database", db,
            "--pricebook", str(tmp_path / "pricebook.toml"),
            "--serving", str(tmp_path / "serving.toml"), "--quotas-topic", topic,
        ]
    )  # fmt: skip
    # The CLI runs its own event loop for Kafka: keep it off this test's loop.
    assert await asyncio.to_thread(args.func, args) == 0
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    t_render = time.monotonic()

    url = out.as_uri()
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report-browser.png"
    async with _chromium(tmp_path / "profile", tmp_path / "chromium.log") as cdp:
        for domain in ("Runtime", "Log", "Network", "Page"):
            await cdp.send(f"{domain}.enable")
        await cdp.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280, height=2000, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        await cdp.send("Page.navigate", url=url)
        await cdp.wait_for("Page.loadEventFired")
        result = await cdp.send("Runtime.evaluate", expression=CHECK_JS, returnByValue=True)
        info = json.loads(result["result"]["value"])
        metrics = await cdp.send("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"])
        png = await cdp.send(
            "Page.captureScreenshot",
            format="png", captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
        )  # fmt: skip
        shot.write_bytes(base64.b64decode(png["data"]))
        events = list(cdp.events)
    t_browser = time.monotonic()
    print(f"\nscreenshot: {shot} ({height} px tall); {n_events} events seeded")
    print(
        f"timings: seed+render {t_render - t0:.1f} s, chromium {t_browser - t_render:.1f} s,"
        f" total {t_browser - t0:.1f} s"
    )

    methods = [e["method"] for e in events]
    errors = [e for e in events if e["method"] == "Runtime.exceptionThrown"]
    errors += [
        e
        for e in events
        if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
    ]
    errors += [
        e
        for e in events
        if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    assert not errors, errors
    assert "Page.javascriptDialogOpening" not in methods  # no injected alert() ran
    requested = {
        e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"
    }
    assert requested == {url}

    charts = {c["id"]: c for c in info["charts"]}
    assert set(charts) >= CHART_IDS, sorted(charts)
    for cid, chart in charts.items():
        assert chart["drawn"] > MIN_DRAWN, (cid, chart)
        assert chart["width"] > 300, (cid, chart)
        assert chart["height"] > 100, (cid, chart)
    assert info["scripts"] == 0
    assert info["images"] == 0
    assert info["tables"] >= len(CHART_IDS)
    text = info["text"]
    assert HOSTILE_TENANT in text
    assert HOSTILE_MODEL in text
    assert "acme-monthly" in text
    assert "globex-daily-small" in text
    assert "Cost by department (EUR)" in text
    assert shutil.disk_usage(shot.parent).free > 0
    assert shot.stat().st_size > 20_000
