"""The sink's row encoding (JSONCompactColumns) and its group tokens, without a server."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from tokenpulse.schemas import UsageEvent
from tokenpulse.sinks._encode import (
    COLUMN_NAMES,
    EVENT_COLUMNS,
    encode_events,
    encode_fragments,
    event_columns,
    join_fragments,
)
from tokenpulse.sinks.base import AcceptedEvent, SinkBatch, UsageSink
from tokenpulse.sinks.clickhouse import (
    MAX_PLAIN_TOKEN_CHARS,
    ClickHouseSink,
    check_group,
    group_token,
    insert_chunks,
)

T0 = datetime(2026, 11, 3, 10, 0, 0, 123_000, tzinfo=UTC)
NASTY = 'q\'uote "dq" back\\slash\nnew\rline\ttab \x00nul \x1f \u2028 日本語 😀'


def _acc(offset: int = 0, partition: int = 0, **fields: Any) -> AcceptedEvent:
    base: dict[str, Any] = {
        "event_id": f"e{offset}",
        "tenant_id": "acme",
        "occurred_at": T0,
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 2,
    }
    base.update(fields)
    ev = UsageEvent(**base)
    return AcceptedEvent(ev, "tokenpulse.usage.v1", partition, offset, T0)


def _decode(body: bytes) -> dict[str, list[object]]:
    cols = orjson.loads(body)
    assert isinstance(cols, list)
    assert len(cols) == len(EVENT_COLUMNS)  # every column, in EVENT_COLUMNS order, no names
    return dict(zip(COLUMN_NAMES, cols, strict=True))


def test_edge_values_are_written_exactly() -> None:
    events = [
        _acc(0, input_tokens=0, output_tokens=0, gpu_seconds=None, attributes={}),
        _acc(
            1,
            event_id=NASTY[:128],
            input_tokens=10**9,
            output_tokens=10**9,
            cached_input_tokens=10**9,
            reasoning_tokens=10**9,
            gpu_seconds=0.1,
            attributes={NASTY: NASTY, "": "", "ключ": "значение"},
            agent_id="a",
            region="eu-west",
            provider="p",
            operation="chat",
            occurred_at=datetime(2100, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC),
        ),
        _acc(
            2, gpu_seconds=0.0, occurred_at=datetime(2299, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
        ),
        _acc(3, gpu_seconds=1.7976931348623157e308, occurred_at=datetime(1900, 1, 1, tzinfo=UTC)),
        _acc(
            4,
            gpu_seconds=5e-324,
            occurred_at=datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC),
        ),
    ]
    cols = _decode(encode_events(events))
    assert cols["input_tokens"] == [0, 10**9, 1, 1, 1]
    assert cols["cached_input_tokens"] == [0, 10**9, 0, 0, 0]
    assert cols["reasoning_tokens"] == [0, 10**9, 0, 0, 0]
    assert cols["gpu_seconds"] == [None, 0.1, 0.0, 1.7976931348623157e308, 5e-324]
    assert cols["attributes"][0] == {}
    assert cols["attributes"][1] == {NASTY: NASTY, "": "", "ключ": "значение"}
    assert cols["event_id"][1] == NASTY[:128]
    # Optional strings are '' (the String columns are not Nullable), never null.
    assert cols["agent_id"] == ["", "a", "", "", ""]
    assert cols["operation"] == ["", "chat", "", "", ""]
    # RFC 3339 in UTC with every microsecond: the server keeps the first 3 digits.
    assert cols["occurred_at"] == [
        "2026-11-03T10:00:00.123000Z",
        "2100-01-01T00:00:00.001000Z",
        "2299-12-31T23:59:59.999999Z",
        "1900-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999500Z",
    ]
    assert cols["late"] == [False] * 5
    assert cols["kafka_topic"] == ["tokenpulse.usage.v1"] * 5
    assert cols["kafka_offset"] == [0, 1, 2, 3, 4]
    assert cols["schema_version"] == [1] * 5


def test_floats_read_back_to_the_same_double() -> None:
    values = [0.1 * i + 1e-9 * i * i for i in range(1, 500)] + [math.pi, 2.0**-1074, 1 / 3]
    events = [_acc(i, gpu_seconds=v) for i, v in enumerate(values)]
    assert _decode(encode_events(events))["gpu_seconds"] == values


def test_timestamps_keep_their_instant_whatever_the_offset() -> None:
    plus2 = timezone(timedelta(hours=2))
    acc = _acc(0)
    other = AcceptedEvent(
        acc.event, acc.topic, 0, 1, datetime(2026, 11, 3, 12, 0, 0, 5_000, tzinfo=plus2), late=True
    )
    naive = AcceptedEvent(acc.event, acc.topic, 0, 2, datetime(2026, 11, 3, 10, 0), late=False)
    cols = _decode(encode_events([other, naive]))
    # An offset is kept (the server applies it); a naive datetime is UTC, never local time.
    assert cols["ingested_at"] == ["2026-11-03T12:00:00.005000+02:00", "2026-11-03T10:00:00Z"]
    assert cols["late"] == [True, False]


def test_utc_timestamps_are_spelt_as_orjson_spells_them() -> None:
    """UTC columns are written by msgspec (faster): the bytes must be orjson's."""
    import random

    rng = random.Random(7)
    edges = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 3, 10, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 11, 3, 10, 0, 0, 100_000, tzinfo=UTC),
        datetime(2024, 2, 29, 0, 0, tzinfo=UTC),
        # Zero offsets that are not the UTC singleton compare equal to it.
        datetime(2026, 11, 3, 10, 0, 0, 5, tzinfo=timezone(timedelta(0))),
        datetime(2026, 11, 3, 10, 0, 0, tzinfo=timezone(timedelta(0), "GMT")),
    ]
    span_s = (datetime(9999, 1, 1, tzinfo=UTC) - edges[0]).total_seconds()
    randoms = [
        edges[0] + timedelta(seconds=rng.uniform(0, span_s), microseconds=rng.randrange(10**6))
        for _ in range(5_000)
    ]
    moments = edges + randoms
    acc = _acc(0)
    events = [
        AcceptedEvent(
            UsageEvent(event_id=f"e{i}", tenant_id="acme", occurred_at=when, model="m",
                       input_tokens=1, output_tokens=1),
            acc.topic, 0, i, moments[-1 - i],
        )
        for i, when in enumerate(moments)
    ]  # fmt: skip
    # Byte for byte what orjson alone writes of the same columns.
    expected = orjson.dumps(event_columns(events), option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)
    assert encode_events(events) == expected
    assert join_fragments([encode_fragments(events)]) == expected


def test_no_events_is_an_empty_set_of_columns() -> None:
    assert _decode(encode_events([])) == {name: [] for name in COLUMN_NAMES}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_gpu_seconds_is_refused_not_written_as_null(bad: float) -> None:
    # Validation rejects these on decode; a struct built in Python is not validated.
    with pytest.raises(ValueError, match="finite"):
        encode_events([_acc(0), _acc(1, gpu_seconds=bad)])


def test_batches_encoded_ahead_join_into_the_same_body() -> None:
    """The body of a group from its batches' fragments is byte for byte `encode_events`."""
    batches = [
        [_acc(0, event_id=NASTY[:100], gpu_seconds=0.1, attributes={NASTY: "v"})],
        [],  # a batch without events
        [_acc(o, partition=1, gpu_seconds=None, cached_input_tokens=1) for o in range(5)],
        [_acc(9, partition=2, occurred_at=T0 + timedelta(days=400))._replace(late=True)],
    ]
    fragments = [encode_fragments(events) for events in batches]
    for n in range(len(batches) + 1):
        expected = encode_events([e for events in batches[:n] for e in events])
        assert join_fragments(fragments[:n]) == expected


@pytest.mark.parametrize("bad", [math.inf, 2**64])
async def test_what_cannot_be_encoded_ahead_is_left_to_the_write_which_refuses_it(
    bad: float,
) -> None:
    sink = ClickHouseSink.__new__(ClickHouseSink)  # no connection: the encoding only
    field = "gpu_seconds" if isinstance(bad, float) else "input_tokens"
    events = [_acc(0), _acc(1, **{field: bad})]
    assert sink.encode_ahead(events) is None
    assert sink.encode_ahead(events[:1]) == encode_fragments(events[:1])


def test_an_integer_beyond_64_bits_is_refused() -> None:
    with pytest.raises(TypeError):
        encode_events([_acc(0, input_tokens=2**64)])


def _batch(partition: int, first: int, last: int, topic: str = "tokenpulse.usage.v1") -> SinkBatch:
    events = tuple(_acc(o, partition) for o in range(first, last + 1))
    return SinkBatch(topic, partition, first, last, events)


def test_one_batch_keeps_its_own_token() -> None:
    b = _batch(0, 0, 9)
    assert group_token([b]) == b.token == "tokenpulse.usage.v1/0/0-9"


def test_a_few_batches_join_their_tokens_in_order() -> None:
    a, b = _batch(0, 0, 9, "t"), _batch(1, 0, 4, "t")
    assert group_token([a, b]) == "t/0/0-9,t/1/0-4"
    assert group_token([b, a]) == "t/1/0-4,t/0/0-9"


def test_many_batches_hash_their_tokens_behind_a_readable_prefix() -> None:
    group = [_batch(p, 100, 100) for p in range(12)]
    token = group_token(group)
    assert len(",".join(b.token for b in group)) > MAX_PLAIN_TOKEN_CHARS
    assert token.startswith("tokenpulse.usage.v1/0/100-100+11:sha256:")
    assert len(token) == len("tokenpulse.usage.v1/0/100-100+11:sha256:") + 64
    assert group_token(list(group)) == token  # deterministic
    assert group_token(group[::-1]) != token  # order is part of the group
    assert group_token(group[:-1]) != token


def test_a_write_over_the_row_limit_is_cut_at_batch_boundaries_into_equal_runs() -> None:
    group = [_batch(p % 12, 100 * (p // 12), 100 * (p // 12) + 9) for p in range(30)]  # 300 rows
    assert insert_chunks(group, 0) == [group]  # 0: one insert
    assert insert_chunks(group, 300) == [group]
    halves = insert_chunks(group, 299)
    assert halves == [group[:15], group[15:]]  # 2 runs of 150, not 299 + 1
    thirds = insert_chunks(group, 100)
    assert [sum(len(b.events) for b in c) for c in thirds] == [100, 100, 100]
    assert [b for c in thirds for b in c] == group  # every batch once, in order
    assert insert_chunks(list(group), 100) == thirds  # a re-send is cut the same way
    # Tokens per run: what a re-sent write's runs are deduplicated by.
    assert len({group_token(c) for c in thirds}) == 3
    # Uneven batches: a run closes once it reaches its share; never more runs
    # than ceil(rows / limit), and a batch bigger than a share is not cut.
    uneven = [_batch(0, 0, 249), _batch(1, 0, 9), _batch(2, 0, 39)]  # 250 + 10 + 40
    assert insert_chunks(uneven, 200) == [uneven[:1], uneven[1:]]
    assert insert_chunks(uneven, 1) == [[b] for b in uneven]


def test_a_group_must_not_repeat_or_overlap_offsets_of_a_partition() -> None:
    check_group([_batch(0, 0, 9), _batch(1, 0, 9), _batch(0, 10, 19)])
    with pytest.raises(ValueError, match="overlaps"):
        check_group([_batch(0, 0, 9), _batch(0, 0, 9)])
    with pytest.raises(ValueError, match="overlaps"):
        check_group([_batch(0, 10, 19), _batch(0, 5, 12)])


class _Recording(UsageSink):
    def __init__(self) -> None:
        self.written: list[str] = []

    async def write(self, batch: SinkBatch) -> None:
        self.written.append(batch.token)

    async def last_offsets(self, topic: str, partitions: Collection[int]) -> Mapping[int, int]:
        return {}

    async def existing_event_ids(
        self, tenant_id: str, event_ids: Collection[str], since: datetime
    ) -> set[str]:
        return set()


async def test_the_default_write_many_writes_each_batch_in_order() -> None:
    sink = _Recording()
    group = [_batch(0, 0, 1, "t"), _batch(1, 0, 0, "t"), _batch(0, 2, 3, "t")]
    await sink.write_many(group)
    assert sink.written == ["t/0/0-1", "t/1/0-0", "t/0/2-3"]


async def test_clickhouse_write_many_without_events_sends_nothing() -> None:
    # Not started: any request would raise ConfigError.
    sink = ClickHouseSink("http://default:@127.0.0.1:9/x")
    await sink.write_many([])
    await sink.write_many([SinkBatch("t", 0, 0, 4, ()), SinkBatch("t", 1, 0, 2, ())])
    await sink.write(SinkBatch("t", 0, 5, 9, ()))


class _FakeClient:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def raw_insert(self, table: str, column_names: Any, **kw: Any) -> None:
        self.calls.append({"table": table, "columns": tuple(column_names), **kw})


@pytest.mark.parametrize(
    ("host", "compressed"),
    [("127.0.0.1", False), ("localhost", False), ("[::1]", False), ("10.0.0.7", True),
     ("ch.example.com", True)],
)  # fmt: skip
def test_inserts_are_compressed_unless_the_server_is_on_this_machine(
    host: str, compressed: bool
) -> None:
    assert ClickHouseSink(f"http://default:@{host}:8123/db").compress_inserts is compressed


async def test_clickhouse_write_many_is_one_insert_of_every_non_empty_batch() -> None:
    import lz4.frame

    sink = ClickHouseSink("http://default:@ch.example.com:9/db")
    fake = sink._client = _FakeClient()
    a, b = _batch(0, 0, 2, "t"), _batch(1, 5, 6, "t")
    await sink.write_many([a, SinkBatch("t", 2, 0, 9, ()), b])
    (call,) = fake.calls
    assert call["table"] == "db.usage_events"
    assert call["columns"] == COLUMN_NAMES
    assert call["fmt"] == "JSONCompactColumns"
    assert call["compression"] == "lz4"
    settings = call["settings"]
    assert settings["insert_deduplication_token"] == "t/0/0-2,t/1/5-6"  # the empty batch: not in it
    assert settings["deduplicate_blocks_in_dependent_materialized_views"] == 1
    assert settings["precise_float_parsing"] == 1
    assert settings["date_time_input_format"] == "best_effort"
    body = lz4.frame.decompress(call["insert_block"])
    assert body == encode_events([*a.events, *b.events])
    loopback = ClickHouseSink("http://default:@127.0.0.1:9/db")
    near = loopback._client = _FakeClient()
    await loopback.write_many([a, b])
    assert near.calls[0]["compression"] is None
    assert near.calls[0]["insert_block"] == body
    assert near.calls[0]["settings"] == settings
    # write(batch) is the same insert as a group of that one batch.
    await sink.write(a)
    await sink.write_many([a, SinkBatch("t", 2, 0, 9, ())])
    tokens = [c["settings"]["insert_deduplication_token"] for c in fake.calls[1:]]
    assert tokens == [a.token, a.token]
