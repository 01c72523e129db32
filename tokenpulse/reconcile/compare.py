"""Kafka's expectation against ClickHouse's rows and the DLQ: every difference, named.

Pure: the I/O module hands in what it read. An event whose offset the worker
has not reached yet (beyond both ClickHouse's highest offset and the DLQ's
for its partition) is pending, not a difference, unless `strict`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tokenpulse.reconcile.expect import Expected, Occurrence, Rejection

Key = tuple[str, str]  # tenant_id, event_id

MISSING = "missing"  # accepted in Kafka, not in ClickHouse
DUPLICATE = "duplicate"  # one event counted more than once in ClickHouse
EXTRA = "extra"  # a ClickHouse row no Kafka record in the range accounts for
TOKEN_MISMATCH = "token_mismatch"  # noqa: S105 - a kind, not a secret; the row's token counts differ from the record's
DLQ_MISSING = "dlq_missing"  # a rejected record with no DLQ record naming it
PENDING = "pending"  # offsets not processed yet (a difference only with --strict)


@dataclass(frozen=True, slots=True)
class ChRow:
    """The usage_events columns reconciliation looks at."""

    tenant_id: str
    event_id: str
    partition: int
    offset: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """A DLQ record's pointer back to the usage record it rejects."""

    partition: int
    offset: int
    reason: str
    batch_index: int | None


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str
    tenant_id: str | None
    partition: int
    offset: int | None
    event_id: str | None
    detail: str


@dataclass
class Tally:
    events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0

    def add(self, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> None:
        self.events += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cached_input_tokens += cached_input_tokens


@dataclass
class PartitionTenant:
    """Expected vs actual for one (partition, tenant) over the reconciled range."""

    partition: int
    tenant_id: str
    expected: Tally = field(default_factory=Tally)
    actual: Tally = field(default_factory=Tally)
    pending_events: int = 0

    @property
    def matches(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    start_offset: int  # first offset reconciled
    end_offset: int  # exclusive: Kafka's end (or --until)
    processed_upto: int  # highest offset with a durable outcome (row or DLQ), -1: none
    pending_offsets: int


@dataclass
class Report:
    topic: str
    database: str
    strict: bool
    differences: list[Difference] = field(default_factory=list)
    tenants: list[PartitionTenant] = field(default_factory=list)
    lag: list[PartitionLag] = field(default_factory=list)
    records: int = 0
    accepted: int = 0
    kafka_duplicates: int = 0
    rejected: int = 0
    dlq_records: int = 0
    dlq_unreadable: int = 0  # DLQ records that do not decode as DlqRecord
    counted_before_range: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "topic": self.topic,
            "database": self.database,
            "strict": self.strict,
            "summary": {
                "records": self.records,
                "accepted": self.accepted,
                "kafka_duplicates": self.kafka_duplicates,
                "rejected": self.rejected,
                "dlq_records": self.dlq_records,
                "dlq_unreadable": self.dlq_unreadable,
                "counted_before_range": self.counted_before_range,
                "differences": len(self.differences),
                "pending_offsets": sum(lag.pending_offsets for lag in self.lag),
            },
            "differences": [asdict(d) for d in self.differences],
            "tenants": [
                {**asdict(t), "matches": t.matches}
                for t in sorted(self.tenants, key=lambda t: (t.partition, t.tenant_id))
            ],
            "lag": [asdict(lag) for lag in self.lag],
        }


def missing_keys(expected: Expected, rows: Iterable[ChRow]) -> set[Key]:
    """Expected events with no row in the range: to look up outside it before blaming."""
    present = {(r.tenant_id, r.event_id) for r in rows}
    return set(expected.events) - present


def processed_upto(
    ranges: Mapping[int, tuple[int, int]],
    ch_max: Mapping[int, int],
    dlq: Sequence[DlqEntry],
    committed: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Per partition, the highest offset the worker has visibly finished.

    The highest of: the last row in ClickHouse, the last DLQ record, and the
    offset before the worker group's commit (which also covers records that
    left no trace, e.g. a duplicate at the partition's tail).
    """
    committed = committed or {}
    done = {p: max(ch_max.get(p, -1), committed.get(p, 0) - 1) for p in ranges}
    for entry in dlq:
        if entry.partition in done and entry.offset > done[entry.partition]:
            done[entry.partition] = entry.offset
    return done


def compare(
    expected: Expected,
    rows: Sequence[ChRow],
    *,
    topic: str,
    database: str,
    ranges: Mapping[int, tuple[int, int]],
    ch_max: Mapping[int, int],
    dlq: Sequence[DlqEntry],
    elsewhere: Mapping[Key, Sequence[ChRow]] | None = None,
    strict: bool = False,
    committed: Mapping[int, int] | None = None,
) -> Report:
    """Every difference between what Kafka says and what ClickHouse and the DLQ hold.

    rows: usage_events rows of `topic` whose offsets fall in `ranges`.
    elsewhere: rows of missing keys found outside the ranges (counted earlier).
    """
    elsewhere = elsewhere or {}
    done = processed_upto(ranges, ch_max, dlq, committed)
    report = Report(topic, database, strict)
    report.records = expected.records
    report.accepted = len(expected.events)
    report.kafka_duplicates = expected.duplicates
    report.rejected = len(expected.rejections)
    report.dlq_records = len(dlq)
    tenants: dict[tuple[int, str], PartitionTenant] = {}

    def pt(partition: int, tenant: str) -> PartitionTenant:
        return tenants.setdefault((partition, tenant), PartitionTenant(partition, tenant))

    by_key: dict[Key, list[ChRow]] = defaultdict(list)
    for row in rows:
        by_key[(row.tenant_id, row.event_id)].append(row)
        pt(row.partition, row.tenant_id).actual.add(
            row.input_tokens, row.output_tokens, row.cached_input_tokens
        )
    diffs = report.differences
    for key, occurrences in expected.events.items():
        tenant, event_id = key
        found = by_key.get(key, [])
        first = occurrences[0]
        if not found:
            if elsewhere.get(key):
                report.counted_before_range += 1
            elif first.offset > done.get(first.partition, -1):
                pt(first.partition, tenant).pending_events += 1
            else:
                diffs.append(
                    Difference(
                        MISSING,
                        tenant,
                        first.partition,
                        first.offset,
                        event_id,
                        f"accepted at offset {first.offset}, no row in usage_events",
                    )
                )
                pt(first.partition, tenant).expected.add(*_tokens(first))
            continue
        counted = _occurrence_at(occurrences, found[0]) or first
        pt(counted.partition, tenant).expected.add(*_tokens(counted))
        if len(found) > 1:
            where = ", ".join(f"{r.partition}@{r.offset}" for r in found)
            diffs.append(
                Difference(
                    DUPLICATE,
                    tenant,
                    found[0].partition,
                    found[0].offset,
                    event_id,
                    f"{len(found)} rows in usage_events (at {where}); expected 1",
                )
            )
        for row in found:
            occ = _occurrence_at(occurrences, row)
            if occ is None:
                diffs.append(
                    Difference(
                        EXTRA,
                        tenant,
                        row.partition,
                        row.offset,
                        event_id,
                        "row names an offset whose Kafka record does not hold this event",
                    )
                )
                continue
            want, got = _tokens(occ), _row_tokens(row)
            if want != got:
                diffs.append(
                    Difference(
                        TOKEN_MISMATCH,
                        tenant,
                        row.partition,
                        row.offset,
                        event_id,
                        "input/output/cached tokens: Kafka {}/{}/{}, ClickHouse {}/{}/{}".format(
                            *want, *got
                        ),
                    )
                )
    for key, found in by_key.items():
        if key not in expected.events:
            for row in found:
                diffs.append(
                    Difference(
                        EXTRA,
                        key[0],
                        row.partition,
                        row.offset,
                        key[1],
                        "row in usage_events with no accepted Kafka event behind it",
                    )
                )
    diffs.extend(_dlq_differences(expected.rejections, dlq, done))
    for partition, (start, end) in sorted(ranges.items()):
        pending = max(0, end - 1 - max(done.get(partition, -1), start - 1))
        report.lag.append(PartitionLag(partition, start, end, done.get(partition, -1), pending))
        if strict and pending:
            diffs.append(
                Difference(
                    PENDING,
                    None,
                    partition,
                    done.get(partition, -1) + 1,
                    None,
                    f"{pending} offsets not processed yet (end offset {end})",
                )
            )
    diffs.sort(key=lambda d: (d.partition, d.offset or -1, d.kind, d.event_id or ""))
    report.tenants = list(tenants.values())
    return report


def _dlq_differences(
    rejections: Sequence[Rejection], dlq: Sequence[DlqEntry], done: Mapping[int, int]
) -> list[Difference]:
    have: dict[tuple[int, int], list[str]] = defaultdict(list)
    for entry in dlq:
        have[(entry.partition, entry.offset)].append(entry.reason)
    out: list[Difference] = []
    for rej in rejections:
        reasons = have.get((rej.partition, rej.offset), [])
        if rej.reason in reasons:
            reasons.remove(rej.reason)  # one DLQ record answers one rejection
            continue
        if rej.offset > done.get(rej.partition, -1):
            continue  # not reached yet: counted in the lag
        where = "" if rej.batch_index is None else f" (batch index {rej.batch_index})"
        out.append(
            Difference(
                DLQ_MISSING,
                None,
                rej.partition,
                rej.offset,
                None,
                f"rejected as {rej.reason}{where}, no DLQ record names this offset"
                + (f" with that reason (DLQ has {', '.join(reasons)})" if reasons else ""),
            )
        )
    return out


def _occurrence_at(occurrences: Sequence[Occurrence], row: ChRow) -> Occurrence | None:
    for occ in occurrences:
        if occ.partition == row.partition and occ.offset == row.offset:
            return occ
    return None


def _tokens(occ: Occurrence) -> tuple[int, int, int]:
    ev = occ.event
    return ev.input_tokens, ev.output_tokens, ev.cached_input_tokens


def _row_tokens(row: ChRow) -> tuple[int, int, int]:
    return row.input_tokens, row.output_tokens, row.cached_input_tokens
