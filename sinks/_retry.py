"""Which ClickHouse failures are worth retrying, and bounded retries with backoff."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tokenpulse.errors import ServiceUnavailable, TokenpulseError

log = logging.getLogger(__name__)
T = TypeVar("T")

# ClickHouse error codes that describe a transient state of the server, not
# a wrong request: TIMEOUT_EXCEEDED, SOCKET_TIMEOUT, NETWORK_ERROR,
# TOO_MANY_SIMULTANEOUS_QUERIES, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY,
# TOO_MANY_PARTS, ALL_CONNECTION_TRIES_FAILED, CANNOT_SCHEDULE_TASK,
# KEEPER_EXCEPTION, and friends.
RETRIABLE_CODES = frozenset({159, 160, 164, 202, 209, 210, 241, 242, 252, 279, 319, 425, 439, 999})


class SinkWriteError(TokenpulseError):
    """ClickHouse rejected the request itself (schema, types, permissions): not retriable."""

    code = "sink_write_error"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        base: float = min(self.max_backoff_s, self.initial_backoff_s * (2 ** (attempt - 1)))
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto


def is_retriable(exc: BaseException) -> bool:
    """Connection refused/reset, timeouts, 5xx without a server verdict, overload codes."""
    from clickhouse_connect.driver import exceptions as ch

    if isinstance(exc, OSError | asyncio.TimeoutError | TimeoutError):
        return True
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return True
    except ImportError:  # pragma: no cover - aiohttp ships with clickhouse-connect
        pass
    if isinstance(exc, ch.OperationalError):
        return True
    if isinstance(exc, ch.DatabaseError):
        code = getattr(exc, "code", None)
        if code is None:
            # No ClickHouse code: a proxy or the transport failed (502/503/504).
            return "HTTP status 5" in str(exc) or "HTTP status 429" in str(exc)
        return int(code) in RETRIABLE_CODES
    return False


async def with_retries(
    what: str, policy: RetryPolicy, call: Callable[[], Awaitable[T]], target: str
) -> T:
    """Run `call`; retry retriable failures, then raise ServiceUnavailable or SinkWriteError."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except TokenpulseError:
            raise
        except Exception as exc:
            if not is_retriable(exc):
                raise SinkWriteError(
                    f"ClickHouse at {target} rejected {what}: {_first_line(exc)}; "
                    "check that `tokenpulse db migrate` ran for this database",
                    details={"error": type(exc).__name__, "ch_code": getattr(exc, "code", None)},
                ) from exc
            if attempt >= policy.max_attempts:
                raise ServiceUnavailable(
                    f"ClickHouse at {target} unavailable for {what} after {attempt} attempts:"
                    f" {_first_line(exc)}",
                    details={"attempts": attempt, "error": type(exc).__name__},
                ) from exc
            delay_s = policy.delay_s(attempt)
            log.warning(
                "%s failed (attempt %d/%d, retry in %.2fs): %s",
                what,
                attempt,
                policy.max_attempts,
                delay_s,
                _first_line(exc),
            )
            await asyncio.sleep(delay_s)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
