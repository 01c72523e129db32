"""Request and response bodies of the embedded ClickHouse endpoint.

Request bodies arrive with Content-Length or chunked transfer encoding and
may be compressed as a whole (Content-Encoding lz4 — LZ4 frames, one per
block, as clickhouse-connect sends them — zstd, gzip or deflate). They are
read as a stream so a large INSERT never has to sit in memory. Responses are
compressed with the encoding the client accepts, block by block.
"""

from __future__ import annotations

import io
import zlib
from typing import IO, Any, Protocol

import lz4.frame
import zstandard

from tokenpulse.local.chhttp_protocol import (
    BAD_ARGUMENTS,
    CANNOT_DECOMPRESS,
    CANNOT_READ_ALL_DATA,
    UNSUPPORTED_MEDIA_TYPE,
    ClickHouseHTTPError,
)

READ_SIZE = 1 << 20
_MAX_CHUNK_LINE = 4096
RESPONSE_ENCODINGS = ("lz4", "zstd", "gzip", "deflate")


class Source(Protocol):
    """The socket's buffered reader as the body readers use it."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


class LengthBody(io.RawIOBase):
    """Exactly `length` bytes of `source`; a short body is a client error."""

    def __init__(self, source: Source, length: int) -> None:
        super().__init__()
        self._source = source
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)
        want = min(len(view), self._left)
        data = self._source.read(want)
        if not data:
            raise ClickHouseHTTPError(
                CANNOT_READ_ALL_DATA,
                f"the request body ended {self._left} bytes before its Content-Length",
                status=400,
            )
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    @property
    def exhausted(self) -> bool:
        return self._left <= 0


class ChunkedBody(io.RawIOBase):
    """A chunked transfer-encoded body (RFC 9112 §7.1), trailers skipped."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self._source = source
        self._left = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def _line(self) -> bytes:
        line = self._source.readline(_MAX_CHUNK_LINE + 1)
        if len(line) > _MAX_CHUNK_LINE or not line.endswith(b"\n"):
            raise ClickHouseHTTPError(BAD_ARGUMENTS, "malformed chunked request body", status=400)
        return line

    def _next_chunk(self) -> bool:
        """Read the next chunk header; False at the last chunk."""
        size_text = self._line().split(b";", 1)[0].strip()
        try:
            if not size_text or size_text.startswith((b"-", b"+")):
                raise ValueError
            size = int(size_text, 16)
        except ValueError:
            raise ClickHouseHTTPError(
                BAD_ARGUMENTS, "malformed chunk size in a chunked request body", status=400
            ) from None
        if size == 0:
            while self._line() not in (b"\r\n", b"\n"):
                pass  # trailer fields carry nothing this endpoint uses
            self._done = True
            return False
        self._left = size
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        if self._left == 0 and not self._next_chunk():
            return 0
        view = memoryview(buffer)
        want = min(len(view), self._left)
        data = self._source.read(want)
        if not data:
            raise ClickHouseHTTPError(
                CANNOT_READ_ALL_DATA, "the chunked request body ended early", status=400
            )
        view[: len(data)] = data
        self._left -= len(data)
        if self._left == 0 and self._source.read(2) not in (b"\r\n",):
            raise ClickHouseHTTPError(BAD_ARGUMENTS, "a chunk is not followed by CRLF", status=400)
        return len(data)

    @property
    def exhausted(self) -> bool:
        return self._done


class _ZlibReader(io.RawIOBase):
    """Bounded-output zlib/deflate decompression over a raw stream."""

    def __init__(self, raw: io.RawIOBase, wbits: int) -> None:
        super().__init__()
        self._raw = raw
        self._wbits = wbits
        self._obj = zlib.decompressobj(wbits)
        self._fed = False
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        while True:
            if not self._pending:
                self._pending = self._raw.read(READ_SIZE)
                if not self._pending:
                    if self._fed and not self._obj.eof:
                        raise zlib.error("the compressed request body is truncated")
                    return 0
            self._fed = True
            out = self._obj.decompress(self._pending, len(view))
            self._pending = self._obj.unconsumed_tail
            if self._obj.eof:
                # Concatenated members (gzip allows them): start the next one.
                self._pending = self._obj.unused_data + self._pending
                self._obj = zlib.decompressobj(self._wbits)
                self._fed = False
            if out:
                view[: len(out)] = out
                return len(out)


def open_body(raw: io.RawIOBase, content_encoding: str | None) -> IO[bytes]:
    """A readable decompressed view of the raw request body."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return io.BufferedReader(raw, READ_SIZE)
    if encoding == "lz4":
        reader: IO[bytes] = lz4.frame.LZ4FrameFile(raw, mode="rb")
        return reader
    if encoding == "zstd":
        zstd_reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(
            io.BufferedReader(raw, READ_SIZE), read_across_frames=True
        )
        return zstd_reader
    if encoding in ("gzip", "x-gzip"):
        return io.BufferedReader(_ZlibReader(raw, 31))
    if encoding == "deflate":
        return io.BufferedReader(_ZlibReader(raw, 15))
    raise ClickHouseHTTPError(
        UNSUPPORTED_MEDIA_TYPE,
        f"Unknown Content-Encoding {content_encoding!r}; use lz4, zstd, gzip or deflate",
    )


def read_body(body: IO[bytes], size: int) -> bytes:
    """Read up to `size` bytes; decompression failures become CANNOT_DECOMPRESS (400)."""
    try:
        return body.read(size)
    except ClickHouseHTTPError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, zlib.error, zstandard.ZstdError) as exc:
        raise ClickHouseHTTPError(
            CANNOT_DECOMPRESS, f"cannot decompress the request body: {exc}", status=400
        ) from None


class Compressor:
    """Incremental response compression; `identity` passes blocks through."""

    def __init__(self, encoding: str | None) -> None:
        self.encoding = encoding
        self._obj: Any = None
        self._started = False
        if encoding == "gzip":
            self._obj = zlib.compressobj(3, zlib.DEFLATED, 31)
        elif encoding == "deflate":
            self._obj = zlib.compressobj(3, zlib.DEFLATED, 15)
        elif encoding == "zstd":
            self._obj = zstandard.ZstdCompressor(level=1).compressobj()
        elif encoding == "lz4":
            self._obj = lz4.frame.LZ4FrameCompressor()

    def compress(self, block: bytes) -> bytes:
        if self._obj is None or not block:
            return block
        if self.encoding == "lz4":
            head = b""
            if not self._started:
                head = bytes(self._obj.begin())
                self._started = True
            return head + bytes(self._obj.compress(block))
        return bytes(self._obj.compress(block))

    def flush(self) -> bytes:
        if self._obj is None:
            return b""
        if self.encoding == "lz4":
            head = b"" if self._started else bytes(self._obj.begin())
            self._started = True
            return head + bytes(self._obj.flush())
        return bytes(self._obj.flush())

    def whole(self, data: bytes) -> bytes:
        return self.compress(data) + self.flush()
