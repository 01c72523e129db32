"""The embedded ClickHouse endpoint's wire rules, without a server or the engine."""

from __future__ import annotations

import base64
import gzip
import io
import zlib

import lz4.frame
import pytest
import zstandard

from tokenpulse.local.chhttp_body import ChunkedBody, Compressor, LengthBody, open_body, read_body
from tokenpulse.local.chhttp_protocol import (
    ClickHouseHTTPError,
    check_credentials,
    choose_encoding,
    credentials,
    engine_error,
    first_keyword,
    is_stateful,
    parse_params,
    split_insert,
    status_for_code,
    trailing_format,
)


def test_params_split_settings_transport_and_server_parameters() -> None:
    p = parse_params(
        "query=SELECT+1&database=db&session_id=s1&wait_end_of_query=1&query_id=q"
        "&date_time_input_format=best_effort&param_tenant=a%27b&compress=1&default_format=JSON"
    )
    assert (p.query, p.database, p.session_id, p.query_id) == ("SELECT 1", "db", "s1", "q")
    assert p.wait_end_of_query
    assert p.default_format == "JSON"
    assert p.settings == {"date_time_input_format": "best_effort"}
    assert p.params == {"tenant": "a'b"}


def test_params_reject_non_utf8_and_bad_setting_names() -> None:
    with pytest.raises(ClickHouseHTTPError) as bad_utf8:
        parse_params("query=SELECT+%FF")
    assert bad_utf8.value.status == 400
    with pytest.raises(ClickHouseHTTPError) as bad_name:
        parse_params("max-threads=1")
    assert bad_name.value.code == 115


def test_credentials_from_basic_headers_and_url() -> None:
    basic = "Basic " + base64.b64encode(b"alice:pw:with:colons").decode()
    assert credentials({"authorization": basic}, parse_params("")) == ("alice", "pw:with:colons")
    headers = {"X-ClickHouse-User": "bob", "X-ClickHouse-Key": "k"}
    assert credentials(headers, parse_params("")) == ("bob", "k")
    assert credentials({}, parse_params("user=u&password=p")) == ("u", "p")


def test_check_credentials_refuses_with_516() -> None:
    check_credentials(None, None, expected_user="default", expected_password="")
    with pytest.raises(ClickHouseHTTPError) as info:
        check_credentials("default", "nope", expected_user="default", expected_password="pw")
    assert (info.value.code, info.value.status) == (516, 403)
    text = info.value.text("26.9.2.1")
    assert text.startswith("Code: 516. DB::Exception: default: Authentication failed")
    assert text.rstrip().endswith("(AUTHENTICATION_FAILED) (version 26.9.2.1)")


def test_engine_errors_keep_code_and_gain_version_trailer() -> None:
    code, text = engine_error(
        "Streaming insert finish failed: Code: 60. DB::Exception: Table x does not exist. "
        "(UNKNOWN_TABLE)",
        "26.9.2.1",
    )
    assert code == 60
    assert text == (
        "Code: 60. DB::Exception: Table x does not exist. (UNKNOWN_TABLE) (version 26.9.2.1)\n"
    )
    assert engine_error("no code here", "v")[0] == 1002


@pytest.mark.parametrize(
    ("code", "status"), [(60, 404), (81, 404), (62, 400), (516, 403), (194, 401), (395, 500)]
)
def test_status_follows_clickhouse_mapping(code: int, status: int) -> None:
    assert status_for_code(code) == status


def test_split_insert_finds_statement_format_and_data() -> None:
    prefix = b"INSERT INTO t (a, b) FORMAT Native\n"
    head = split_insert(prefix + b"\n\x00\x01FORMAT")
    assert head is not None
    assert (head.statement, head.fmt) == ("INSERT INTO t (a, b)", "Native")
    assert head.data_offset == len(prefix)  # only the first newline belongs to the statement
    spaced = split_insert(b"  insert into t format CSV 1,2\n")
    assert spaced is not None
    assert spaced.fmt == "CSV"
    assert b"  insert into t format CSV 1,2\n"[spaced.data_offset :] == b"1,2\n"
    assert split_insert(b"INSERT INTO t VALUES ('FORMAT x')") is None
    assert split_insert(b"SELECT 1 FORMAT Native") is None


def test_statement_classification() -> None:
    assert trailing_format("SELECT 1\n FORMAT Native") == "Native"
    assert trailing_format("SELECT 'FORMAT JSON'") is None
    assert first_keyword("-- c\n/* x */ (select 1)") == "SELECT"
    assert is_stateful("USE db")
    assert is_stateful("create temporary table t (a UInt8)")
    assert not is_stateful("CREATE TABLE t (a UInt8) ENGINE = Memory")


def test_choose_encoding_follows_client_order() -> None:
    supported = ("lz4", "zstd", "gzip", "deflate")
    assert choose_encoding("lz4,zstd,gzip,deflate", supported) == "lz4"
    assert choose_encoding("br, gzip;q=0.5", supported) == "gzip"
    assert choose_encoding("gzip;q=0, deflate", supported) == "deflate"
    assert choose_encoding(None, supported) is None


def _payload() -> bytes:
    return b"INSERT INTO t FORMAT CSV\n" + b"1,abc\n" * 50_000


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        # clickhouse-connect compresses each block as its own LZ4 frame.
        ("lz4", lambda d: lz4.frame.compress(d[:1000]) + lz4.frame.compress(d[1000:])),
        ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("identity", lambda d: d),
    ],
)
def test_request_bodies_decompress_as_a_stream(encoding: str, encode: object) -> None:
    assert callable(encode)
    compressed = encode(_payload())
    body = open_body(LengthBody(io.BytesIO(compressed), len(compressed)), encoding)
    out = b"".join(iter(lambda: read_body(body, 65536), b""))
    assert out == _payload()


def test_chunked_body_and_its_errors() -> None:
    raw = io.BytesIO(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
    assert open_body(ChunkedBody(raw), None).read() == b"hello world"
    for broken in (b"zz\r\nhello\r\n", b"5\r\nhelloXX", b"-1\r\n", b"5\r\nhel"):
        with pytest.raises(ClickHouseHTTPError) as info:
            open_body(ChunkedBody(io.BytesIO(broken)), None).read()
        assert info.value.status == 400


def test_bad_compressed_body_and_short_body_are_client_errors() -> None:
    bad = b"definitely not lz4"
    with pytest.raises(ClickHouseHTTPError) as info:
        read_body(open_body(LengthBody(io.BytesIO(bad), len(bad)), "lz4"), 1024)
    assert (info.value.code, info.value.status) == (271, 400)
    with pytest.raises(ClickHouseHTTPError) as short:
        read_body(open_body(LengthBody(io.BytesIO(b"abc"), 10), None), 1024)
    assert short.value.status == 400
    with pytest.raises(ClickHouseHTTPError) as unknown:
        open_body(LengthBody(io.BytesIO(b""), 0), "br")
    assert unknown.value.status == 415


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate", None])
def test_response_compression_round_trips(encoding: str | None) -> None:
    comp = Compressor(encoding)
    data = comp.compress(b"a" * 1000) + comp.compress(b"b" * 1000) + comp.flush()
    decode = {
        "lz4": lz4.frame.decompress,
        "zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d),
        "gzip": gzip.decompress,
        "deflate": zlib.decompress,
        None: lambda d: d,
    }[encoding]
    assert decode(data) == b"a" * 1000 + b"b" * 1000
