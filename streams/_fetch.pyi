from typing import Any

def unpack(
    buf: bytes | memoryview,
    count: int,
    base_offset: int,
    first_offset: int,
    topic: str,
    partition: int,
    generation: int | None,
    cls: type[Any],
) -> list[Any]: ...
