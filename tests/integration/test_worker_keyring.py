"""A signing key rotated while the worker runs: no restart, no record judged by the wrong keys.

On the real services, one verifying worker with a keyring file that it
looks at every second. A record signed with a key the file does not hold
yet goes to the DLQ; once the file (replaced by a rename) holds the new
key, the worker applies it and counts the records signed with it; once the
old key is retired from the file, records signed with it go to the DLQ.
The worker's metrics count both changes applied and the key in use. Then
`tokenpulse dlq replay` sends the parked records back as they were: the one
parked because its key came late is counted, once however often it is
replayed; the one signed with the retired key is parked again, and its
copy names where it was first parked from, so the next replay sends it once.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_worker import (
    Env,
    Worker,
    env,  # noqa: F401 - the fixture, reused
    event,
    produce,
    read_all,
    wait_until,
    workers,  # noqa: F401 - the fixture, reused
)
from tests.integration.test_worker_observability import _free_port, scrape
from tokenpulse.dlq import HEADER_REPLAY_OF
from tokenpulse.schemas import decode_dlq_record, sign_record
from tokenpulse.schemas.usage import encode_usage_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OLD, NEW = b"old-secret-0123456789abcdef", b"new-secret-0123456789abcdef"


def _keyring(path: Path, **keys: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    acme = {kid: f"hex:{secret.hex()}" for kid, secret in keys.items()}
    tmp.write_text(json.dumps({"tenants": {"acme": acme}}))
    os.replace(tmp, path)


def _signed(i: int, kid: str, secret: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    value = encode_usage_event(event("acme/agent-1", i, event_id=f"{kid}-{i}"))
    return b"acme/agent-1", value, sign_record(value, tenant_id="acme", key_id=kid, secret=secret)


def _cli(stack: Env, *argv: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "tokenpulse", *argv, "--format", "json"],
        env=stack.worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_rotated_key_is_applied_without_a_restart(
    env: Env,  # noqa: F811 - the imported fixture
    workers: list[Worker],  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    path = tmp_path / "keyring.json"
    _keyring(path, k1=OLD)
    port = _free_port()
    w = Worker(
        env, "w1", TOKENPULSE_VERIFY_SIGNATURES="true", TOKENPULSE_KEYRING_FILE=str(path),
        TOKENPULSE_KEYRING_RELOAD_S="1", TOKENPULSE_LOGLEVEL="info",
        TOKENPULSE_METRICS_PORT=str(port),
    )  # fmt: skip
    workers.append(w)

    def reloads() -> int:
        return w.log.read_text(errors="replace").count("reloaded")

    produce(env.bootstrap, env.topics.usage, [_signed(0, "k1", OLD), _signed(0, "k2", NEW)])
    wait_until(lambda: env.rows() == 1, 120, "the record signed with the old key", workers)
    dlq = read_all(env.bootstrap, env.topics.dlq, 1)
    assert [decode_dlq_record(m.value).reason for m in dlq] == ["bad_signature"]

    _keyring(path, k1=OLD, k2=NEW)  # both keys while the producers switch
    wait_until(lambda: reloads() == 1, 60, "the keyring with the new key applied", workers)
    produce(env.bootstrap, env.topics.usage, [_signed(1, "k1", OLD), _signed(1, "k2", NEW)])
    wait_until(lambda: env.rows() == 3, 60, "both keys' records counted", workers)

    _keyring(path, k2=NEW)  # the old key retired
    wait_until(lambda: reloads() == 2, 60, "the keyring without the old key applied", workers)
    produce(env.bootstrap, env.topics.usage, [_signed(2, "k1", OLD), _signed(2, "k2", NEW)])
    wait_until(lambda: env.rows() == 4, 60, "the new key's record counted", workers)
    dlq = read_all(env.bootstrap, env.topics.dlq, 2)
    parked = [decode_dlq_record(m.value) for m in dlq]
    assert {d.reason for d in parked} == {"bad_signature"}
    assert sorted(json.loads(d.original())["event_id"] for d in parked) == ["k1-2", "k2-0"]
    ids = env.client.query(f"SELECT event_id FROM {env.database}.usage_events").result_rows
    assert sorted(r[0] for r in ids) == ["k1-0", "k1-1", "k2-1", "k2-2"]
    assert "new-secret" not in w.log.read_text(errors="replace")  # secrets never logged
    metrics = scrape(port)
    assert metrics["tokenpulse_keyring_keys"] == 1
    assert metrics['tokenpulse_keyring_reloads_total{result="applied"}'] == 2
    assert metrics['tokenpulse_keyring_reloads_total{result="failed"}'] == 0

    # Both parked records sent back as they were: k2-0 now verifies (the
    # keyring holds k2) and is counted; k1-2 (k1 retired) is parked again.
    summary = _cli(env, "dlq", "summary", "--since", "10m")
    assert summary["by_reason"] == {"bad_signature": {"records": 2, "origins": 2}}
    replay = ["dlq", "replay", "--since", "10m", "--reason", "bad_signature"]
    assert _cli(env, *replay, "--dry-run")["to_send"] == 2
    sent = _cli(env, *replay)
    assert (sent["to_send"], sent["sent"]) == (2, 2)
    wait_until(lambda: env.rows() == 5, 60, "the record whose key came late counted", workers)
    dlq = read_all(env.bootstrap, env.topics.dlq, 3)
    assert len(dlq) == 3  # k1-2 parked again, from the replayed copy
    first, again = (
        decode_dlq_record(m.value)
        for m in dlq
        if json.loads(decode_dlq_record(m.value).original())["event_id"] == "k1-2"
    )
    assert again.offset > first.offset
    assert (HEADER_REPLAY_OF, f"{env.topics.usage}:{first.partition}:{first.offset}") in [
        (k, base64.b64decode(v).decode()) for k, v in again.headers
    ]
    # Still two originals: k1-2 once (its copy names it), k2-0 now a duplicate.
    summary = _cli(env, "dlq", "summary", "--since", "10m")
    assert summary["by_reason"] == {"bad_signature": {"records": 3, "origins": 2}}
    assert _cli(env, *replay)["sent"] == 2
    wait_until(lambda: scrape(port)["tokenpulse_dedup_hits_total"] == 1, 60, "dedup", workers)
    assert len(read_all(env.bootstrap, env.topics.dlq, 4)) == 4  # k1-2 once more
    ids = env.client.query(f"SELECT event_id FROM {env.database}.usage_events").result_rows
    assert sorted(r[0] for r in ids) == ["k1-0", "k1-1", "k2-0", "k2-1", "k2-2"]
    assert w.terminate() == 0
