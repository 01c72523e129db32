"""Golden vectors: records with their expected verdict, shared by every SDK.

Each file in schemas/vectors/ is {"name", "record", "valid", "reason",
"field"} (plus "results", one verdict per event, for batch envelopes).
"record" is the raw record: a JSON string is taken byte-for-byte (so a vector
can hold truncated JSON or a literal NaN), an object is encoded compactly.
schemas/vectors/index.json lists the files so non-Python SDKs can find them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

VECTORS_DIR: Final = Path(__file__).resolve().parent / "vectors"
INDEX_FILE: Final = VECTORS_DIR / "index.json"


@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: str | None
    field: str | None


@dataclass(frozen=True)
class GoldenVector:
    name: str
    record: bytes
    valid: bool
    reason: str | None
    field: str | None
    results: tuple[Verdict, ...] | None  # batch envelopes only: one per event


def _record_bytes(raw: Any) -> bytes:
    if isinstance(raw, str):
        return raw.encode("utf-8", errors="surrogatepass")
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()


def load_vector(path: Path) -> GoldenVector:
    data = json.loads(path.read_text(encoding="utf-8"))
    results = data.get("results")
    return GoldenVector(
        name=data["name"],
        record=_record_bytes(data["record"]),
        valid=bool(data["valid"]),
        reason=data.get("reason"),
        field=data.get("field"),
        results=tuple(Verdict(r["valid"], r.get("reason"), r.get("field")) for r in results)
        if results is not None
        else None,
    )


def iter_vectors() -> Iterator[GoldenVector]:
    """Every golden vector listed in index.json, in index order."""
    index = json.loads(INDEX_FILE.read_text(encoding="utf-8"))
    for name in index["files"]:
        yield load_vector(VECTORS_DIR / name)
