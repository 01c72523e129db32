"""The C signature check of a slice (schemas/_sigcheck.c) against the Python one.

`Keyring.signers_of` answers, per record, what `Keyring.signer_of` answers:
the signer when the record carries a valid signature in `sign_record`'s
form, None otherwise. With the C module it checks the slice in one call;
these tests hold its answers equal to the Python check's on valid records,
forgeries, odd headers and keys that change, and hold that `make setup`
built it here (a silent fallback would cost signed drains ~11 % of their
throughput without failing a test).
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.schemas import signing
from tokenpulse.schemas.signing import Keyring, sign_record
from tokenpulse.streams.app import Runtime
from tokenpulse.streams.records import InRecord
from tokenpulse.streams.settings import WorkerSettings

LIMIT = 1 << 20


class _Name(str):
    """A header name of a str subclass: equal to the plain name, not the same type."""


def _rec(value: Any, headers: Any) -> InRecord:
    return InRecord("usage", 0, 0, None, value, headers)


def _signed(value: bytes, signer: str, kid: str, secret: bytes) -> tuple[tuple[str, bytes], ...]:
    return tuple(sign_record(value, tenant_id=signer, key_id=kid, secret=secret))


def _both(ring_keys: dict[str, dict[str, bytes]], recs: list[InRecord]) -> list[str | None]:
    """signers_of in C and in Python, each from a cold and a warm cache: all equal."""
    native, python = Keyring(ring_keys), Keyring(ring_keys, native=False)
    assert native.native
    assert not python.native
    expected = [
        native.signer_of(r.value, r.headers)
        if type(r.value) is bytes and len(r.value) <= LIMIT
        else None
        for r in recs
    ]
    for ring in (native, python):
        ring._resolved.clear()
        assert ring.signers_of(recs, LIMIT) == expected  # cold: keys resolved in Python
        assert ring.signers_of(recs, LIMIT) == expected  # warm: checked in C
    return expected


def test_make_setup_built_the_c_check() -> None:
    assert signing.NATIVE_CHECK, "schemas/_sigcheck.c was not built: run `make setup`"
    assert Keyring().native


def test_the_record_layout_the_c_check_reads() -> None:
    # _sigcheck.c reads a record's value and headers by position.
    assert InRecord._fields[4:6] == ("value", "headers")


@pytest.mark.parametrize("key_bytes", [0, 1, 32, 63, 64, 65, 200])
def test_keys_of_every_length_give_the_standard_hmac(key_bytes: int) -> None:
    secret = bytes(range(256))[:key_bytes]
    values = [b"", b"x", b"y" * 1000, os.urandom(333)]
    recs = [_rec(v, _signed(v, "acme", "k1", secret)) for v in values]
    assert _both({"acme": {"k1": secret}}, recs) == ["acme"] * len(values)


def test_forgeries_and_odd_headers_answer_as_the_python_check() -> None:
    secret, other = b"acme-secret", b"globex-secret"
    keys = {"acme": {"k1": secret, "k2": b"rotated"}, "globex": {"g1": other}}
    v = b'{"event_id":"e1"}'
    good = _signed(v, "acme", "k1", secret)
    sig = dict(good)["tp-sig"]
    hex_sig = sig.rpartition(b",sig=")[2]
    recs = [
        _rec(v, good),
        _rec(v, _signed(v, "acme", "k2", b"rotated")),  # the second key of a rotation
        _rec(v, list(good)),  # headers as a list
        _rec(v, (*good, ("tp-sig", b"v1,kid=k1,sig=" + b"0" * 64))),  # the first one counts
        _rec(v, (("tp-sig", b"v1,kid=k1,sig=" + b"0" * 64), *good)),  # ... this one fails
        _rec(v + b" ", good),  # the value changed
        _rec(v, _signed(v, "acme", "k1", b"wrong")),  # another secret
        _rec(v, _signed(v, "acme", "nokey", secret)),  # an unknown key id
        _rec(v, _signed(v, "initech", "k1", secret)),  # an unknown tenant
        _rec(v, _signed(v, "globex", "g1", other)),  # another tenant's valid signature
        _rec(v, (("tp-tenant", b"acme"), ("tp-sig", sig.upper()))),  # upper-case hex
        _rec(v, (("tp-tenant", b"acme"), ("tp-sig", sig[:-1]))),  # 63 digits
        _rec(v, (("tp-tenant", b"acme"), ("tp-sig", sig + b"0"))),  # 65 digits
        _rec(v, (("tp-tenant", b"acme"), ("tp-sig", b"v1,kid=k1," + hex_sig))),  # no sig=
        _rec(v, (("tp-tenant", b"acme"), ("tp-sig", b"v2,kid=k1,sig=" + hex_sig))),
        _rec(v, (("tp-tenant", b"acme"), ("tp-sig", sig.decode()))),  # str, not bytes
        _rec(v, (("tp-tenant", "acme"), ("tp-sig", sig))),
        _rec(v, (("tp-tenant", None), ("tp-sig", sig))),
        _rec(v, (("tp-tenant", b"acme"),)),  # no signature
        _rec(v, (("tp-sig", None), ("tp-tenant", None), *good)),  # a None value is skipped
        _rec(v, (("tp-sig", None), ("tp-tenant", b"acme"))),
        _rec(v, ((_Name("tp-sig"), sig), ("tp-tenant", b"acme"))),  # a str subclass
        _rec(v, ()),  # no headers
        _rec(v, ((b"tp-sig", sig), ("tp-tenant", b"acme"))),  # a bytes name
        _rec(v, (("TP-SIG", sig), ("tp-tenant", b"acme"))),  # names are exact
        _rec(None, good),  # a tombstone
        _rec(bytearray(v), good),  # not bytes
    ]
    assert _both(keys, recs) == [
        "acme", "acme", "acme", "acme", None, None, None, None, None, "globex",
        None, None, None, None, None, None, None, None, None, "acme", None, "acme", None,
        None, None, None, None,
    ]  # fmt: skip


def test_a_value_over_the_limit_is_not_hashed() -> None:
    ring = Keyring({"acme": {"k1": b"s"}})
    v = b"x" * 101
    recs = [_rec(v, _signed(v, "acme", "k1", b"s"))] * 2
    assert ring.signers_of(recs, 101) == ["acme", "acme"]
    assert ring.signers_of(recs, 100) == [None, None]


def test_a_key_removed_or_added_counts_from_the_next_slice() -> None:
    ring = Keyring({"acme": {"k1": b"s"}})
    v = b"{}"
    recs = [_rec(v, _signed(v, "acme", "k1", b"s")), _rec(v, _signed(v, "acme", "k2", b"t"))]
    assert ring.signers_of(recs, LIMIT) == ["acme", None]
    ring.remove("acme", "k1")
    ring.add("acme", "k2", b"t")
    assert ring.signers_of(recs, LIMIT) == [None, "acme"]
    assert ring.signers_of(recs, LIMIT) == [None, "acme"]


def test_a_cache_entry_without_c_states_is_left_to_python() -> None:
    # A ring switched to C after its cache was filled (entries with no states).
    ring = Keyring({"acme": {"k1": b"s"}}, native=False)
    v = b"{}"
    recs = [_rec(v, _signed(v, "acme", "k1", b"s")), _rec(v, _signed(v, "acme", "k1", b"x"))]
    assert ring.signers_of(recs, LIMIT) == ["acme", None]
    ring.native = True
    assert ring.signers_of(recs, LIMIT) == ["acme", None]


def test_a_record_that_is_not_a_record_tuple_is_refused() -> None:
    ring = Keyring({"acme": {"k1": b"s"}})
    with pytest.raises(TypeError, match="InRecord"):
        ring.signers_of([("usage", 0, 0)], LIMIT)


def test_an_empty_slice() -> None:
    assert Keyring().signers_of([], LIMIT) == []


KEYS = {
    "acme": {"k1": b"s1", "k2": b"s" * 100},
    "acme/research": {"k1": b"s2"},
    "globex": {"x": b""},
}
# (signer, key id, secret): the ring's own keys, and keys it does not hold.
_signing = st.sampled_from(
    [(t, kid, secret) for t, kids in KEYS.items() for kid, secret in kids.items()]
    + [("acme", "k1", b"s2"), ("initech", "k1", b"s1"), ("acme", "x", b"")]
)


@st.composite
def _records(draw: st.DrawFn) -> InRecord:
    value = draw(st.binary(max_size=400))
    headers = list(_signed(value, *draw(_signing)))
    if draw(st.booleans()):  # damage it
        kind = draw(st.sampled_from(["value", "sig", "drop", "swap", "extra"]))
        if kind == "value":
            value += b"!"
        elif kind == "sig":
            name, sig = headers[1]
            at = draw(st.integers(0, len(sig) - 1))
            headers[1] = (name, sig[:at] + bytes([sig[at] ^ 1]) + sig[at + 1 :])
        elif kind == "drop":
            headers.pop(draw(st.integers(0, 1)))
        elif kind == "swap":
            headers.reverse()
        else:
            name = draw(st.sampled_from(["tp-sig", "tp-tenant", "other"]))
            headers.insert(0, (name, draw(st.sampled_from([b"x", None]))))
    return _rec(value, tuple(headers))


@settings(max_examples=200, deadline=None)
@given(st.lists(_records(), max_size=30))
def test_c_and_python_agree_on_any_slice(recs: list[InRecord]) -> None:
    _both(KEYS, recs)


def _settings(tmp_path: Any, **env: str) -> WorkerSettings:
    ring = tmp_path / "keys.toml"
    ring.write_text('[tenants.acme]\nk1 = "s"\n')
    return WorkerSettings.from_env({"TOKENPULSE_KEYRING_FILE": str(ring), **env})


def _runtime(s: WorkerSettings) -> Runtime:
    return Runtime(settings=s, app=cast(Any, None), sink=cast(Any, None))


def test_the_setting_switches_the_c_check_off(tmp_path: Any) -> None:
    assert _settings(tmp_path).native_signature_check
    s = _settings(tmp_path, TOKENPULSE_NATIVE_SIGNATURE_CHECK="false")
    assert not s.native_signature_check
    ring = _runtime(s).keyring()
    assert ring is not None
    assert not ring.native


def test_a_worker_without_the_built_module_says_so(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(signing, "NATIVE_CHECK", False)
    with caplog.at_level(logging.WARNING, logger="tokenpulse.streams.app"):
        ring = _runtime(_settings(tmp_path)).keyring()
    assert ring is not None
    assert not ring.native
    assert "not built" in caplog.text
    assert "libssl-dev" in caplog.text
