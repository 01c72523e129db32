"""Prometheus metrics of the embedded ClickHouse endpoint, served at /metrics.

Requests by kind, errors by ClickHouse error code, request latency, rows
inserted and bytes received. Each server has its own registry, so tests
and several endpoints in one process never mix their counts. /metrics
needs no credentials (as ClickHouse's own Prometheus port): it carries
counts only, never queries, users or data.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class EndpointMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokenpulse_clickhouse_http_requests",
            "HTTP requests answered, by kind (query, insert, ping, metrics, other)",
            ["kind"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tokenpulse_clickhouse_http_errors",
            "Requests answered with a ClickHouse error, by error code",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokenpulse_clickhouse_http_request_seconds",
            "Time from request line to the last byte of the answer, by kind",
            ["kind"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.inserted_rows = Counter(
            "tokenpulse_clickhouse_http_inserted_rows",
            "Rows written by INSERT requests",
            registry=self.registry,
        )

    def observe(self, kind: str, seconds: float) -> None:
        self.requests.labels(kind).inc()
        self.latency.labels(kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
