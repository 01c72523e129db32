"""The Faust stream processors: validate, dedup, window, enforce quotas, sink.

Reading guide: `app` builds the Faust app from `WorkerSettings`; `agents`
holds the one usage agent; `processor` is the per-batch pipeline it drives
(decode -> verify -> dedup -> sink -> alerts -> commit); `dedup`, `windows`
and `quota_logic` are pure logic, tested without a broker.
"""
