"""Retry classification and bounded backoff of the ClickHouse sink."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from tokenpulse.errors import ServiceUnavailable
from tokenpulse.sinks._retry import RetryPolicy, SinkWriteError, is_retriable, with_retries

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (OperationalError("Network Error"), True),
        (DatabaseError("HTTP driver received HTTP status 503"), True),
        (DatabaseError("too many parts", code=252), True),
        (DatabaseError("Unknown table", code=60), False),
        (DatabaseError("Syntax error", code=62), False),
        (ValueError("bad"), False),
    ],
)
def test_classification(exc: Exception, retriable: bool) -> None:
    assert is_retriable(exc) is retriable


async def test_retriable_errors_are_retried_then_reported_as_service_unavailable() -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("refused")

    with pytest.raises(ServiceUnavailable, match="after 3 attempts"):
        await with_retries("insert", FAST, failing, "h:1/db")
    assert calls == 3


async def test_a_transient_failure_then_success_returns_the_result() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("reset")
        return 42

    assert await with_retries("q", FAST, flaky, "h:1/db") == 42
    assert calls == 2


async def test_schema_errors_are_not_retried() -> None:
    calls = 0

    async def bad() -> None:
        nonlocal calls
        calls += 1
        raise DatabaseError("Unknown table expression identifier", code=60)

    with pytest.raises(SinkWriteError, match="db migrate"):
        await with_retries("insert", FAST, bad, "h:1/db")
    assert calls == 1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=1.0, max_backoff_s=4.0)
    assert 0.5 <= policy.delay_s(1) <= 1.0
    assert 2.0 <= policy.delay_s(10) <= 4.0
