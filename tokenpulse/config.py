"""Typed, frozen settings and their one mapping to environment variables.

Every setting a user can change is a field here, documented where it is
defined, with its environment variable beside it. Resolution order for the
connection settings: the environment, then the file `tokenpulse dev up`
wrote (`$TOKENPULSE_HOME/dev/connection.env`), then the built-in default.
Secrets (passwords in CLICKHOUSE_URL) are never part of `repr()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tokenpulse.errors import ConfigError

# Public topic names: the contract in docs/contract.md. Changing one is a
# breaking change for every producer and gateway.
TOPIC_USAGE = "tokenpulse.usage.v1"
TOPIC_DLQ = "tokenpulse.usage.dlq.v1"
TOPIC_QUOTA_ALERTS = "tokenpulse.quota.alerts.v1"
TOPIC_QUOTA_STATE = "tokenpulse.quota.state.v1"
TOPIC_QUOTAS = "tokenpulse.quotas.v1"

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CLICKHOUSE_URL = "http://default:@127.0.0.1:8123/tokenpulse"


def tokenpulse_home(env: Mapping[str, str] | None = None) -> Path:
    """Where the local stack keeps its data, logs and connection file.

    TOKENPULSE_HOME; default `~/.local/state/tokenpulse`.
    """
    env = os.environ if env is None else env
    raw = env.get("TOKENPULSE_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".local" / "state" / "tokenpulse"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where downloaded artefacts (Kafka jars) live, outside any repo.

    TOKENPULSE_CACHE_DIR; default `$XDG_CACHE_HOME/tokenpulse` or `~/.cache/tokenpulse`.
    """
    env = os.environ if env is None else env
    raw = env.get("TOKENPULSE_CACHE_DIR")
    if raw:
        return Path(raw).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tokenpulse"


def connection_file(env: Mapping[str, str] | None = None) -> Path:
    return tokenpulse_home(env) / "dev" / "connection.env"


def read_connection_file(path: Path) -> dict[str, str]:
    """Parse the `export KEY=value` lines `dev up` writes."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip("'\"")
    return out


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and repr."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@dataclass(frozen=True)
class ClickHouseTarget:
    """A parsed CLICKHOUSE_URL: `http[s]://user:password@host:port/database`."""

    url: str = field(repr=False)
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    database: str
    secure: bool

    @classmethod
    def parse(cls, url: str) -> ClickHouseTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                f"CLICKHOUSE_URL must start with http:// or https://, got {redact_url(url)!r}",
                details={"setting": "CLICKHOUSE_URL"},
            )
        if not parts.hostname:
            raise ConfigError(
                f"CLICKHOUSE_URL has no host: {redact_url(url)!r}",
                details={"setting": "CLICKHOUSE_URL"},
            )
        secure = parts.scheme == "https"
        database = parts.path.strip("/") or "tokenpulse"
        return cls(
            url=url,
            host=parts.hostname,
            port=parts.port or (8443 if secure else 8123),
            username=parts.username or "default",
            password=parts.password or "",
            database=database,
            secure=secure,
        )

    def __str__(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class Settings:
    """Connection settings shared by every command.

    kafka_bootstrap_servers: KAFKA_BOOTSTRAP_SERVERS, comma-separated host:port.
    clickhouse_url: CLICKHOUSE_URL, `http://user:password@host:port/database`.
    """

    kafka_bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP
    clickhouse_url: str = field(default=DEFAULT_CLICKHOUSE_URL, repr=False)

    @property
    def clickhouse(self) -> ClickHouseTarget:
        return ClickHouseTarget.parse(self.clickhouse_url)

    def __repr__(self) -> str:
        return (
            f"Settings(kafka_bootstrap_servers={self.kafka_bootstrap_servers!r}, "
            f"clickhouse_url={redact_url(self.clickhouse_url)!r})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        dev = read_connection_file(connection_file(env))
        values: dict[str, str] = {}
        for f in fields(cls):
            key = f.name.upper()
            if env.get(key):
                values[f.name] = env[key]
            elif dev.get(key):
                values[f.name] = dev[key]
        settings = cls(**values)
        _ = settings.clickhouse  # validate early: a bad URL fails here, not mid-run
        return settings
