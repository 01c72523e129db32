"""Reconciliation: does ClickHouse (and the DLQ) hold exactly what Kafka says it should?

What an operator runs when a number looks wrong (`tokenpulse reconcile`):
read the usage topic for a time range, apply the worker's acceptance rules
(expect), read usage_events for the same offsets and the DLQ (sources), and
name every difference per partition, tenant and event id (compare).
"""

from tokenpulse.reconcile.compare import (
    DLQ_MISSING,
    DUPLICATE,
    EXTRA,
    MISSING,
    PENDING,
    TOKEN_MISMATCH,
    ChRow,
    Difference,
    DlqEntry,
    PartitionLag,
    PartitionTenant,
    Report,
    Tally,
    compare,
)
from tokenpulse.reconcile.expect import Expected, KafkaRecord, build_expected
from tokenpulse.reconcile.run import ReconcileOptions, dlq_topic_for, reconcile

__all__ = [
    "DLQ_MISSING",
    "DUPLICATE",
    "EXTRA",
    "MISSING",
    "PENDING",
    "TOKEN_MISMATCH",
    "ChRow",
    "Difference",
    "DlqEntry",
    "Expected",
    "KafkaRecord",
    "PartitionLag",
    "PartitionTenant",
    "ReconcileOptions",
    "Report",
    "Tally",
    "build_expected",
    "compare",
    "dlq_topic_for",
    "reconcile",
]
