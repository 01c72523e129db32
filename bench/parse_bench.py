"""The worker's fetch parse: aiokafka record batches to InRecords, us per record.

Runs aiokafka's fetch parser as the worker installs it (`HandOverRecords`)
over 4,000 fleet-sized records (8 v2 batches of 500, about 400 B each, lz4
and uncompressed; unsigned, or with the two signature headers a signed
record carries), taken 2,000 at a time as Faust's getmany takes them. No
broker: this is the parse alone, which runs inside getmany on Faust's
consumer thread. The fetch as the worker's fetcher builds it (KeptFetch:
the records read by streams/_fetch.c when it is built) and as aiokafka's
MemoryRecords (aiokafka reads each record). Prints one row: the median of
60 parses of each, us per record, and the ratio.

    .venv/bin/python bench/parse_bench.py
    bench/ab.sh 441c7cd 3 parse_bench.py        # against an older commit
"""

from __future__ import annotations

import statistics
import struct
import sys
import time
from types import SimpleNamespace

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from tokenpulse.streams.hand_over import NATIVE_PARSE, HandOver, KeptFetch, install_hand_over

RECORDS_PER_BATCH = 500
BATCHES = 8
POLL_RECORDS = 2000  # Faust's max_poll_records: the worker's batch size
RUNS = 60
CODECS = {"none": 0, "lz4": 3}


# A signed record's headers (schemas/signing.py: sign_record).
SIGNED_HEADERS = [("tp-tenant", b"acme"), ("tp-sig", b"v1,kid=acme-1,sig=" + b"ab" * 32)]


def _batch(base_offset: int, compression: int, headers: list[tuple[str, bytes]]) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 22,
    )
    for delta in range(RECORDS_PER_BATCH):
        value = b'{"event_id":"%d","pad":"' % delta + b"y" * 350 + b'"}'
        key = b"acme/agent-%d" % delta
        builder.append(delta, timestamp=1_700_000_000_000, key=key, value=value, headers=headers)
    buf = builder.build()
    struct.pack_into(">q", buf, 0, base_offset)  # the broker assigns the base offset
    return bytes(buf)


def parse_us_per_record(compression: int, headers: list[tuple[str, bytes]], fetch: type) -> float:
    install_hand_over()
    data = b"".join(_batch(i * RECORDS_PER_BATCH, compression, headers) for i in range(BATCHES))
    hand_over = HandOver({"usage": object()}, SimpleNamespace(consumer_generation_id=1))
    total = BATCHES * RECORDS_PER_BATCH

    def parse() -> int:
        records = aiokafka_fetcher.PartitionRecords(
            TopicPartition("usage", 0), fetch(data), [], 0, None, hand_over, True, 0
        )
        n = 0
        while True:  # FetchResult.getall(max_records): stops and resumes
            taken = 0
            for _ in records:
                taken += 1
                if taken == POLL_RECORDS:
                    break
            n += taken
            if taken < POLL_RECORDS:
                return n

    if parse() != total:
        raise SystemExit("the parser did not return every record")
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        parse()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) / total * 1e6


def main() -> int:
    if not NATIVE_PARSE:
        raise SystemExit("streams/_fetch.c is not built (make setup): nothing to compare")
    cells = []
    for signed in (False, True):
        headers = SIGNED_HEADERS if signed else []
        for name, code in CODECS.items():
            native = parse_us_per_record(code, headers, KeptFetch)
            theirs = parse_us_per_record(code, headers, MemoryRecords)
            label = f"{name}{', signed' if signed else ''}"
            cells.append((label, f"{native:.3f} / {theirs:.3f} ({native / theirs:.2f}x)"))
    print("| " + " | ".join(f"{label}: C / aiokafka, us/record" for label, _ in cells) + " |")
    print("| " + " | ".join("---" for _ in cells) + " |")
    print("| " + " | ".join(value for _, value in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
