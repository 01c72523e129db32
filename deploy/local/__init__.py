"""The local dev stack: real Kafka and the real ClickHouse engine, no Docker.

kafka.py resolves Kafka's jars from Maven Central and runs one KRaft node;
clickhouse.py launches the embedded ClickHouse HTTP endpoint; stack.py ties
both together for `tokenpulse dev up|down|status` and the test fixtures.
Imported as `tokenpulse.local`; nothing below the CLI imports it.
"""
