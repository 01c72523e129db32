"""Tenant authenticity: HMAC-SHA256 signatures on usage records.

A producer holding tenant T's secret signs the exact record value bytes and
sends two Kafka headers:

    tp-tenant: T                                  (the signing principal)
    tp-sig:    v1,kid=<key id>,sig=<64 hex chars>

The processor accepts an event for tenant E only if the signature verifies
with one of T's keys AND E is T or a descendant of T (acme's key may sign for
acme/research/agent-7; acme/research's key may not sign for acme). A keyring
holds several keys per tenant so a secret can be rotated with two active keys.
See docs/trust-model.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tokenpulse.errors import ConfigError, InvalidRecord
from tokenpulse.schemas._reasons import RejectReason
from tokenpulse.schemas.usage import tenant_within

if TYPE_CHECKING:
    from hashlib import _Hash

try:  # the C check of a whole slice (schemas/_sigcheck.c), built by `make setup`
    from tokenpulse.schemas import _sigcheck
except ImportError:  # not built (no C compiler or OpenSSL headers): Python checks
    _sigcheck = None  # type: ignore[assignment]

NATIVE_CHECK: Final = _sigcheck is not None

HEADER_SIGNATURE: Final = "tp-sig"
HEADER_TENANT: Final = "tp-tenant"
SIGNATURE_VERSION: Final = "v1"

Headers = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


_BLOCK_BYTES: Final = 64  # SHA-256's block

# A cached key: its HMAC states for hashlib, the signer's id, and the same
# states for the C check (None without it). The C module reads items 2 and 3.
_Resolved = tuple["_Hash", "_Hash", str, bytes | None]
# What the C check answers for a record it leaves to `signer_of`.
_UNKNOWN: Final = object()


def _hmac_states(secret: bytes) -> tuple[_Hash, _Hash]:
    """SHA-256 after the inner and the outer padded key (RFC 2104)."""
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK_BYTES else secret
    key = key.ljust(_BLOCK_BYTES, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def signature(value: bytes, secret: bytes) -> str:
    return hmac.new(secret, value, hashlib.sha256).hexdigest()


def sign_record(
    value: bytes, *, tenant_id: str, key_id: str, secret: bytes
) -> list[tuple[str, bytes]]:
    """The Kafka headers that authenticate `value` as sent by tenant_id's key."""
    if "," in key_id or "=" in key_id:
        raise ConfigError(f"signing key id {key_id!r} must not contain ',' or '='")
    sig = f"{SIGNATURE_VERSION},kid={key_id},sig={signature(value, secret)}"
    return [(HEADER_TENANT, tenant_id.encode()), (HEADER_SIGNATURE, sig.encode())]


class Keyring:
    """tenant_id -> {key_id: secret}. Every listed key verifies (rotation).

    File format (JSON or TOML, by extension), secrets as "hex:...",
    "base64:..." or plain text:

        [tenants.acme]
        "2026-11" = "hex:8f1c..."
        "2026-12" = "hex:77ab..."
    """

    def __init__(
        self, keys: Mapping[str, Mapping[str, bytes]] | None = None, *, native: bool = True
    ) -> None:
        # `signers_of` checks in C when the module was built and this is
        # True (TOKENPULSE_NATIVE_SIGNATURE_CHECK); the answers are the same.
        self.native = native and NATIVE_CHECK
        self._keys: dict[str, dict[str, bytes]] = {
            tenant: dict(kids) for tenant, kids in (keys or {}).items()
        }
        # (tp-tenant bytes, tp-sig bytes before ",sig=") -> the key's HMAC
        # states and the signer: what `signer_of` would otherwise parse and
        # key for every record. Only keys the ring holds are cached (bounded
        # by the ring); add(), remove() and reload() clear it.
        self._resolved: dict[tuple[bytes, bytes], _Resolved] = {}
        # The file `from_file` read (None: built in code), and what `reload`
        # knows of it: the stamp loaded, the one seen last, the one that failed.
        self.path: Path | None = None
        self._loaded: _Stamp | None = None
        self._seen: _Stamp | None = None
        self._failed: _Stamp | None = None

    def __repr__(self) -> str:  # never the secrets
        return f"Keyring(tenants={sorted(self._keys)})"

    def add(self, tenant_id: str, key_id: str, secret: bytes) -> None:
        self._keys.setdefault(tenant_id, {})[key_id] = secret
        self._resolved.clear()

    def remove(self, tenant_id: str, key_id: str) -> None:
        self._keys.get(tenant_id, {}).pop(key_id, None)
        self._resolved.clear()

    def secret(self, tenant_id: str, key_id: str) -> bytes | None:
        return self._keys.get(tenant_id, {}).get(key_id)

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._keys

    @property
    def key_count(self) -> int:
        return sum(map(len, self._keys.values()))

    def reload(self) -> bool:
        """Take the keys of the keyring file again if it changed; True when they were replaced.

        For a worker that looks every few seconds (TOKENPULSE_KEYRING_RELOAD_S):
        a change is read at the first look that finds the file as it was at
        the look before, so a file caught while being written is not read.
        A look reads and hashes the file: a change is a change of content.
        Raises ConfigError, once per version of the file, when the changed
        file does not load or is gone; the keys in use stay until a version
        that loads. A ring not read from a file never changes.
        """
        if self.path is None:
            return False
        stamp, raw = _look(self.path)
        seen, self._seen = self._seen, stamp
        if stamp in (self._loaded, self._failed) or stamp != seen:
            return False
        if raw is None:
            self._failed = stamp
            raise ConfigError(f"keyring {self.path} is gone or unreadable; keeping the keys in use")
        try:
            fresh = Keyring._from_bytes(self.path, raw, stamp)
        except ConfigError as exc:
            self._failed = stamp
            raise ConfigError(f"{exc.message}; keeping the keys in use") from None
        self._keys = fresh._keys
        self._resolved.clear()
        self._loaded = stamp
        return True

    def verifies(
        self, value: bytes, headers: Iterable[tuple[str, bytes | None]], tenant_id: str
    ) -> bool:
        """True when `value` carries a valid signature, in the form `sign_record`
        writes, of a key of tenant_id or of an ancestor.

        One record's check: one HMAC and a few dict lookups (the worker checks
        a slice at a time, `signers_of`, and applies `tenant_within`). False
        does not say why, and covers forms `verify_record` may still accept:
        ask it for the verdict and its reason. Whatever this accepts,
        `verify_record` accepts too.
        """
        signer = self.signer_of(value, headers)
        return signer is not None and tenant_within(tenant_id, signer)

    def signer_of(self, value: bytes, headers: Iterable[tuple[str, bytes | None]]) -> str | None:
        """The signing tenant when `value`'s signature is valid and in
        `sign_record`'s form; None otherwise (see `verifies`)."""
        sig = signer = None
        for name, raw in headers:
            # The first header of each name counts, as in verify_signature.
            if name == HEADER_SIGNATURE:
                if sig is None:
                    sig = raw
            elif name == HEADER_TENANT and signer is None:
                signer = raw
        if type(sig) is not bytes or type(signer) is not bytes:
            return None
        head, _, hex_sig = sig.rpartition(b",sig=")
        resolved = self._resolved.get((signer, head))
        if resolved is None:
            resolved = self._resolve(signer, head)
            if resolved is None:
                return None
        inner_keyed, outer_keyed, signer_id, _ = resolved
        # HMAC-SHA256 (RFC 2104) from the key's two hash states, computed
        # once: half the CPU of hmac.digest, which keys both again per call
        # (1.0 against 2.2 us for a 330-byte record here).
        inner = inner_keyed.copy()
        inner.update(value)
        outer = outer_keyed.copy()
        outer.update(inner.digest())
        expected = outer.hexdigest().encode()
        return signer_id if hmac.compare_digest(expected, hex_sig) else None

    def signers_of(self, records: Sequence[Any], max_bytes: int) -> list[str | None]:
        """`signer_of` for each record of a slice: value at index 4, headers
        at 5 (streams.records.InRecord). A value that is not bytes or is over
        `max_bytes` gets None: it is rejected before its signature counts.

        With the C module, one call checks the slice's HMACs with the GIL
        released; a record it cannot settle (a key not cached yet, headers in
        another shape) is asked of `signer_of`, so both give the same answers.
        """
        if not self.native:
            return [
                self.signer_of(value, rec[5])
                if type(value := rec[4]) is bytes and len(value) <= max_bytes
                else None
                for rec in records
            ]
        out: list[Any] = _sigcheck.signers_of(records, self._resolved, _UNKNOWN, max_bytes)
        if _UNKNOWN in out:
            for i, signer in enumerate(out):
                if signer is _UNKNOWN:
                    out[i] = self.signer_of(records[i][4], records[i][5])
        return out

    def _resolve(self, signer: bytes, head: bytes) -> _Resolved | None:
        prefix = SIGNATURE_VERSION.encode() + b",kid="
        key_id = head[len(prefix) :]
        if not head.startswith(prefix) or b"," in key_id or b"=" in key_id:
            return None  # not sign_record's form: verify_signature decides
        signer_id = signer.decode(errors="replace")
        secret = self.secret(signer_id, key_id.decode(errors="replace"))
        if secret is None:
            return None
        inner, outer = _hmac_states(secret)
        states = _sigcheck.keyed_states(secret) if self.native else None
        resolved = (inner, outer, signer_id, states)
        self._resolved[(signer, head)] = resolved
        return resolved

    @classmethod
    def from_file(cls, path: str | Path, *, native: bool = True) -> Keyring:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read keyring {path}: {exc}; fix the file") from None
        ring = cls._from_bytes(path, raw, _digest(raw))
        ring.native = native and NATIVE_CHECK
        return ring

    @classmethod
    def _from_bytes(cls, path: Path, raw: bytes, stamp: _Stamp) -> Keyring:
        try:
            data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"cannot read keyring {path}: {exc}; fix the file") from None
        tenants = data.get("tenants") if isinstance(data, dict) else None
        if not isinstance(tenants, dict):
            raise ConfigError(
                f"keyring {path} needs a 'tenants' table of tenant -> {{kid: secret}}"
            )
        ring = cls()
        for tenant, kids in tenants.items():
            if not isinstance(kids, dict):
                raise ConfigError(f"keyring {path}: tenant {tenant!r} must map key ids to secrets")
            for kid, text in kids.items():
                ring.add(tenant, kid, parse_secret(str(text)))
        ring.path = path
        ring._loaded = ring._seen = stamp
        return ring


# A version of the keyring file: the SHA-256 of its bytes. By content, not by
# mtime and size: an edit in place that keeps the size within the
# filesystem's mtime resolution (a second on some) is still a change. A look
# reads the whole file; keyrings are small, and a look comes every few seconds.
_Stamp = bytes
_GONE: Final[_Stamp] = b"gone or unreadable"  # not a digest: those are 32 bytes


def _digest(raw: bytes) -> _Stamp:
    return hashlib.sha256(raw).digest()


def _look(path: Path) -> tuple[_Stamp, bytes | None]:
    """The file's version and bytes ((_GONE, None) when it cannot be read)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return _GONE, None
    return _digest(raw), raw


def parse_secret(text: str) -> bytes:
    """'hex:..', 'base64:..' or plain text -> bytes."""
    try:
        if text.startswith("hex:"):
            return bytes.fromhex(text[4:])
        if text.startswith("base64:"):
            return base64.b64decode(text[7:], validate=True)
    except ValueError:
        raise ConfigError("a signing secret is not valid hex/base64; fix the keyring") from None
    return text.encode()


def _header(headers: Headers, name: str) -> bytes | None:
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key == name and value is not None:
            return value.encode() if isinstance(value, str) else bytes(value)
    return None


def _bad(detail: str, tenant_id: str) -> InvalidRecord:
    return InvalidRecord(
        f"signature rejected for tenant {tenant_id!r}: {detail}; sign with a current key of "
        "this tenant or an ancestor",
        reason=str(RejectReason.BAD_SIGNATURE),
        field="tp-sig",
    )


def verify_signature(value: bytes, headers: Headers, *, keyring: Keyring) -> str:
    """Check tp-sig against the keyring; returns the signing tenant (tp-tenant)."""
    raw_sig = _header(headers, HEADER_SIGNATURE)
    raw_tenant = _header(headers, HEADER_TENANT)
    if raw_sig is None or raw_tenant is None:
        raise InvalidRecord(
            "record has no tp-sig/tp-tenant headers but signatures are required; "
            "configure the producer's signing key",
            reason=str(RejectReason.MISSING_SIGNATURE),
            field="tp-sig",
        )
    signer = raw_tenant.decode(errors="replace")
    parts = dict(p.partition("=")[::2] for p in raw_sig.decode(errors="replace").split(",")[1:])
    if not raw_sig.startswith(SIGNATURE_VERSION.encode() + b","):
        raise _bad("unknown signature version", signer)
    secret = keyring.secret(signer, parts.get("kid", ""))
    if secret is None:
        raise _bad(f"unknown key id {parts.get('kid', '')!r}", signer)
    expected = signature(value, secret).encode()
    if not hmac.compare_digest(expected, parts.get("sig", "").encode()):
        raise _bad("signature does not match the record bytes", signer)
    return signer


def verify_record(value: bytes, headers: Headers, *, tenant_id: str, keyring: Keyring) -> None:
    """Raise InvalidRecord (bad_signature | missing_signature) unless the record
    is signed by a key of tenant_id or of one of its ancestors."""
    signer = verify_signature(value, headers, keyring=keyring)
    if not tenant_within(tenant_id, signer):
        raise _bad(f"signer {signer!r} may not speak for tenant {tenant_id!r}", tenant_id)
