"""Signed records through the processor: the per-record fast check, its verdicts, reloads.

`Keyring.verifies` / `signer_of` accept what `sign_record` writes with one
HMAC from cached key states; anything else goes to `verify_record`, which
names the reason. These tests pin that the fast check never accepts what
`verify_record` rejects, and that the processor's verdicts (accepted, DLQ
reason, batch index) are the same as checking every event the slow way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tokenpulse.errors import ConfigError, InvalidRecord
from tokenpulse.schemas import Keyring, decode_dlq_record, sign_record, usage
from tokenpulse.schemas.signing import _hmac_states, signature, verify_record
from tokenpulse.streams.processor import InRecord, UsageProcessor
from tokenpulse.streams.settings import WorkerSettings

from .test_streams_processor import MemorySink, Sent, _ev

T = "usage"
SECRET = b"acme-secret"


def _ring() -> Keyring:
    return Keyring({"acme": {"k1": SECRET}, "globex": {"g1": b"g"}})


def _signed(value: bytes, signer: str = "acme", kid: str = "k1", secret: bytes = SECRET) -> Any:
    return tuple(sign_record(value, tenant_id=signer, key_id=kid, secret=secret))


@pytest.mark.parametrize("key_bytes", [0, 1, 32, 63, 64, 65, 200])
def test_the_cached_hmac_states_give_the_standard_hmac(key_bytes: int) -> None:
    secret = bytes(range(256))[:key_bytes]
    inner, outer = _hmac_states(secret)
    for value in (b"", b"x", b"y" * 1000):
        i = inner.copy()
        i.update(value)
        o = outer.copy()
        o.update(i.digest())
        assert o.hexdigest() == hmac.new(secret, value, hashlib.sha256).hexdigest()
        assert o.hexdigest() == signature(value, secret)


def _verify_ok(value: bytes, headers: Any, tenant: str, ring: Keyring) -> bool:
    try:
        verify_record(value, headers, tenant_id=tenant, keyring=ring)
    except InvalidRecord:
        return False
    return True


def _as_acme(sig: bytes) -> Any:
    return (("tp-tenant", b"acme"), ("tp-sig", sig))


VALUE = _ev(1, "acme/research/agent-7")
GOOD = _signed(VALUE)
HEX = signature(VALUE, SECRET).encode()


@pytest.mark.parametrize(
    ("headers", "tenant", "fast", "slow"),
    [
        (GOOD, "acme/research/agent-7", True, True),
        (GOOD, "acme", True, True),
        (GOOD, "acmecorp", False, False),  # not a hierarchy boundary
        (_signed(VALUE, "globex", "g1", b"g"), "acme", False, False),  # another org's key
        (_signed(VALUE, "acme", "g1", b"g"), "acme", False, False),  # a key id acme lacks
        (_signed(VALUE, secret=b"guess"), "acme", False, False),
        (_signed(VALUE + b" "), "acme", False, False),  # bytes changed after signing
        ((("tp-tenant", b"acme"),), "acme", False, False),  # no signature
        ((("tp-tenant", b"acme"), ("tp-sig", None)), "acme", False, False),
        (_as_acme(b"v9,kid=k1,sig=" + HEX), "acme", False, False),
        (_as_acme(b"v1,kid=k1,sig=" + HEX.upper()), "acme", False, False),
        # Valid, but not sign_record's form: the fast check declines, the slow accepts.
        (_as_acme(b"v1,sig=" + HEX + b",kid=k1"), "acme", False, True),
        (_as_acme(b"v1,x=1,kid=k1,sig=" + HEX), "acme", False, True),
        # The first header of a name counts in both.
        ((*GOOD, ("tp-sig", b"v1,kid=k1,sig=00")), "acme", True, True),
        ((("tp-sig", b"v1,kid=k1,sig=00"), *GOOD), "acme", False, False),
        ((("tp-tenant", b"globex"), *GOOD), "acme", False, False),
    ],
)
def test_the_fast_check_never_accepts_what_verify_record_rejects(
    headers: Any, tenant: str, fast: bool, slow: bool
) -> None:
    ring = _ring()
    assert ring.verifies(VALUE, headers, tenant) is fast
    assert _verify_ok(VALUE, headers, tenant, ring) is slow
    assert ring.verifies(VALUE, headers, tenant) is fast  # cached the second time


def test_a_removed_or_replaced_key_stops_verifying_at_once() -> None:
    ring = _ring()
    assert ring.verifies(VALUE, GOOD, "acme")
    ring.add("acme", "k1", b"rotated")
    assert not ring.verifies(VALUE, GOOD, "acme")
    assert ring.verifies(VALUE, _signed(VALUE, secret=b"rotated"), "acme")
    ring.remove("acme", "k1")
    assert not ring.verifies(VALUE, _signed(VALUE, secret=b"rotated"), "acme")


def _processor(sink: MemorySink, sent: Sent) -> UsageProcessor:
    async def commit(topic: str, offsets: Mapping[int, int]) -> bool:
        return True

    return UsageProcessor(
        sink=sink, producer=sent, committer=commit, dlq_topic="dlq", keyring=_ring(),
        sink_retry_max_s=0.01,
    )  # fmt: skip


def _rec(offset: int, value: bytes, headers: Any) -> InRecord:
    return InRecord(T, 0, offset, b"acme", value, tuple(headers))


def _dlq(sent: Sent) -> list[tuple[str, Any]]:
    out = []
    for topic, _, value in sent.messages:
        if topic == "dlq":
            rec = decode_dlq_record(value)
            out.append((rec.reason, rec.batch_index))
    return sorted(out, key=repr)


async def test_signed_records_accepted_and_every_bad_one_parked_with_its_reason() -> None:
    values = [_ev(i, f"acme/team/agent-{i}") for i in range(6)]
    records = [
        _rec(0, values[0], _signed(values[0])),
        _rec(1, values[1], _signed(values[1], secret=b"guess")),  # forged
        _rec(2, values[2], ()),  # unsigned
        _rec(3, values[3], _signed(values[3], "globex", "g1", b"g")),  # another org's key
        # valid in a form only verify_record reads: accepted the slow way
        _rec(4, values[4], _as_acme(b"v1,sig=%s,kid=k1" % signature(values[4], SECRET).encode())),
        _rec(5, values[5], _signed(values[5], "acme/team")),  # acme/team has no key
    ]  # fmt: skip
    sink, sent = MemorySink(), Sent()
    p = _processor(sink, sent)
    await p.process(records)
    assert sorted(r.event.event_id for r in sink.rows) == ["e0", "e4"]
    assert [r for r, _ in _dlq(sent)] == [
        "bad_signature", "bad_signature", "bad_signature", "missing_signature",
    ]  # fmt: skip
    assert p.counters.records == 6
    assert p.counters.rejected == 4


async def test_an_envelope_is_hashed_once_and_judged_per_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = Keyring.signer_of

    def counting(self: Keyring, value: bytes, headers: Any) -> str | None:
        calls.append(len(value))
        return real(self, value, headers)

    monkeypatch.setattr(Keyring, "signer_of", counting)
    envelope = usage.join_batch(
        [_ev(1, "acme/a/x"), _ev(2, "acme/b/y"), _ev(3, "globex/z"), _ev(4, "acme/c/z")]
    )
    forged = usage.join_batch([_ev(5, "acme/a/x"), _ev(6, "acme/b/y")])
    sink, sent = MemorySink(), Sent()
    p = _processor(sink, sent)
    await p.process(
        [_rec(0, envelope, _signed(envelope)), _rec(1, forged, _signed(forged, secret=b"no"))]
    )
    assert sorted(r.event.event_id for r in sink.rows) == ["e1", "e2", "e4"]
    # acme's key may not speak for globex: that event alone is parked, by its index;
    # the forged envelope's events each by theirs.
    assert _dlq(sent) == [("bad_signature", 0), ("bad_signature", 1), ("bad_signature", 2)]
    assert calls == [len(envelope), len(forged)]  # one HMAC a record


async def test_a_failing_slice_check_leaves_each_record_to_verify_record(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Keyring, records: Any, max_bytes: int) -> list[str | None]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Keyring, "signers_of", broken)
    good, forged = _ev(1, "acme/a"), _ev(2, "acme/b")
    sink, sent = MemorySink(), Sent()
    with caplog.at_level(logging.ERROR, logger="tokenpulse.streams.processor"):
        await _processor(sink, sent).process(
            [_rec(0, good, _signed(good)), _rec(1, forged, _signed(forged, secret=b"no"))]
        )
    assert [r.event.event_id for r in sink.rows] == ["e1"]
    assert _dlq(sent) == [("bad_signature", 0)]  # as without the failure
    assert "record by record" in caplog.text


# -- the keyring file, read again while the worker runs ---------------------------------------


def _write(path: Path, keys: dict[str, dict[str, str]]) -> None:
    # Rename into place, as docs/trust-model.md asks; a fresh inode each time.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tenants": keys}))
    os.replace(tmp, path)


def test_a_changed_keyring_file_is_applied_once_it_stays_the_same_for_one_look(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    _write(path, {"acme": {"k1": "acme-secret"}})
    ring = Keyring.from_file(path)
    assert ring.verifies(VALUE, GOOD, "acme")
    assert ring.key_count == 1
    assert not ring.reload()  # unchanged
    rotated = _signed(VALUE, kid="k2", secret=b"new")
    _write(path, {"acme": {"k1": "acme-secret", "k2": "new"}})
    assert not ring.reload()  # seen changing: not read yet (it may be mid-write)
    assert not ring.verifies(VALUE, rotated, "acme")
    assert ring.reload()  # the same at the next look: applied
    assert ring.verifies(VALUE, rotated, "acme")
    assert ring.verifies(VALUE, GOOD, "acme")
    assert ring.key_count == 2
    assert not ring.reload()
    _write(path, {"acme": {"k2": "new"}})  # the old key retired
    assert not ring.reload()
    assert ring.reload()
    assert not ring.verifies(VALUE, GOOD, "acme")  # the cached key states went with it
    assert ring.verifies(VALUE, rotated, "acme")


def test_an_edit_in_place_that_keeps_size_and_mtime_is_still_applied(tmp_path: Path) -> None:
    # A filesystem with a coarse mtime (a second, or two on FAT) shows an
    # edit within the same tick, same size, as no change at all: the
    # version of the file is its content.
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"tenants": {"acme": {"k1": "acme-secret"}}}))
    before = path.stat()
    ring = Keyring.from_file(path)
    with path.open("r+") as f:  # the same inode, the same length
        f.write(json.dumps({"tenants": {"acme": {"k1": "acme-secreT"}}}))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert not ring.reload()  # seen changing
    assert ring.reload()
    assert not ring.verifies(VALUE, GOOD, "acme")
    assert ring.verifies(VALUE, _signed(VALUE, secret=b"acme-secreT"), "acme")


def test_a_keyring_file_that_does_not_load_keeps_the_keys_in_use_and_is_reported_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    _write(path, {"acme": {"k1": "acme-secret"}})
    ring = Keyring.from_file(path)
    path.with_suffix(".tmp").write_text('{"tenants": {"acme": ')  # truncated
    os.replace(path.with_suffix(".tmp"), path)
    assert not ring.reload()
    with pytest.raises(ConfigError, match="keeping the keys in use") as info:
        ring.reload()
    assert "acme-secret" not in str(info.value)
    assert not ring.reload()  # the same broken file: said once
    assert ring.verifies(VALUE, GOOD, "acme")
    path.unlink()
    assert not ring.reload()
    with pytest.raises(ConfigError, match="is gone"):
        ring.reload()
    assert not ring.reload()
    assert ring.verifies(VALUE, GOOD, "acme")
    _write(path, {"acme": {"k1": "acme-secret"}, "globex": {"g1": "g"}})
    assert not ring.reload()
    assert ring.reload()
    assert ring.verifies(VALUE, _signed(VALUE, "globex", "g1", b"g"), "globex")


def test_a_keyring_built_in_code_never_reloads() -> None:
    ring = _ring()
    assert ring.path is None
    assert not ring.reload()


def test_the_reload_setting() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "CLICKHOUSE_URL": "http://h:8123/db"}
    assert WorkerSettings.from_env(env).keyring_reload_s == 10.0
    s = WorkerSettings.from_env({**env, "TOKENPULSE_KEYRING_RELOAD_S": "0"})
    assert s.keyring_reload_s == 0.0
    with pytest.raises(ConfigError, match="TOKENPULSE_KEYRING_RELOAD_S must be within"):
        WorkerSettings.from_env({**env, "TOKENPULSE_KEYRING_RELOAD_S": "-1"})
