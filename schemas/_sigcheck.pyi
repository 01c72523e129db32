# Stub of the C module schemas/_sigcheck.c (see Keyring.signers_of).
from collections.abc import Sequence
from typing import Any

def keyed_states(secret: bytes, /) -> bytes: ...
def signers_of(
    records: Sequence[Any], resolved: dict[Any, Any], unknown: object, max_bytes: int, /
) -> list[Any]: ...
