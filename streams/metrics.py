"""Prometheus metrics of the worker, read from the processor's counters at scrape time.

The processor keeps plain integer counters (no dependency on a metrics
library in the hot path); a custom collector turns them into Prometheus
counters when scraped, plus consumer lag per partition from Faust's
consumer. Only the sink batch latency and the event loop's lag are observed
directly (histograms).
Served by prometheus_client's HTTP server on TOKENPULSE_METRICS_HOST:PORT
(127.0.0.1:9464 by default; port 0 = off), on a registry of its own; a port
already taken is a warning, not a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("tokenpulse.streams.metrics")

_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LAG_BUCKETS_S = (0.001, *_BUCKETS_S)


class _Collector(Collector):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        p = self.m.processor()
        if p is None:
            return
        c = p.counters
        simple = (
            (
                "tokenpulse_records_in",
                "usage records taken from Kafka (replays excluded)",
                c.records,
            ),
            ("tokenpulse_events_accepted", "events made durable in the sink", c.accepted),
            ("tokenpulse_dedup_hits", "duplicate events dropped by event_id", c.duplicates),
            ("tokenpulse_late_events", "events later than the allowed lateness", c.late),
            ("tokenpulse_sink_rows_written", "rows written to the sink", c.rows_written),
            ("tokenpulse_sink_retries", "retried sink calls (store unavailable)", c.sink_retries),
            ("tokenpulse_alerts_produced", "quota alerts acknowledged by Kafka", c.alerts),
            ("tokenpulse_commits", "offset commits", c.commits),
        )
        for name, doc, value in simple:
            yield CounterMetricFamily(name, doc, value=value)
        rejected = CounterMetricFamily(
            "tokenpulse_records_rejected", "records sent to the DLQ, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.rejected_by_reason.items()):
            rejected.add_metric([reason], n)
        yield rejected
        keyring = getattr(getattr(p, "decoder", None), "keyring", None)
        if keyring is not None:
            yield GaugeMetricFamily(
                "tokenpulse_keyring_keys",
                "signing keys the worker verifies with",
                value=keyring.key_count,
            )
            reloads = CounterMetricFamily(
                "tokenpulse_keyring_reloads",
                "changed keyring files (TOKENPULSE_KEYRING_RELOAD_S): applied, or failed to load "
                "(the keys in use stay)",
                labels=["result"],
            )
            reloads.add_metric(["applied"], c.keyring_reloads)
            reloads.add_metric(["failed"], c.keyring_reload_failures)
            yield reloads
        quotas = getattr(p, "quotas", None)
        if quotas is not None:
            checked = CounterMetricFamily(
                "tokenpulse_quota_periods_checked",
                "quota periods evaluated by the durable check: read from the store, or exact "
                "without a read (sole_owner: this worker owns every usage partition; quiet: its "
                "last read showed no other worker's tokens)",
                labels=["source"],
            )
            checked.add_metric(["store"], quotas.periods_read)
            checked.add_metric(["sole_owner"], quotas.periods_exact)
            checked.add_metric(["quiet"], quotas.periods_quiet)
            yield checked
        hooks = CounterMetricFamily(
            "tokenpulse_webhook_events", "alert webhook outcomes", labels=["outcome"]
        )
        for outcome, n in sorted(self.m.webhook_events.items()):
            hooks.add_metric([outcome], n)
        yield hooks
        lag = GaugeMetricFamily(
            "tokenpulse_consumer_lag",
            "records behind the partition's end (highwater - next offset to process)",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(self.m.lag().items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag


class WorkerMetrics:
    """The worker's registry; `processor` and `lag` are read at scrape time."""

    def __init__(
        self,
        processor: Callable[[], Any],
        lag: Callable[[], Mapping[tuple[str, int], int]] = dict,
    ) -> None:
        self.processor = processor
        self.lag = lag
        self.webhook_events: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.sink_batch_seconds = Histogram(
            "tokenpulse_sink_batch_seconds",
            "time to make one partition batch durable in the sink, retries included",
            buckets=_BUCKETS_S,
            registry=self.registry,
        )
        # Everything of a batch waits on the loop (loop_lag.py).
        self.event_loop_lag_seconds = Histogram(
            "tokenpulse_event_loop_lag_seconds",
            "how much later than due the worker's event loop woke a 0.5 s sleep",
            buckets=_LAG_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))
        self._server: Any = None

    def webhook_event(self, outcome: str) -> None:
        self.webhook_events[outcome] = self.webhook_events.get(outcome, 0) + 1

    def serve(self, host: str, port: int) -> int | None:
        """Start the HTTP endpoint (a daemon thread); returns the bound port.

        A port that cannot be bound (another worker on this host has the
        default one) logs one warning and returns None: metering matters
        more than its metrics, so the worker runs on without them.
        """
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.warning(
                "metrics endpoint %s:%d unavailable (%s); the worker runs without metrics; "
                "set TOKENPULSE_METRICS_PORT to a free port per worker (0 = off)",
                host,
                port,
                exc,
            )
            return None
        self._server = server
        bound: int = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
