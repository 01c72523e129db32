"""Worker settings: one frozen dataclass, one mapping to environment variables.

Each field documents its environment variable. Connection settings come
from `tokenpulse.config.Settings` (KAFKA_BOOTSTRAP_SERVERS, CLICKHOUSE_URL).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenpulse.config import (
    TOPIC_DLQ,
    TOPIC_QUOTA_ALERTS,
    TOPIC_QUOTA_STATE,
    TOPIC_QUOTAS,
    TOPIC_USAGE,
    ClickHouseTarget,
    Settings,
    redact_url,
    tokenpulse_home,
)
from tokenpulse.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    """A true/false setting (1/0, yes/no, on/off too); ConfigError names a bad value."""
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{key} must be true or false, got {raw!r}", details={"setting": key})


def _num(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"{key} must be a number, got {raw!r}", details={"setting": key}
        ) from None


def _log_format(env: Mapping[str, str]) -> str:
    raw = (env.get("TOKENPULSE_LOG_FORMAT") or "text").lower()
    if raw not in ("text", "json"):
        raise ConfigError(
            f"TOKENPULSE_LOG_FORMAT must be text or json, got {raw!r}",
            details={"setting": "TOKENPULSE_LOG_FORMAT"},
        )
    return raw


# Kafka brokers accept session timeouts within group.min/max.session.timeout.ms
# (6 s and 30 min by default); Faust's request timeout (90 s) must not be
# shorter than the session timeout.
MIN_SESSION_TIMEOUT_S = 6.0
# 30 s, not less: a worker whose event loop stalls through a ClickHouse outage
# (retries, paused partitions) must not be evicted mid-outage; with 10 s a
# fault test saw the worker never resume after the store came back.
DEFAULT_SESSION_TIMEOUT_S = 30.0
MAX_SESSION_TIMEOUT_S = 1800.0
BROKER_REQUEST_TIMEOUT_S = 90.0


def check_broker_timeouts(session_timeout_s: float, heartbeat_interval_s: float) -> None:
    """Refuse liveness timeouts the broker or the group protocol would reject or abuse."""
    if not MIN_SESSION_TIMEOUT_S <= session_timeout_s <= MAX_SESSION_TIMEOUT_S:
        raise ConfigError(
            f"TOKENPULSE_SESSION_TIMEOUT_S must be between {MIN_SESSION_TIMEOUT_S:g} and "
            f"{MAX_SESSION_TIMEOUT_S:g} s (the broker's group session limits), "
            f"got {session_timeout_s:g}",
            details={"setting": "TOKENPULSE_SESSION_TIMEOUT_S"},
        )
    if not 0 < heartbeat_interval_s <= session_timeout_s / 3:
        raise ConfigError(
            "TOKENPULSE_HEARTBEAT_INTERVAL_S must be > 0 and at most a third of "
            f"TOKENPULSE_SESSION_TIMEOUT_S ({session_timeout_s:g} s), got {heartbeat_interval_s:g}",
            details={"setting": "TOKENPULSE_HEARTBEAT_INTERVAL_S"},
        )


@dataclass(frozen=True)
class TopicNames:
    """The five topics, with an optional prefix/suffix (unique names per test)."""

    usage: str = TOPIC_USAGE
    dlq: str = TOPIC_DLQ
    alerts: str = TOPIC_QUOTA_ALERTS
    state: str = TOPIC_QUOTA_STATE
    quotas: str = TOPIC_QUOTAS

    @classmethod
    def with_affixes(cls, prefix: str = "", suffix: str = "") -> TopicNames:
        return cls(
            *(
                f"{prefix}{name}{suffix}"
                for name in (
                    TOPIC_USAGE,
                    TOPIC_DLQ,
                    TOPIC_QUOTA_ALERTS,
                    TOPIC_QUOTA_STATE,
                    TOPIC_QUOTAS,
                )
            )
        )


@dataclass(frozen=True)
class WorkerSettings:
    """Everything `tokenpulse worker` can be told.

    app_id: TOKENPULSE_WORKER_GROUP; the Faust app id and Kafka consumer group.
    topics: TOKENPULSE_TOPIC_PREFIX / TOKENPULSE_TOPIC_SUFFIX around the contract names.
    partitions: TOKENPULSE_TOPIC_PARTITIONS; used when the worker creates topics.
    replication_factor: TOKENPULSE_TOPIC_REPLICATION.
    data_dir: TOKENPULSE_WORKER_DATA_DIR; Faust's data dir (no RocksDB, memory store).
    batch_max_events: TOKENPULSE_BATCH_MAX_EVENTS; records per processing batch.
    batch_max_bytes: TOKENPULSE_BATCH_MAX_BYTES; record bytes per processing batch (8 MiB; an
        SDK envelope holds many events, so bytes bound a batch of envelopes).
    flush_interval_ms: TOKENPULSE_FLUSH_INTERVAL_MS (0); how long a batch that is not full waits
        for more records before it is prepared. 0: what has arrived is prepared at once. Fetches
        (fetch_min_bytes) and writes (write groups, write_min_interval_ms) are already coalesced,
        so waiting here only delayed the early quota check: at 5,000 events/s alert p99 was
        0.48-0.54 s with 500 ms and 0.19-0.23 s with 0, with the same worker CPU per event.
    partition_fetch_bytes: TOKENPULSE_PARTITION_FETCH_BYTES; the most one fetch returns of one
        partition (4 MiB; Faust's 1 MiB starved the worker). The prefetch holds at most one fetch
        per assigned partition: at most partitions x this in memory during a backlog.
    fetch_min_bytes / fetch_max_wait_ms: TOKENPULSE_FETCH_MIN_BYTES (256 KiB) /
        TOKENPULSE_FETCH_MAX_WAIT_MS (100 ms); the broker answers a fetch once it has this
        much, or after this long. aiokafka's 1 byte made a caught-up worker fetch a few
        records at a time: at 18k events/s the broker spent 0.4-0.5 of a core answering
        it. The wait bounds what this adds to an event's latency when traffic is light.
    write_max_records / write_max_bytes: TOKENPULSE_WRITE_MAX_RECORDS (50,000) /
        TOKENPULSE_WRITE_MAX_BYTES (32 MiB); batches prepared while a write is in flight are
        written together by the next one (one insert, one commit), up to about these limits.
    insert_max_rows: TOKENPULSE_INSERT_MAX_ROWS (60,000); a write of more rows (SDK envelopes:
        32 MiB of them is ~120,000 events) is sent as parallel inserts of about this many rows,
        cut at batch boundaries, each under its own dedup token; the write is durable once all
        are. One insert runs on one ClickHouse thread: envelope drains ran 1.17x faster
        (BENCHMARKS.md, round 21). 0 = one insert a write.
    write_min_interval_ms: TOKENPULSE_WRITE_MIN_INTERVAL_MS (200); a write that is not full
        starts at least this long after the previous one started. ClickHouse pays a fixed
        cost per insert (~30 ms of CPU with the three materialized views) and merges every
        part it writes: at moderate load, writes as fast as they return cost the embedded
        endpoint more CPU than the rows. 0 writes each group as soon as the last returns.
    write_max_interval_ms: TOKENPULSE_WRITE_MAX_INTERVAL_MS (1000, or the minimum if that is
        longer); while more than write_max_records records wait in Kafka beyond the queued
        group (a backlog), a write that is not full waits to fill up, at most this long after
        the previous one started: a backlog is written in full inserts, which cost the store
        less CPU per row. A worker that keeps up is never that far behind. Equal to
        write_min_interval_ms: off.
    quota_check_interval_s: TOKENPULSE_QUOTA_CHECK_INTERVAL_S (5 s); how often the worker
        checks quotas without traffic: changed definitions, periods that ended. It also checks
        every quota once at start, which gives the early check its base (a quota that was never
        read waits for its event's write before it can alert).
    quota_max_reads_per_check: TOKENPULSE_QUOTA_MAX_READS_PER_CHECK (200); quota periods one
        check reads from the store at most (~2 ms of store CPU each). The others count this
        worker's own events exactly and are read at a later check (docs/streams.md).
    quota_reread_s: TOKENPULSE_QUOTA_REREAD_S (60 s); while this worker is assigned every
        partition of the usage topic, no other worker writes usage: a quota period read from
        the store stays exact with this worker's own writes added, and is read again only this
        long after its last read (for writers outside the pipeline). 0: read after every write.
    quota_quiet_reread_s: TOKENPULSE_QUOTA_QUIET_REREAD_S (5 s); with other workers in the
        group: a quota period whose read holds exactly its last reading plus this worker's own
        writes since (no other worker added to it) is trusted that way, and read again only
        this long after the read. A period that other workers also write is still read after
        every write. 0: read after every write.
    dedup_horizon_s: TOKENPULSE_DEDUP_HORIZON_S; how long an event_id is remembered (48 h).
    dedup_warm_max_ids: TOKENPULSE_DEDUP_WARM_MAX_IDS; at assignment, a partition with at most
        this many ids in the store within the horizon loads them into its filter (warm);
        a bigger one starts cold (every id confirmed against the store for one horizon).
    allowed_lateness_s: TOKENPULSE_ALLOWED_LATENESS_S; window lateness before an event is late;
        also how long a quota period that ended still announces what its last events cross.
    verify_signatures: TOKENPULSE_VERIFY_SIGNATURES (default true).
    keyring_file: TOKENPULSE_KEYRING_FILE; the signing keys (required when verifying).
    keyring_reload_s: TOKENPULSE_KEYRING_RELOAD_S (10 s); how often the worker looks at the
        keyring file. A change is applied once the file has stayed the same for one look
        (a file caught mid-write is not read); a file that does not load is logged and the
        keys in use are kept. 0: read once at start.
    native_signature_check: TOKENPULSE_NATIVE_SIGNATURE_CHECK (default true); check a slice's
        signatures in C (schemas/_sigcheck.c, built by `make setup`; GIL released) instead of
        one record at a time in Python. Same answers; off only to compare or to rule it out.
        Without the built module the worker logs a warning and checks in Python.
    native_fetch_parse: TOKENPULSE_NATIVE_FETCH_PARSE (default true); read the records of the
        usage topic's fetches in C (streams/_fetch.c, built by `make setup`) a batch at a
        time, instead of aiokafka's parse of one record at a time. Same records; off only
        to compare or to rule it out. Without the built module the worker logs a warning.
    max_record_bytes: TOKENPULSE_MAX_RECORD_BYTES; larger records go to the DLQ.
    sink_retry_max_s: backoff ceiling while the sink is unavailable (it retries forever).
    pricebook_file: TOKENPULSE_PRICEBOOK; the billing price book that prices metric=cost quotas.
    alert_webhook_url: TOKENPULSE_ALERT_WEBHOOK_URL; POST every alert there (off = unset).
    alert_webhook_secret: TOKENPULSE_ALERT_WEBHOOK_SECRET; HMAC key of the signature header.
    metrics_port: TOKENPULSE_METRICS_PORT; Prometheus endpoint (default 9464; 0 = off).
    metrics_host: TOKENPULSE_METRICS_HOST; its bind address (default 127.0.0.1).
    log_format: TOKENPULSE_LOG_FORMAT; "text" (default) or "json" (one object per line).
    session_timeout_s: TOKENPULSE_SESSION_TIMEOUT_S; how long the group waits for a silent
        member (kill -9, frozen host) before rebalancing its partitions (default 30 s).
    heartbeat_interval_s: TOKENPULSE_HEARTBEAT_INTERVAL_S; at most a third of the session
        timeout (default 3 s).
    max_poll_interval_s: TOKENPULSE_MAX_POLL_INTERVAL_S; how long the consumer may go without
        asking Kafka for records before it leaves the group (default 1000 s, Faust's). While
        the store is down (fetching paused) it marks its polls itself and stays; a batcher full
        for this long (a store that answers but never finishes a write) still counts.
    gc_gen0_threshold: TOKENPULSE_GC_GEN0_THRESHOLD; the worker's young-generation collection
        threshold (50,000; Python's 700 ran a collection every few hundred records). With it
        the objects of the start are frozen out of every collection. 0 keeps Python's defaults.
    """

    kafka_bootstrap_servers: str
    clickhouse_url: str = field(repr=False)
    app_id: str = "tokenpulse-worker"
    topics: TopicNames = field(default_factory=TopicNames)
    partitions: int = 12
    replication_factor: int = 1
    data_dir: Path = field(default_factory=lambda: tokenpulse_home() / "worker")
    batch_max_events: int = 2000
    batch_max_bytes: int = 8 * 1024 * 1024
    flush_interval_ms: int = 0
    partition_fetch_bytes: int = 4 * 1024 * 1024
    fetch_min_bytes: int = 256 * 1024
    fetch_max_wait_ms: int = 100
    write_max_records: int = 50_000
    write_max_bytes: int = 32 * 1024 * 1024
    insert_max_rows: int = 60_000
    write_min_interval_ms: int = 200
    write_max_interval_ms: int = 1000
    quota_check_interval_s: float = 5.0
    quota_max_reads_per_check: int = 200
    quota_reread_s: float = 60.0
    quota_quiet_reread_s: float = 5.0
    dedup_horizon_s: float = 48 * 3600.0
    dedup_warm_max_ids: int = 500_000
    allowed_lateness_s: float = 300.0
    verify_signatures: bool = True
    keyring_file: Path | None = None
    keyring_reload_s: float = 10.0
    native_signature_check: bool = True
    native_fetch_parse: bool = True
    max_record_bytes: int = 1_048_576
    sink_retry_max_s: float = 30.0
    loglevel: str = "info"
    pricebook_file: Path | None = None
    alert_webhook_url: str | None = field(default=None, repr=False)
    alert_webhook_secret: str | None = field(default=None, repr=False)
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    heartbeat_interval_s: float = 3.0
    max_poll_interval_s: float = 1000.0
    gc_gen0_threshold: int = 50_000

    def __post_init__(self) -> None:
        check_broker_timeouts(self.session_timeout_s, self.heartbeat_interval_s)
        if self.max_poll_interval_s <= 0:
            raise ConfigError(
                f"TOKENPULSE_MAX_POLL_INTERVAL_S must be > 0, got {self.max_poll_interval_s}",
                details={"setting": "TOKENPULSE_MAX_POLL_INTERVAL_S"},
            )
        if self.fetch_min_bytes < 1:
            raise ConfigError(
                f"TOKENPULSE_FETCH_MIN_BYTES must be >= 1, got {self.fetch_min_bytes}",
                details={"setting": "TOKENPULSE_FETCH_MIN_BYTES"},
            )
        if not 0 <= self.fetch_max_wait_ms <= 30_000:
            raise ConfigError(
                f"TOKENPULSE_FETCH_MAX_WAIT_MS must be within 0..30000 (it bounds the latency "
                f"it adds), got {self.fetch_max_wait_ms}",
                details={"setting": "TOKENPULSE_FETCH_MAX_WAIT_MS"},
            )
        if self.insert_max_rows < 0:
            raise ConfigError(
                f"TOKENPULSE_INSERT_MAX_ROWS must be >= 0 (0: one insert a write), "
                f"got {self.insert_max_rows}",
                details={"setting": "TOKENPULSE_INSERT_MAX_ROWS"},
            )
        if not 0 <= self.write_min_interval_ms <= 60_000:
            raise ConfigError(
                f"TOKENPULSE_WRITE_MIN_INTERVAL_MS must be within 0..60000, "
                f"got {self.write_min_interval_ms}",
                details={"setting": "TOKENPULSE_WRITE_MIN_INTERVAL_MS"},
            )
        if not self.write_min_interval_ms <= self.write_max_interval_ms <= 60_000:
            raise ConfigError(
                f"TOKENPULSE_WRITE_MAX_INTERVAL_MS must be within "
                f"TOKENPULSE_WRITE_MIN_INTERVAL_MS ({self.write_min_interval_ms})..60000, "
                f"got {self.write_max_interval_ms}",
                details={"setting": "TOKENPULSE_WRITE_MAX_INTERVAL_MS"},
            )
        if not 0 < self.quota_check_interval_s <= 3600:
            raise ConfigError(
                f"TOKENPULSE_QUOTA_CHECK_INTERVAL_S must be within (0, 3600], "
                f"got {self.quota_check_interval_s}",
                details={"setting": "TOKENPULSE_QUOTA_CHECK_INTERVAL_S"},
            )
        if not 1 <= self.quota_max_reads_per_check <= 1_000_000:
            raise ConfigError(
                f"TOKENPULSE_QUOTA_MAX_READS_PER_CHECK must be within 1..1000000, "
                f"got {self.quota_max_reads_per_check}",
                details={"setting": "TOKENPULSE_QUOTA_MAX_READS_PER_CHECK"},
            )
        if not 0 <= self.quota_reread_s <= 86_400:
            raise ConfigError(
                f"TOKENPULSE_QUOTA_REREAD_S must be within 0..86400 (0: read after every "
                f"write), got {self.quota_reread_s}",
                details={"setting": "TOKENPULSE_QUOTA_REREAD_S"},
            )
        if not 0 <= self.quota_quiet_reread_s <= 86_400:
            raise ConfigError(
                f"TOKENPULSE_QUOTA_QUIET_REREAD_S must be within 0..86400 (0: read after every "
                f"write), got {self.quota_quiet_reread_s}",
                details={"setting": "TOKENPULSE_QUOTA_QUIET_REREAD_S"},
            )
        if not 0 <= self.keyring_reload_s <= 86_400:
            raise ConfigError(
                f"TOKENPULSE_KEYRING_RELOAD_S must be within 0..86400 (0: read once at start), "
                f"got {self.keyring_reload_s}",
                details={"setting": "TOKENPULSE_KEYRING_RELOAD_S"},
            )
        if self.gc_gen0_threshold < 0:
            raise ConfigError(
                f"TOKENPULSE_GC_GEN0_THRESHOLD must be >= 0 (0 = Python's defaults), "
                f"got {self.gc_gen0_threshold}",
                details={"setting": "TOKENPULSE_GC_GEN0_THRESHOLD"},
            )

    def broker_timeouts(self) -> dict[str, float]:
        """Faust App keyword arguments for the consumer group's liveness timeouts."""
        return {
            "broker_session_timeout": self.session_timeout_s,
            "broker_heartbeat_interval": self.heartbeat_interval_s,
            "broker_request_timeout": max(BROKER_REQUEST_TIMEOUT_S, self.session_timeout_s),
        }

    def __repr__(self) -> str:
        return (
            f"WorkerSettings(app_id={self.app_id!r}, kafka={self.kafka_bootstrap_servers!r}, "
            f"clickhouse={redact_url(self.clickhouse_url)!r}, topics={self.topics!r}, "
            f"verify_signatures={self.verify_signatures})"
        )

    def clickhouse_target(self) -> ClickHouseTarget:
        return ClickHouseTarget.parse(self.clickhouse_url)

    def with_(self, **changes: object) -> WorkerSettings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        base = Settings.from_env(env)
        app_id = env.get("TOKENPULSE_WORKER_GROUP") or "tokenpulse-worker"
        keyring = env.get("TOKENPULSE_KEYRING_FILE")
        write_min_interval_ms = int(_num(env, "TOKENPULSE_WRITE_MIN_INTERVAL_MS", 200))
        data_dir = env.get("TOKENPULSE_WORKER_DATA_DIR")
        return cls(
            kafka_bootstrap_servers=base.kafka_bootstrap_servers,
            clickhouse_url=base.clickhouse_url,
            app_id=app_id,
            topics=TopicNames.with_affixes(
                env.get("TOKENPULSE_TOPIC_PREFIX", ""), env.get("TOKENPULSE_TOPIC_SUFFIX", "")
            ),
            partitions=int(_num(env, "TOKENPULSE_TOPIC_PARTITIONS", 12)),
            replication_factor=int(_num(env, "TOKENPULSE_TOPIC_REPLICATION", 1)),
            data_dir=Path(data_dir) if data_dir else tokenpulse_home(env) / "worker" / app_id,
            batch_max_events=int(_num(env, "TOKENPULSE_BATCH_MAX_EVENTS", 2000)),
            batch_max_bytes=int(_num(env, "TOKENPULSE_BATCH_MAX_BYTES", 8 * 1024 * 1024)),
            flush_interval_ms=int(_num(env, "TOKENPULSE_FLUSH_INTERVAL_MS", 0)),
            partition_fetch_bytes=int(
                _num(env, "TOKENPULSE_PARTITION_FETCH_BYTES", 4 * 1024 * 1024)
            ),
            fetch_min_bytes=int(_num(env, "TOKENPULSE_FETCH_MIN_BYTES", 256 * 1024)),
            fetch_max_wait_ms=int(_num(env, "TOKENPULSE_FETCH_MAX_WAIT_MS", 100)),
            write_max_records=int(_num(env, "TOKENPULSE_WRITE_MAX_RECORDS", 50_000)),
            write_max_bytes=int(_num(env, "TOKENPULSE_WRITE_MAX_BYTES", 32 * 1024 * 1024)),
            insert_max_rows=int(_num(env, "TOKENPULSE_INSERT_MAX_ROWS", 60_000)),
            write_min_interval_ms=write_min_interval_ms,
            # A longer minimum alone raises the maximum with it.
            write_max_interval_ms=int(
                _num(env, "TOKENPULSE_WRITE_MAX_INTERVAL_MS", max(1000, write_min_interval_ms))
            ),
            quota_check_interval_s=_num(env, "TOKENPULSE_QUOTA_CHECK_INTERVAL_S", 5.0),
            quota_max_reads_per_check=int(_num(env, "TOKENPULSE_QUOTA_MAX_READS_PER_CHECK", 200)),
            quota_reread_s=_num(env, "TOKENPULSE_QUOTA_REREAD_S", 60.0),
            quota_quiet_reread_s=_num(env, "TOKENPULSE_QUOTA_QUIET_REREAD_S", 5.0),
            dedup_horizon_s=_num(env, "TOKENPULSE_DEDUP_HORIZON_S", 48 * 3600.0),
            dedup_warm_max_ids=int(_num(env, "TOKENPULSE_DEDUP_WARM_MAX_IDS", 500_000)),
            allowed_lateness_s=_num(env, "TOKENPULSE_ALLOWED_LATENESS_S", 300.0),
            verify_signatures=env_bool(env, "TOKENPULSE_VERIFY_SIGNATURES", True),
            keyring_file=Path(keyring) if keyring else None,
            keyring_reload_s=_num(env, "TOKENPULSE_KEYRING_RELOAD_S", 10.0),
            native_signature_check=env_bool(env, "TOKENPULSE_NATIVE_SIGNATURE_CHECK", True),
            native_fetch_parse=env_bool(env, "TOKENPULSE_NATIVE_FETCH_PARSE", True),
            max_record_bytes=int(_num(env, "TOKENPULSE_MAX_RECORD_BYTES", 1_048_576)),
            loglevel=env.get("TOKENPULSE_LOGLEVEL", "info"),
            pricebook_file=Path(pb) if (pb := env.get("TOKENPULSE_PRICEBOOK")) else None,
            alert_webhook_url=env.get("TOKENPULSE_ALERT_WEBHOOK_URL") or None,
            alert_webhook_secret=env.get("TOKENPULSE_ALERT_WEBHOOK_SECRET") or None,
            metrics_port=int(_num(env, "TOKENPULSE_METRICS_PORT", 9464)),
            metrics_host=env.get("TOKENPULSE_METRICS_HOST") or "127.0.0.1",
            log_format=_log_format(env),
            session_timeout_s=_num(env, "TOKENPULSE_SESSION_TIMEOUT_S", DEFAULT_SESSION_TIMEOUT_S),
            heartbeat_interval_s=_num(env, "TOKENPULSE_HEARTBEAT_INTERVAL_S", 3.0),
            max_poll_interval_s=_num(env, "TOKENPULSE_MAX_POLL_INTERVAL_S", 1000.0),
            gc_gen0_threshold=int(_num(env, "TOKENPULSE_GC_GEN0_THRESHOLD", 50_000)),
        )
