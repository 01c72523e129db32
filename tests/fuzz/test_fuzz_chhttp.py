"""Fuzzing the embedded ClickHouse endpoint's request parsing (no engine, no socket).

Invariant: every input yields a parsed result or a ClickHouseHTTPError whose
status is 4xx; never another exception, and never more output per read than
asked for (a decompression bomb cannot fill memory through read_body).
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable

import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.local.chhttp_body import ChunkedBody, LengthBody, open_body, read_body
from tokenpulse.local.chhttp_protocol import (
    ClickHouseHTTPError,
    choose_encoding,
    credentials,
    first_keyword,
    parse_params,
    split_insert,
    trailing_format,
)

PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
READ_SIZE = 1 << 16
MAX_TOTAL = 8 << 20  # what one fuzz case may decompress before we stop reading
ENCODINGS = ("", "identity", "lz4", "zstd", "gzip", "x-gzip", "deflate")

_COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "": lambda b: b,
    "identity": lambda b: b,
    "lz4": lambda b: bytes(lz4.frame.compress(b)),
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "gzip": lambda b: gzip.compress(b),
    "x-gzip": lambda b: gzip.compress(b),
    "deflate": lambda b: zlib.compress(b),
}


def _client_error(exc: ClickHouseHTTPError) -> None:
    assert 400 <= exc.status < 500, (exc.code, exc.status, exc.message)


def drain(raw: io.RawIOBase, encoding: str) -> int:
    """Read a body the way the server does; returns the decompressed size read."""
    total = 0
    try:
        body = open_body(raw, encoding)
        while total < MAX_TOTAL:
            data = read_body(body, READ_SIZE)
            assert len(data) <= READ_SIZE  # bounded per read, whatever the ratio
            if not data:
                break
            total += len(data)
    except ClickHouseHTTPError as exc:
        _client_error(exc)
    return total


def chunked(data: bytes, sizes: list[int]) -> bytes:
    out = bytearray()
    pos = 0
    for size in sizes:
        part = data[pos : pos + size]
        if not part:
            break
        out += b"%x\r\n" % len(part) + part + b"\r\n"
        pos += len(part)
    if pos < len(data):
        out += b"%x\r\n" % (len(data) - pos) + data[pos:] + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
@PROFILE
def test_url_parameters_parse_or_fail_with_4xx(query_string: str) -> None:
    try:
        params = parse_params(query_string)
    except ClickHouseHTTPError as exc:
        _client_error(exc)
        return
    assert all(not k.startswith("param_") for k in params.settings)


@given(
    st.dictionaries(
        st.sampled_from(["Authorization", "X-ClickHouse-User", "X-ClickHouse-Key"]),
        st.text(max_size=80),
    ),
    st.text(max_size=40),
)
@PROFILE
def test_credentials_parse_or_fail_with_4xx(headers: dict[str, str], qs: str) -> None:
    try:
        credentials(headers, parse_params("user=u&password=p"))
        choose_encoding(qs, ("lz4", "zstd", "gzip", "deflate"))
        first_keyword(qs)
        trailing_format(qs)
    except ClickHouseHTTPError as exc:
        _client_error(exc)


@given(
    st.binary(max_size=400)
    | st.builds(
        lambda a, b: b"INSERT INTO t FORMAT " + a + b"\n" + b,
        st.binary(max_size=20),
        st.binary(max_size=40),
    )
)
@PROFILE
def test_insert_heads_split_or_fail_with_4xx(head: bytes) -> None:
    try:
        found = split_insert(head)
    except ClickHouseHTTPError as exc:
        _client_error(exc)
        return
    if found is not None:
        assert 0 <= found.data_offset <= len(head)


@given(st.binary(max_size=600))
@PROFILE
def test_raw_chunked_streams_decode_or_fail_with_4xx(raw: bytes) -> None:
    drain(ChunkedBody(io.BufferedReader(io.BytesIO(raw))), "")


@given(
    st.binary(max_size=2000), st.lists(st.integers(1, 300), max_size=8), st.sampled_from(ENCODINGS)
)
@PROFILE
def test_well_formed_bodies_round_trip(data: bytes, sizes: list[int], encoding: str) -> None:
    wire = _COMPRESS[encoding](data)
    got = open_body(ChunkedBody(io.BufferedReader(io.BytesIO(chunked(wire, sizes)))), encoding)
    assert read_body(got, len(data) + 1) == data
    plain = open_body(LengthBody(io.BufferedReader(io.BytesIO(wire)), len(wire)), encoding)
    assert read_body(plain, len(data) + 1) == data


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    encoding = draw(st.sampled_from(ENCODINGS))
    wire = bytearray(_COMPRESS[encoding](draw(st.binary(max_size=1500))))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(wire))))
        if op == "flip" and wire:
            i = min(pos, len(wire) - 1)
            wire[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del wire[pos : pos + draw(st.integers(1, 64))]
        else:
            wire[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(wire), encoding


@given(mutated_bodies(), st.booleans())
@PROFILE
def test_mutated_compressed_bodies_decode_or_fail_with_4xx(
    case: tuple[bytes, str], as_chunked: bool
) -> None:
    wire, encoding = case
    if as_chunked:
        raw: io.RawIOBase = ChunkedBody(io.BufferedReader(io.BytesIO(chunked(wire, [97]))))
    else:
        # Content-Length may also lie: claim more than was sent.
        raw = LengthBody(io.BufferedReader(io.BytesIO(wire)), len(wire) + (len(wire) % 3))
    drain(raw, encoding)


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate"])
def test_a_decompression_bomb_is_read_in_bounded_pieces(encoding: str) -> None:
    # 256 MiB of zeros compress to well under 1 MiB; each read returns <= READ_SIZE
    # and the reader stops at MAX_TOTAL, so memory stays bounded.
    zeros = bytes(1 << 20)
    if encoding == "lz4":
        comp = lz4.frame.LZ4FrameCompressor()
        wire = comp.begin() + b"".join(comp.compress(zeros) for _ in range(256)) + comp.flush()
    elif encoding == "zstd":
        cobj = zstandard.ZstdCompressor().compressobj()
        wire = b"".join(cobj.compress(zeros) for _ in range(256)) + cobj.flush()
    else:
        zobj = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        wire = b"".join(zobj.compress(zeros) for _ in range(256)) + zobj.flush()
    assert len(wire) < (2 << 20)
    raw = LengthBody(io.BufferedReader(io.BytesIO(wire)), len(wire))
    assert drain(raw, encoding) == MAX_TOTAL
