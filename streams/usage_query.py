"""Current-period usage of a tenant subtree, read from ClickHouse.

The quota engine asks the durable store rather than keeping its own
counters: a quota on a tenant prefix covers sub-tenants whose events land in
other partitions (owned by other workers), so only the store that every
worker writes to knows the whole total, and after a restart nothing has to
be rebuilt. One check reads all its quotas at once (`usage_many`,
`usage_by_model_many`): one query per up to `max_branches` quotas, the
queries concurrently, since a round trip per quota made alert latency grow
with the number of quotas a batch touched. Quota periods are whole minutes,
so token and cost quotas are read from the hour totals (and the minute
totals of an hour a period bound splits) in one small query per chunk
whatever their number; other bounds from usage_events with a UNION ALL
branch per quota.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from tokenpulse.config import ClickHouseTarget
from tokenpulse.streams.cost import ModelUsage
from tokenpulse.streams.quota_logic import Usage
from tokenpulse.streams.retry import RetryAbandoned, is_retriable

log = logging.getLogger("tokenpulse.streams.usage_query")

_T = TypeVar("_T")

# Quotas per query. The server plans a UNION ALL's branches one after another
# (~2-4 ms each on the embedded engine), so a big check is faster as several
# queries planned on several cores: a check of 500 quotas took 2.2 s in
# chunks of 200 and 1.0 s in chunks of 50 (embedded engine, 2 shared cores).
# 50 branches also stay far below max_query_size and max_ast_elements. The
# query over the hour and minute totals repeats each distinct subtree in its
# WHERE, so it is chunked the same way.
MAX_BRANCHES = 50
# Chunks of one check, and the two kinds of read, go out together; the async
# client (aiohttp, no session id) runs them on parallel connections.
MAX_CONCURRENT_QUERIES = 8
_DT = "DateTime64(3, 'UTC')"
# The billing split of tokens (invoice.py): cached input and reasoning
# output are subsets, priced at their own rate.
_TOKEN_KINDS = (
    ("input", "input_tokens - least(cached_input_tokens, input_tokens)"),
    ("cached_input", "cached_input_tokens"),
    ("output", "output_tokens - least(reasoning_tokens, output_tokens)"),
    ("reasoning", "reasoning_tokens"),
)


@dataclass(frozen=True, slots=True)
class UsageRequest:
    """Tokens of `tenant_prefix` and its descendants (of `model` only, if set) in [start, end)."""

    tenant_prefix: str
    model: str | None
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class ModelUsageRequest:
    """Tokens by type per (tenant, model) of a subtree: [since, start) and [start, end)."""

    tenant_prefix: str
    model: str | None
    since: datetime
    start: datetime
    end: datetime


_Req = TypeVar("_Req", UsageRequest, ModelUsageRequest)


class UsageReader(Protocol):
    async def usage(
        self, tenant_prefix: str, model: str | None, start: datetime, end: datetime
    ) -> Usage: ...

    async def usage_by_model(
        self, tenant_prefix: str, model: str | None, since: datetime, start: datetime, end: datetime
    ) -> list[ModelUsage]:
        """Tokens by type per (tenant, model): [since, start) as before, [start, end) within."""
        ...

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        """`usage` of each request, in the same order, in as few round trips as possible."""
        ...

    async def usage_by_model_many(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        """`usage_by_model` of each request, in order, in as few round trips as possible."""
        ...


async def gather_or_cancel(calls: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T]:
    """Run the calls together; the first failure cancels the rest and propagates as it is.

    Unlike a bare asyncio.gather, no query is left running unowned after a
    failure, and unlike a TaskGroup the error is not wrapped in an
    ExceptionGroup (callers and the retry policy look at its type).
    """
    if len(calls) == 1:
        return [await calls[0]()]

    async def run(call: Callable[[], Awaitable[_T]]) -> _T:
        return await call()

    tasks = [asyncio.ensure_future(run(c)) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _Params:
    """Bound query parameters, one per distinct value: a check's quotas share most of them."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._names: dict[tuple[str, Any], str] = {}

    def bind(self, type_: str, value: Any) -> str:
        name = self._names.get((type_, value))
        if name is None:
            name = self._names[(type_, value)] = f"p{len(self._names)}"
            self.values[name] = value
        return f"{{{name}:{type_}}}"


def _subtree(p: _Params, prefix: str, model: str | None, lo: datetime, hi: datetime) -> str:
    # `acme` covers `acme` and `acme/...`, never `acme2`. Both tests are on the
    # primary key's first column and the range on its second, so each branch
    # reads only its own granules.
    sql = (
        f"(tenant_id = {p.bind('String', prefix)}"
        f" OR startsWith(tenant_id, {p.bind('String', prefix + '/')}))"
        f" AND occurred_at >= {p.bind(_DT, lo)} AND occurred_at < {p.bind(_DT, hi)}"
    )
    if model is not None:
        sql += f" AND model = {p.bind('String', model)}"
    return sql


# The quotas (numbered from 1) of a chunk that cover a row of `_spans`: its
# subtree (`acme` covers `acme/x`, never `acme2`), its model if it has one,
# and a span inside its period.
_COVERING = (
    "arrayFilter(x -> (tenant_id = {q_t:Array(String)}[x]"
    " OR startsWith(tenant_id, {q_tp:Array(String)}[x]))"
    " AND ({q_any:Array(UInt8)}[x] = 1 OR model = {q_m:Array(String)}[x])"
    " AND span >= {q_s:Array(UInt32)}[x] AND span < {q_e:Array(UInt32)}[x],"
    " range(1, {q_n:UInt32} + 1))"
)


def _re2_literal(text: str) -> str:
    """`text` as a literal in an RE2 pattern (ClickHouse's `match`): punctuation escaped."""
    return re.sub(r"([^A-Za-z0-9_])", r"\\\1", text)


def _quota_index(q: Any, n: int) -> int:
    """The 0-based request of quota number `q` (from 1) of `_COVERING`, checked."""
    if not 1 <= int(q) <= n:
        raise RuntimeError(f"usage query answered quota {q} of {n}")
    return int(q) - 1


def _model_usage(row: Sequence[Any]) -> ModelUsage:
    """A cost row: tenant, model, then the `_TOKEN_KINDS` before and within."""
    types = [t for t, _ in _TOKEN_KINDS]
    return ModelUsage(
        tenant_id=str(row[0]),
        model=str(row[1]),
        before={t: int(v or 0) for t, v in zip(types, row[2:6], strict=True)},
        within={t: int(v or 0) for t, v in zip(types, row[6:10], strict=True)},
    )


def _cost_rows(
    rows: Sequence[Sequence[Any]], n: int, index: Callable[[Any], int]
) -> list[list[ModelUsage]]:
    """Rows of (quota number, then a `_model_usage` row) as each of `n` quotas' sorted list.

    `index` maps a row's quota number to its request (the two reads number
    their quotas differently).
    """
    out: list[list[ModelUsage]] = [[] for _ in range(n)]
    for row in rows:
        out[index(row[0])].append(_model_usage(row[1:]))
    for found in out:
        found.sort(key=lambda u: (u.tenant_id, u.model))  # the server's order is arbitrary
    return out


def _epoch_s(at: datetime) -> int:
    # A naive datetime is UTC, as everywhere in tokenpulse (never the machine's zone).
    return int((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp())


def _on_minute(at: datetime) -> bool:
    # On the UTC clock: a zone's offset may once have had seconds.
    return at.microsecond == 0 and _epoch_s(at) % 60 == 0


_HOUR_S = 3600


def _hours_and_minutes(
    bounds: Sequence[int],
) -> tuple[tuple[int, int, list[int]] | None, list[tuple[int, int]]]:
    """How to read [first bound, last bound) by the hour and by the minute.

    `bounds`: sorted epoch seconds on the minute. Hours: (first, last,
    split) for the whole hours in [first, last) except the `split` ones, or
    None if there is none. Minutes: the [a, b) ranges in hours that one of
    `bounds` splits (adjacent ones merged).
    """
    lo, hi = bounds[0], bounds[-1]
    split = sorted({b - b % _HOUR_S for b in bounds if b % _HOUR_S})
    first = -(-lo // _HOUR_S) * _HOUR_S
    last = hi - hi % _HOUR_S
    inside = [h for h in split if first <= h < last]
    hours = (first, last, inside) if last - first > len(inside) * _HOUR_S else None
    minutes: list[tuple[int, int]] = []
    for h in split:
        a, b = max(h, lo), min(h + _HOUR_S, hi)
        if a >= b:
            continue
        if minutes and minutes[-1][1] == a:
            minutes[-1] = (minutes[-1][0], b)
        else:
            minutes.append((a, b))
    return hours, minutes


class ClickHouseUsageReader:
    """Usage of `tenant_prefix` and its descendants in [start, end), from ClickHouse."""

    def __init__(
        self,
        target: ClickHouseTarget,
        *,
        database: str | None = None,
        max_branches: int = MAX_BRANCHES,
        max_concurrent_queries: int = MAX_CONCURRENT_QUERIES,
    ) -> None:
        self.target = target
        self.database = database or target.database
        self.max_branches = max_branches
        self._slots = asyncio.Semaphore(max_concurrent_queries)
        self._client: Any = None
        # Asked between two attempts while the store is away: True gives up
        # with RetryAbandoned (the worker's partitions are being revoked, or it
        # stops), so a quota check never holds a rebalance hostage. None: wait.
        self.should_abandon: Callable[[], bool] | None = None

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
        kinds = [k for _, k in _TOKEN_KINDS]
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
        return [_model_usage(r) for r in result.result_rows]

    async def usage_many(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        return await self._many(requests, self._usage_chunk)

    async def usage_by_model_many(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        return await self._many(requests, self._by_model_chunk)

    async def _many(
        self,
        requests: Sequence[_Req],
        read_chunk: Callable[[Sequence[_Req]], Awaitable[list[_T]]],
    ) -> list[_T]:
        if not requests:
            return []
        # Quotas with the same subtree, model and period (e.g. input and total
        # limits of one tenant) are read once.
        unique = list(dict.fromkeys(requests))
        chunks = [
            unique[i : i + self.max_branches] for i in range(0, len(unique), self.max_branches)
        ]
        results = await gather_or_cancel([functools.partial(read_chunk, c) for c in chunks])
        found: dict[_Req, _T] = {}
        for chunk, got in zip(chunks, results, strict=True):
            found.update(zip(chunk, got, strict=True))
        return [found[r] for r in requests]

    async def _usage_chunk(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        if all(_on_minute(r.start) and _on_minute(r.end) for r in requests):
            return await self._usage_chunk_totals(requests)
        return await self._usage_chunk_events(requests)

    async def _usage_chunk_totals(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        """The chunk in one small query over the hour and minute totals (`_spans`).

        The totals hold the same rows as usage_events (their views are fed by
        the same insert, retried inserts deduplicated in all), and a quota
        period starts and ends on a minute, so the sums are exact. The
        server plans one query, where a UNION ALL branch per quota cost ~3 ms
        of planning each and ~0.7 ms per part of usage_events (BENCHMARKS.md,
        round 13).
        """
        p = _Params()
        inner, _ = self._spans(
            p,
            [(r.tenant_prefix, r.model, _epoch_s(r.start), _epoch_s(r.end)) for r in requests],
            "sum(input_tokens) AS inp, sum(output_tokens) AS outp",
        )
        sql = f"SELECT q, sum(inp), sum(outp) FROM ({inner}) ARRAY JOIN {_COVERING} AS q GROUP BY q"
        result = await self._query(sql, p.values)
        # A quota with no rows in its period has no group: it used nothing.
        out = [Usage(input_tokens=0, output_tokens=0)] * len(requests)
        for q, inp, outp in result.result_rows:
            out[_quota_index(q, len(requests))] = Usage(
                input_tokens=int(inp or 0), output_tokens=int(outp or 0)
            )
        return out

    def _spans(
        self,
        p: _Params,
        periods: Sequence[tuple[str, str | None, int, int]],
        sums: str,
        splits: Sequence[int] = (),
    ) -> tuple[str, dict[int, int]]:
        """Aggregate rows under the subtrees, summed per tenant, model and span.

        `periods` are (subtree, model or None, start, end) in epoch seconds on
        the minute, one per quota of the chunk; the quotas are bound as arrays
        for `_COVERING`, 1-based. The rows are summed per span between two of
        the chunk's period bounds (a handful), and only those sums are matched
        against the quotas: matching each minute row costs rows x quotas.

        Whole hours come from `usage_by_hour`, and only the hours that a bound
        splits (a minute quota, a zone like Asia/Kolkata) from
        `usage_by_minute`: a busy tenant has 60 minute rows an hour, so a
        month's quota read the minute totals 10x slower than the hour totals
        (BENCHMARKS.md, round 15). Both tables are fed by the same insert
        through their views, so the sums are the same.

        WHERE repeats each subtree so that the primary key still picks the
        granules (most of what the query costs to plan), but only for that
        (`indexHint`): evaluated on every row read, the OR of a `startsWith`
        per subtree was most of what it cost to run. Rows are matched by one
        regular expression of the subtrees instead (0.55x the endpoint CPU
        for 474 quotas of a 20,000-tenant hierarchy, BENCHMARKS.md round
        14); `_COVERING` stays the exact match.

        `splits` are more bounds (epoch seconds on the minute) inside the
        periods; the span rank of each bound comes back with the SQL.
        """
        # Span k of a minute = how many bounds are at or before it, so a quota
        # [start, end) holds exactly the spans k with rank(start) <= k < rank(end).
        # No bound falls inside a whole hour, so its minutes share one span.
        bounds = sorted({b for _, _, start, end in periods for b in (start, end)} | set(splits))
        rank = {b: k for k, b in enumerate(bounds, 1)}
        # One time range for the chunk: a range per subtree cost more to plan
        # (104 against 66 ms for 50 subtrees on the embedded engine) than the
        # few extra minute rows it spares.
        # The subtrees as one IN (the tenants themselves) and a startsWith per
        # prefix: half the planning of an (= OR startsWith) pair per subtree.
        prefixes = list(dict.fromkeys(t for t, _, _, _ in periods))
        below = " OR ".join(f"startsWith(tenant_id, {p.bind('String', t + '/')})" for t in prefixes)
        where = (
            f"indexHint(tenant_id IN {{q_in:Array(String)}} OR {below})"
            " AND (tenant_id IN {q_in:Array(String)} OR match(tenant_id, {q_re:String}))"
        )
        p.values.update(
            q_in=prefixes,
            q_re="^(?:" + "|".join(_re2_literal(t + "/") for t in prefixes) + ")",
            q_bounds=bounds,
            q_t=[t for t, _, _, _ in periods],
            q_tp=[t + "/" for t, _, _, _ in periods],
            q_any=[int(m is None) for _, m, _, _ in periods],
            q_m=[m or "" for _, m, _, _ in periods],
            q_s=[rank[start] for _, _, start, _ in periods],
            q_e=[rank[end] for _, _, _, end in periods],
            q_n=len(periods),
        )

        def rows(table: str, at: str, when: str) -> str:
            return (
                f"SELECT tenant_id, model,"
                f" arrayCount(b -> b <= toUInt32({at}), {{q_bounds:Array(UInt32)}}) AS span,"
                f" {sums} FROM {self.database}.{table} WHERE {where} AND ({when})"
                " GROUP BY tenant_id, model, span"
            )

        def dt(epoch_s: int) -> str:
            return f"toDateTime({p.bind('UInt32', epoch_s)}, 'UTC')"

        hours, minutes = _hours_and_minutes(bounds)
        parts = []
        if hours is not None:
            first, last, split = hours
            when = f"hour >= {dt(first)} AND hour < {dt(last)}"
            if split:
                p.values["q_split"] = split
                when += " AND toUInt32(hour) NOT IN {q_split:Array(UInt32)}"
            parts.append(rows("usage_by_hour", "hour", when))
        if minutes:
            when = " OR ".join(f"minute >= {dt(a)} AND minute < {dt(b)}" for a, b in minutes)
            parts.append(rows("usage_by_minute", "minute", when))
        return " UNION ALL ".join(parts), rank

    async def _usage_chunk_events(self, requests: Sequence[UsageRequest]) -> list[Usage]:
        """The chunk over usage_events, a UNION ALL branch per quota: any [start, end)."""
        p = _Params()
        # Each branch is the single-quota query tagged with its index; an
        # aggregate without GROUP BY yields exactly one row, also for no events.
        sql = " UNION ALL ".join(
            f"SELECT toUInt32({i}) AS q, sum(input_tokens), sum(output_tokens)"
            f" FROM {self.database}.usage_events"
            f" WHERE {_subtree(p, r.tenant_prefix, r.model, r.start, r.end)}"
            for i, r in enumerate(requests)
        )
        result = await self._query(sql, p.values)
        out: dict[int, Usage] = {
            int(q): Usage(input_tokens=int(inp or 0), output_tokens=int(outp or 0))
            for q, inp, outp in result.result_rows
        }
        if len(out) != len(requests):
            # Reading a missing row as 0 would silently hold back alerts.
            raise RuntimeError(f"usage query returned {len(out)} of {len(requests)} rows")
        return [out[i] for i in range(len(requests))]

    async def _by_model_chunk(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        if all(_on_minute(t) for r in requests for t in (r.since, r.start, r.end)):
            return await self._by_model_chunk_totals(requests)
        return await self._by_model_chunk_events(requests)

    async def _by_model_chunk_totals(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        """The chunk's cost rows in one query over the hour and minute totals, as the token reads.

        Billing splits each event's tokens (`_TOKEN_KINDS`); on the totals the
        split is of each hour's or minute's sums, which is the same number
        because validation holds cached <= input and reasoning <= output for
        every accepted event. The totals also outlive a usage_events
        retention shorter than the month that prices the period.
        """
        p = _Params()
        starts = [_epoch_s(r.start) for r in requests]
        inner, rank = self._spans(
            p,
            [
                (r.tenant_prefix, r.model, min(_epoch_s(r.since), start), _epoch_s(r.end))
                for r, start in zip(requests, starts, strict=True)
            ],
            ", ".join(f"sum({k}) AS k{i}" for i, (_, k) in enumerate(_TOKEN_KINDS)),
            splits=starts,
        )
        # The period's own start splits month to date (before) from the period.
        p.values["q_b"] = [rank[start] for start in starts]
        split = "span < {q_b:Array(UInt32)}[q]"
        before = ", ".join(f"sumIf(k{i}, {split})" for i in range(len(_TOKEN_KINDS)))
        within = ", ".join(f"sumIf(k{i}, NOT {split})" for i in range(len(_TOKEN_KINDS)))
        sql = (
            f"SELECT q, tenant_id, model, {before}, {within} FROM ({inner})"
            f" ARRAY JOIN {_COVERING} AS q GROUP BY q, tenant_id, model"
        )
        result = await self._query(sql, p.values)
        return _cost_rows(
            result.result_rows, len(requests), lambda q: _quota_index(q, len(requests))
        )

    async def _by_model_chunk_events(
        self, requests: Sequence[ModelUsageRequest]
    ) -> list[list[ModelUsage]]:
        """The chunk's cost rows over usage_events, a UNION ALL branch per quota: any bounds."""
        p = _Params()
        branches = []
        for i, r in enumerate(requests):
            start = p.bind(_DT, r.start)
            before = ", ".join(f"sumIf({k}, occurred_at < {start})" for _, k in _TOKEN_KINDS)
            within = ", ".join(f"sumIf({k}, occurred_at >= {start})" for _, k in _TOKEN_KINDS)
            where = _subtree(p, r.tenant_prefix, r.model, min(r.since, r.start), r.end)
            branches.append(
                f"SELECT toUInt32({i}) AS q, tenant_id, model, {before}, {within}"
                f" FROM {self.database}.usage_events WHERE {where} GROUP BY tenant_id, model"
            )
        result = await self._query(" UNION ALL ".join(branches), p.values)
        return _cost_rows(result.result_rows, len(requests), int)

    async def _query(self, sql: str, params: dict[str, Any]) -> Any:
        async with self._slots:
            return await self._query_retrying(sql, params)

    async def _query_retrying(self, sql: str, params: dict[str, Any]) -> Any:
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
                self._abandon_if_asked(exc)
                log.warning("usage query failed (%s); retrying in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                self._abandon_if_asked(exc)
                delay_s = min(delay_s * 2, 10.0)

    def _abandon_if_asked(self, exc: BaseException) -> None:
        if self.should_abandon is not None and self.should_abandon():
            raise RetryAbandoned(f"usage query abandoned while the store is away ({exc})") from exc
