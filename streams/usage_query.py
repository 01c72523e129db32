"""Current-period usage of a tenant subtree, read from ClickHouse.

The quota engine asks the durable store rather than keeping its own
counters: a quota on a tenant prefix covers sub-tenants whose events land in
other partitions (owned by other workers), so only the store that every
worker writes to knows the whole total, and after a restart nothing has to
be rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Protocol

from tokenpulse.config import ClickHouseTarget
from tokenpulse.streams.cost import ModelUsage
from tokenpulse.streams.quota_logic import Usage
from tokenpulse.streams.retry import is_retriable

log = logging.getLogger("tokenpulse.streams.usage_query")


class UsageReader(Protocol):
    async def usage(
        self, tenant_prefix: str, model: str | None, start: datetime, end: datetime
    ) -> Usage: ...

    async def usage_by_model(
        self, tenant_prefix: str, model: str | None, since: datetime, start: datetime, end: datetime
    ) -> list[ModelUsage]:
        """Tokens by type per (tenant, model): [since, start) as before, [start, end) within."""
        ...


class ClickHouseUsageReader:
    """Sums usage_events of `tenant_prefix` and its descendants in [start, end)."""

    def __init__(self, target: ClickHouseTarget, *, database: str | None = None) -> None:
        self.target = target
        self.database = database or target.database
        self._client: Any = None

    async def start(self) -> None:
        import clickhouse_connect

        self._client = await clickhouse_connect.get_async_client(
            host=self.target.host,
            port=self.target.port,
            username=self.target.username,
            password=self.target.password,
            secure=self.target.secure,
            database=self.database,
            autogenerate_session_id=False,
        )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def usage(
        self, tenant_prefix: str, model: str | None, start: datetime, end: datetime
    ) -> Usage:
        sql = (
            "SELECT sum(input_tokens), sum(output_tokens)"
            f" FROM {self.database}.usage_events"
            " WHERE (tenant_id = {t:String} OR startsWith(tenant_id, {tp:String}))"
            " AND occurred_at >= {start:DateTime64(3, 'UTC')}"
            " AND occurred_at < {end:DateTime64(3, 'UTC')}"
        )
        params: dict[str, Any] = {
            "t": tenant_prefix,
            "tp": tenant_prefix + "/",
            "start": start,
            "end": end,
        }
        if model is not None:
            sql += " AND model = {m:String}"
            params["m"] = model
        result = await self._query(sql, params)
        row = result.result_rows[0]
        return Usage(input_tokens=int(row[0] or 0), output_tokens=int(row[1] or 0))

    async def usage_by_model(
        self, tenant_prefix: str, model: str | None, since: datetime, start: datetime, end: datetime
    ) -> list[ModelUsage]:
        # The billing split of tokens (invoice.py): cached input and reasoning
        # output are subsets, priced at their own rate.
        kinds = (
            "input_tokens - least(cached_input_tokens, input_tokens)",
            "cached_input_tokens",
            "output_tokens - least(reasoning_tokens, output_tokens)",
            "reasoning_tokens",
        )
        before = ", ".join(
            f"sumIf({k}, occurred_at < {{start:DateTime64(3, 'UTC')}})" for k in kinds
        )
        within = ", ".join(
            f"sumIf({k}, occurred_at >= {{start:DateTime64(3, 'UTC')}})" for k in kinds
        )
        sql = (
            f"SELECT tenant_id, model, {before}, {within}"
            f" FROM {self.database}.usage_events"
            " WHERE (tenant_id = {t:String} OR startsWith(tenant_id, {tp:String}))"
            " AND occurred_at >= {since:DateTime64(3, 'UTC')}"
            " AND occurred_at < {end:DateTime64(3, 'UTC')}"
        )
        params: dict[str, Any] = {
            "t": tenant_prefix,
            "tp": tenant_prefix + "/",
            "since": min(since, start),
            "start": start,
            "end": end,
        }
        if model is not None:
            sql += " AND model = {m:String}"
            params["m"] = model
        sql += " GROUP BY tenant_id, model"
        result = await self._query(sql, params)
        types = ("input", "cached_input", "output", "reasoning")
        return [
            ModelUsage(
                tenant_id=str(r[0]),
                model=str(r[1]),
                before={t: int(v or 0) for t, v in zip(types, r[2:6], strict=True)},
                within={t: int(v or 0) for t, v in zip(types, r[6:10], strict=True)},
            )
            for r in result.result_rows
        ]

    async def _query(self, sql: str, params: dict[str, Any]) -> Any:
        delay_s = 0.2
        while True:
            try:
                return await self._client.query(sql, parameters=params)
            except Exception as exc:
                # Quota checks sit before the offset commit: wait for the store
                # rather than skip the check (the batch is already durable).
                # A wrong query is a bug, not an outage: let it stop the worker.
                if not is_retriable(exc):
                    raise
                log.warning("usage query failed (%s); retrying in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
