"""Signing: round trip, rotation, forgery, hierarchy, keyring files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenpulse.errors import ConfigError, InvalidRecord
from tokenpulse.schemas import Keyring, sign_record, verify_record
from tokenpulse.schemas.signing import parse_secret

VALUE = b'{"event_id":"e1","tenant_id":"acme/research/agent-7"}'


def _ring() -> Keyring:
    return Keyring({"acme": {"k1": b"old-secret", "k2": b"new-secret"}, "globex": {"g1": b"g"}})


def test_round_trip_for_own_and_descendant_tenants() -> None:
    headers = sign_record(VALUE, tenant_id="acme", key_id="k1", secret=b"old-secret")
    assert dict(headers)["tp-tenant"] == b"acme"
    assert dict(headers)["tp-sig"].startswith(b"v1,kid=k1,sig=")
    verify_record(VALUE, headers, tenant_id="acme", keyring=_ring())
    verify_record(VALUE, headers, tenant_id="acme/research/agent-7", keyring=_ring())
    # Faust hands headers over as a mapping of str values sometimes.
    as_map = {k: v.decode() for k, v in headers}
    verify_record(VALUE, as_map, tenant_id="acme/research", keyring=_ring())


def test_rotation_both_keys_verify_until_removed() -> None:
    ring = _ring()
    old = sign_record(VALUE, tenant_id="acme", key_id="k1", secret=b"old-secret")
    new = sign_record(VALUE, tenant_id="acme", key_id="k2", secret=b"new-secret")
    verify_record(VALUE, old, tenant_id="acme", keyring=ring)
    verify_record(VALUE, new, tenant_id="acme", keyring=ring)
    ring.remove("acme", "k1")
    with pytest.raises(InvalidRecord, match="unknown key id"):
        verify_record(VALUE, old, tenant_id="acme", keyring=ring)
    verify_record(VALUE, new, tenant_id="acme", keyring=ring)


@pytest.mark.parametrize(
    ("value", "headers", "tenant"),
    [
        # the bytes were changed after signing
        (
            VALUE.replace(b"e1", b"e2"),
            sign_record(VALUE, tenant_id="acme", key_id="k1", secret=b"old-secret"),
            "acme",
        ),
        # signed with a guessed secret
        (VALUE, sign_record(VALUE, tenant_id="acme", key_id="k1", secret=b"guess"), "acme"),
        # globex's valid key speaking for acme
        (VALUE, sign_record(VALUE, tenant_id="globex", key_id="g1", secret=b"g"), "acme"),
        # a header claiming acme with globex's key id
        (VALUE, sign_record(VALUE, tenant_id="acme", key_id="g1", secret=b"g"), "acme"),
        # a child's key may not speak for its parent: acme/research has no keys here
        (
            VALUE,
            sign_record(VALUE, tenant_id="acme/research", key_id="k1", secret=b"old-secret"),
            "acme",
        ),
        # prefix that is not a hierarchy boundary
        (
            VALUE,
            sign_record(VALUE, tenant_id="acme", key_id="k1", secret=b"old-secret"),
            "acmecorp",
        ),
        # unknown signature version
        (VALUE, [("tp-tenant", b"acme"), ("tp-sig", b"v9,kid=k1,sig=00")], "acme"),
        (VALUE, [("tp-tenant", b"acme"), ("tp-sig", b"garbage")], "acme"),
    ],
)
def test_forgeries_are_bad_signature(
    value: bytes, headers: list[tuple[str, bytes]], tenant: str
) -> None:
    with pytest.raises(InvalidRecord) as info:
        verify_record(value, headers, tenant_id=tenant, keyring=_ring())
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "headers", [[], [("tp-tenant", b"acme")], [("tp-sig", b"v1,kid=k1,sig=00")]]
)
def test_missing_headers(headers: list[tuple[str, bytes]]) -> None:
    with pytest.raises(InvalidRecord) as info:
        verify_record(VALUE, headers, tenant_id="acme", keyring=_ring())
    assert info.value.reason == "missing_signature"


def test_keyring_files(tmp_path: Path) -> None:
    toml = tmp_path / "keys.toml"
    toml.write_text(
        '[tenants.acme]\nk1 = "hex:6f6c64"\nk2 = "base64:bmV3"\n[tenants."acme/x"]\nx = "plain"\n'
    )
    ring = Keyring.from_file(toml)
    assert ring.secret("acme", "k1") == b"old"
    assert ring.secret("acme", "k2") == b"new"
    assert ring.secret("acme/x", "x") == b"plain"
    assert "old" not in repr(ring)
    js = tmp_path / "keys.json"
    js.write_text(json.dumps({"tenants": {"acme": {"k1": "hex:6f6c64"}}}))
    assert Keyring.from_file(js).secret("acme", "k1") == b"old"
    js.write_text("[]")
    with pytest.raises(ConfigError):
        Keyring.from_file(js)
    with pytest.raises(ConfigError):
        Keyring.from_file(tmp_path / "absent.json")
    with pytest.raises(ConfigError):
        parse_secret("hex:zz")


def test_key_id_with_separator_rejected() -> None:
    with pytest.raises(ConfigError):
        sign_record(VALUE, tenant_id="acme", key_id="a,b", secret=b"s")
