"""Properties of the signed-record fast check: it never accepts what verify_record rejects.

`Keyring.verifies` is the worker's per-record check; `verify_record` is the
reference that names reasons. For headers built from valid signatures and
mutated (other signers, key ids, versions, extra fields, case, truncation,
duplicates, arbitrary bytes), and for tenants in and around the signer's
subtree, the fast check may decline what the reference accepts, never the
other way round; on `sign_record`'s own form the two agree exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.errors import InvalidRecord
from tokenpulse.schemas import Keyring, sign_record, verify_record

PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
RING = {"acme": {"k1": b"acme-1", "k2": b"acme-2"}, "acme/eu": {"e1": b"eu"}, "globex": {"g1": b""}}
SIGNERS = ["acme", "acme/eu", "globex", "acmecorp", "", "acme/"]
KIDS = ["k1", "k2", "e1", "g1", "zz", ""]
TENANTS = ["acme", "acme/eu", "acme/eu/agent-1", "acme/us", "acmecorp", "globex", "globex/x", ""]


def _reference(value: bytes, headers: list[tuple[str, bytes | None]], tenant: str) -> bool:
    try:
        verify_record(value, headers, tenant_id=tenant, keyring=Keyring(RING))
    except InvalidRecord:
        return False
    return True


def _secret(signer: str, kid: str) -> bytes:
    return RING.get(signer, {}).get(kid, b"guess")


_mutations: st.SearchStrategy[Callable[[bytes], bytes]] = st.sampled_from(
    [
        *[lambda sig: sig] * 4,  # unchanged half the time: the accepting paths get exercised
        lambda sig: sig.upper(),
        lambda sig: sig.replace(b"v1,", b"v2,"),
        lambda sig: sig.replace(b",sig=", b",x=1,sig="),
        lambda sig: sig + b",sig=00",
        lambda sig: sig[:-1],
        lambda sig: sig.replace(b"kid=", b"kid=k1,kid="),
        lambda sig: b"v1,sig=" + sig.rpartition(b",sig=")[2] + b"," + sig.split(b",")[1],
    ]
)


@given(
    value=st.binary(max_size=300),
    signer=st.sampled_from(SIGNERS),
    kid=st.sampled_from(KIDS),
    suffix=st.sampled_from(["", "/a", "/a/b", "corp", "/", "x"]),
    mutate=_mutations,
    claimed=st.none() | st.sampled_from(SIGNERS),
    order=st.permutations([0, 1, 2]),
    extra=st.none() | st.binary(max_size=80),
)
@PROFILE
def test_the_fast_check_implies_the_reference(
    value: bytes,
    signer: str,
    kid: str,
    suffix: str,
    mutate: Callable[[bytes], bytes],
    claimed: str | None,
    order: list[int],
    extra: bytes | None,
) -> None:
    signed = dict(
        sign_record(value, tenant_id=signer or "x", key_id=kid or "k", secret=_secret(signer, kid))
    )
    sig = mutate(signed["tp-sig"])  # type: ignore[operator]
    who = (claimed if claimed is not None else signer).encode()
    tenant = who.decode() + suffix  # in, at and just outside the claimed subtree
    pool: list[tuple[str, bytes | None]] = [("tp-tenant", who), ("tp-sig", sig), ("tp-sig", extra)]
    headers = [pool[i] for i in order]
    fast = Keyring(RING).verifies(value, headers, tenant)
    if fast:
        assert _reference(value, headers, tenant), (headers, tenant)


@given(
    value=st.binary(max_size=300),
    signer=st.sampled_from([s for s in SIGNERS if s]),
    kid=st.sampled_from([k for k in KIDS if k]),
    tenant=st.sampled_from(TENANTS),
)
@PROFILE
def test_on_sign_records_own_form_the_two_agree(
    value: bytes, signer: str, kid: str, tenant: str
) -> None:
    headers = sign_record(value, tenant_id=signer, key_id=kid, secret=_secret(signer, kid))
    ring = Keyring(RING)
    assert ring.verifies(value, headers, tenant) is _reference(value, list(headers), tenant)
    assert ring.verifies(value, headers, tenant) is _reference(
        value, list(headers), tenant
    )  # cached
