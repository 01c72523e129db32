"""A synchronous clickhouse-connect client for the CLI verbs (migrate, bill, capacity)."""

from __future__ import annotations

from typing import Any

from tokenpulse.config import ClickHouseTarget
from tokenpulse.errors import ServiceUnavailable


def sync_client(target: ClickHouseTarget, *, timeout_s: float = 300.0) -> Any:
    """Connect without selecting a database (it may not exist yet); names are qualified."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import OperationalError

    try:
        return clickhouse_connect.get_client(
            host=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            secure=target.secure,
            connect_timeout=10,
            send_receive_timeout=timeout_s,
        )
    except OperationalError as exc:
        raise ServiceUnavailable(
            f"cannot reach ClickHouse at {target.host}:{target.port}: {str(exc).splitlines()[0]};"
            " start it (`tokenpulse dev up`) or set CLICKHOUSE_URL",
        ) from exc
