"""Where accepted usage becomes durable: the sink interface and the ClickHouse sink.

Reading guide: `base` is the contract the stream processors use
(`UsageSink`, `SinkBatch`); `clickhouse` implements it; `buffer` batches
per partition with backpressure; `migrations` owns the schema; `billing`
and `capacity` read it back for invoices, chargeback and GPU planning.
Names are imported from their modules (e.g. `tokenpulse.sinks.clickhouse`),
so importing this package pulls in no client library.
"""
