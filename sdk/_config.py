"""ProducerConfig: every knob of the SDK, frozen, with one mapping to the environment.

Environment variables (ProducerConfig.from_env):
  KAFKA_BOOTSTRAP_SERVERS        bootstrap_servers
  KAFKA_SECURITY_PROTOCOL        security_protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)
  KAFKA_SASL_MECHANISM           sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
  KAFKA_SASL_USERNAME            sasl_plain_username
  KAFKA_SASL_PASSWORD            sasl_plain_password (never printed)
  KAFKA_SSL_CAFILE / KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE
  TOKENPULSE_SDK_LINGER_MS, TOKENPULSE_SDK_BATCH_SIZE, TOKENPULSE_SDK_BUFFER_MAX_EVENTS,
  TOKENPULSE_SDK_OVERFLOW_POLICY (block|drop), TOKENPULSE_SDK_BLOCK_TIMEOUT_S,
  TOKENPULSE_SDK_DELIVERY_TIMEOUT_MS,
  TOKENPULSE_SDK_COMPRESSION (auto|lz4|zstd|gzip|none), TOKENPULSE_SDK_ENVELOPE (0|1)
  TOKENPULSE_SIGNING_TENANT, TOKENPULSE_SIGNING_KEY_ID, TOKENPULSE_SIGNING_SECRET
      (secret as hex:..., base64:... or plain text; never printed)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from tokenpulse.errors import ConfigError
from tokenpulse.schemas.signing import parse_secret

# Same value as tokenpulse.config.TOPIC_USAGE (pinned by a test): the SDK
# imports only tokenpulse.schemas so agent runtimes stay light.
TOPIC_USAGE: Final = "tokenpulse.usage.v1"
TOPIC_QUOTA_STATE: Final = "tokenpulse.quota.state.v1"

OverflowPolicy = Literal["block", "drop"]
Compression = Literal["auto", "lz4", "zstd", "gzip", "none"]


@dataclass(frozen=True)
class ProducerConfig:
    """How the SDK reaches Kafka and how much it buffers while Kafka is away."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = TOPIC_USAGE
    client_id: str = "tokenpulse-sdk"
    # Batching: aiokafka waits up to linger_ms to fill a batch of up to
    # max_batch_bytes per partition; the SDK hands it batch_size events at a time.
    # max_batch_bytes counts before compression and is capped at the topic's
    # max.message.bytes (sdk/_limit.py), which the broker enforces per batch.
    # A partition's next batch waits for the one before to leave (aiokafka
    # sends one batch per partition per request), so one producer sends at
    # most about batch_size events per linger_ms: 1000 per 20 ms capped it
    # near 45k events/s and the rest waited in the buffer. Each request costs
    # the broker about 1 ms of CPU: at 43k events/s linger 5 ms made it 9 us
    # an event, 15 ms 6 us (bench/latency_bench.py).
    linger_ms: int = 10
    batch_size: int = 5000
    max_batch_bytes: int = 256 * 1024
    compression: Compression = "auto"  # auto: lz4, else zstd, else gzip (what aiokafka can)
    # Bounded buffer (queued + in flight). When full: block the caller up to
    # block_timeout_s then raise ServiceUnavailable, or drop and count.
    buffer_max_events: int = 100_000
    overflow_policy: OverflowPolicy = "block"
    block_timeout_s: float = 5.0
    # One record per event (default) or one SDK batch envelope per tenant and send.
    envelope: bool = False
    request_timeout_ms: int = 30_000
    # A send not acknowledged within this is re-queued and the Kafka client
    # replaced (aiokafka alone would retry it for as long as the broker is away).
    delivery_timeout_ms: int = 120_000
    retry_backoff_ms: int = 100
    retry_backoff_max_ms: int = 5_000
    # Signing (docs/trust-model.md): all three or none.
    signing_tenant_id: str | None = None
    signing_key_id: str | None = None
    signing_secret: bytes | None = field(default=None, repr=False)
    # Follow tokenpulse.quota.state.v1 so check(tenant) can refuse at the edge.
    follow_quotas: bool = False
    quota_state_topic: str = TOPIC_QUOTA_STATE
    # Passed through to aiokafka.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.overflow_policy not in ("block", "drop"):
            raise ConfigError(
                f"overflow_policy must be 'block' or 'drop', got {self.overflow_policy!r}"
            )
        if self.compression not in ("auto", "lz4", "zstd", "gzip", "none"):
            raise ConfigError(
                f"compression must be auto|lz4|zstd|gzip|none, got {self.compression!r}"
            )
        for name in ("batch_size", "buffer_max_events", "max_batch_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.delivery_timeout_ms < self.request_timeout_ms:
            raise ConfigError(
                f"delivery_timeout_ms ({self.delivery_timeout_ms}) must be >= "
                f"request_timeout_ms ({self.request_timeout_ms}); raise it"
            )
        signing = (self.signing_tenant_id, self.signing_key_id, self.signing_secret)
        if any(v is not None for v in signing) and not all(v is not None for v in signing):
            raise ConfigError(
                "signing needs signing_tenant_id, signing_key_id and signing_secret together"
            )

    @property
    def signs(self) -> bool:
        return self.signing_secret is not None

    def kafka_security_kwargs(self) -> dict[str, Any]:
        """The security settings in aiokafka's keyword form."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_plain_username
            kwargs["sasl_plain_password"] = self.sasl_plain_password
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return kwargs

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ProducerConfig:
        env = os.environ if env is None else env
        names = {
            "KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers",
            "KAFKA_SECURITY_PROTOCOL": "security_protocol",
            "KAFKA_SASL_MECHANISM": "sasl_mechanism",
            "KAFKA_SASL_USERNAME": "sasl_plain_username",
            "KAFKA_SASL_PASSWORD": "sasl_plain_password",
            "KAFKA_SSL_CAFILE": "ssl_cafile",
            "KAFKA_SSL_CERTFILE": "ssl_certfile",
            "KAFKA_SSL_KEYFILE": "ssl_keyfile",
            "TOKENPULSE_SDK_LINGER_MS": "linger_ms",
            "TOKENPULSE_SDK_BATCH_SIZE": "batch_size",
            "TOKENPULSE_SDK_BUFFER_MAX_EVENTS": "buffer_max_events",
            "TOKENPULSE_SDK_OVERFLOW_POLICY": "overflow_policy",
            "TOKENPULSE_SDK_BLOCK_TIMEOUT_S": "block_timeout_s",
            "TOKENPULSE_SDK_DELIVERY_TIMEOUT_MS": "delivery_timeout_ms",
            "TOKENPULSE_SDK_COMPRESSION": "compression",
            "TOKENPULSE_SDK_ENVELOPE": "envelope",
            "TOKENPULSE_SIGNING_TENANT": "signing_tenant_id",
            "TOKENPULSE_SIGNING_KEY_ID": "signing_key_id",
            "TOKENPULSE_SIGNING_SECRET": "signing_secret",
        }
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for var, name in names.items():
            raw = env.get(var)
            if not raw:
                continue
            kind = str(types[name])
            try:
                if name == "signing_secret":
                    values[name] = parse_secret(raw)
                elif kind == "int":
                    values[name] = int(raw)
                elif kind == "float":
                    values[name] = float(raw)
                elif kind == "bool":
                    values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
                else:
                    values[name] = raw
            except ValueError:
                raise ConfigError(
                    f"{var}={raw!r} is not a valid {kind}; fix the variable"
                ) from None
        values.update(overrides)
        return cls(**values)
