"""The HTTP side of the embedded ClickHouse endpoint: one thread per connection.

A request is authenticated, its body opened as a (decompressed) stream, and
then either streamed into the engine (`INSERT ... FORMAT X` + data) or run as
one statement whose result goes back buffered, spooled (wait_end_of_query=1)
or streamed block by block with ClickHouse's exception-tag protocol for
errors that happen after the headers went out.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO

from tokenpulse.local.chhttp_body import (
    READ_SIZE,
    RESPONSE_ENCODINGS,
    ChunkedBody,
    Compressor,
    LengthBody,
    open_body,
    read_body,
)
from tokenpulse.local.chhttp_engine import Engine, Handle, Summary
from tokenpulse.local.chhttp_form import MAX_FORM_BYTES, apply_form, is_form, parse_form
from tokenpulse.local.chhttp_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tokenpulse.local.chhttp_metrics import EndpointMetrics
from tokenpulse.local.chhttp_protocol import (
    BAD_ARGUMENTS,
    NOT_IMPLEMENTED,
    QUERY_IS_TOO_LARGE,
    RESULT_STATEMENTS,
    STREAMABLE_FORMATS,
    SYNTAX_ERROR,
    UNKNOWN_EXCEPTION,
    ClickHouseHTTPError,
    RequestParams,
    check_credentials,
    choose_encoding,
    content_type,
    credentials,
    first_keyword,
    is_stateful,
    parse_params,
    split_insert,
    summary_header,
    trailing_format,
)

log = logging.getLogger("tokenpulse.local.clickhouse_http")

MAX_QUERY_BYTES = 256 * 1024  # ClickHouse's max_query_size default
MAX_CONTENT_LENGTH = 1 << 40
SPOOL_IN_MEMORY_BYTES = 32 << 20
KEEP_ALIVE_S = 60


class EndpointHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine, user: str, password: str) -> None:
        super().__init__(address, _Handler)
        self.engine = engine
        self.user = user
        self.password = password
        self.display_name = socket.gethostname() or "tokenpulse"
        self.metrics = EndpointMetrics()

    def handle_error(self, request: object, client_address: object) -> None:
        # One broken connection must never take the server down or spam stderr.
        log.debug("error on a connection from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Answer even an unparsable request line with a status line, not HTTP/0.9 silence.
    default_request_version = "HTTP/1.0"
    server_version = "tokenpulse-clickhouse-http"
    timeout = KEEP_ALIVE_S * 10
    # TCP_NODELAY: the status line, headers and body leave in separate small
    # writes; with Nagle on, a keep-alive client's delayed ACK held each
    # answer ~40 ms (48 ms per clickhouse-connect request, 2.4 ms without).
    disable_nagle_algorithm = True
    server: EndpointHTTPServer

    _raw: LengthBody | ChunkedBody | None = None
    _query_id = ""
    _kind = "other"  # for the metrics: query, insert, ping, metrics, other

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: object) -> None:
        # The request line can carry user/password URL parameters: log no URLs.
        log.debug("%s %s", self.client_address[0], format % args if "%" in format else format)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = str(getattr(self, "path", "")).partition("?")[0]
        log.debug("%s %s -> %s", getattr(self, "command", None), path, code)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    # -- plumbing ---------------------------------------------------------------

    def _dispatch(self) -> None:
        self._raw = None
        self._query_id = ""
        self._kind = "other"
        started = time.perf_counter()
        path, _, query_string = self.path.partition("?")
        try:
            self._raw = self._raw_body()
            if path in ("/ping", "/replicas_status") or (
                path == "/" and not query_string and self.command == "GET"
            ):
                self._kind = "ping"
                self._send_plain(200, b"Ok.\n")
            elif path == "/metrics":
                self._kind = "metrics"
                self._send_plain(200, self.server.metrics.render(), METRICS_CONTENT_TYPE)
            elif path == "/":
                self._kind = "query"
                self._handle_query(query_string)
            else:
                self._send_plain(404, b"There is no handle " + path.encode()[:200] + b"\n")
        except ClickHouseHTTPError as exc:
            self._send_error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("unexpected failure serving a request")
            self._send_error(ClickHouseHTTPError(UNKNOWN_EXCEPTION, "internal server error"))
        finally:
            self.server.metrics.observe(self._kind, time.perf_counter() - started)

    def _raw_body(self) -> LengthBody | ChunkedBody | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return ChunkedBody(self.rfile)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return None
        length_text = length_text.strip()
        if not length_text.isdigit() or int(length_text) > MAX_CONTENT_LENGTH:
            self.close_connection = True
            raise ClickHouseHTTPError(
                BAD_ARGUMENTS, f"invalid Content-Length {length_text[:40]!r}", status=400
            )
        return LengthBody(self.rfile, int(length_text))

    def _body_done(self) -> bool:
        return self._raw is None or self._raw.exhausted

    def _common_headers(self) -> None:
        engine = self.server.engine
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.display_name)
        self.send_header("X-ClickHouse-Timezone", engine.timezone)
        if self._query_id:
            self.send_header("X-ClickHouse-Query-Id", self._query_id)
        if not self._body_done():
            # The rest of the request body is still on the socket: drop the connection.
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", f"timeout={KEEP_ALIVE_S}")

    def _send_plain(
        self, status: int, body: bytes, mime: str = "text/plain; charset=UTF-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, exc: ClickHouseHTTPError) -> None:
        self.server.metrics.errors.labels(str(exc.code)).inc()
        body = exc.text(self.server.engine.version).encode("utf-8", "replace")
        try:
            self.send_response(exc.status)
            self.send_header("Content-Type", "text/plain; charset=UTF-8")
            self.send_header("X-ClickHouse-Exception-Code", str(exc.code))
            self.send_header("Content-Length", str(len(body)))
            self._common_headers()
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _result_headers(
        self, status: int, fmt: str | None, summary: Summary, result_rows: int
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type(fmt) if fmt else "text/plain; charset=UTF-8")
        if fmt:
            self.send_header("X-ClickHouse-Format", fmt)
        self.send_header(
            "X-ClickHouse-Summary",
            summary_header(
                read_rows=summary.read_rows,
                read_bytes=summary.read_bytes,
                written_rows=summary.written_rows,
                written_bytes=summary.written_bytes,
                result_rows=result_rows,
                elapsed_ns=summary.elapsed_ns,
            ),
        )
        self._common_headers()

    # -- the ClickHouse HTTP interface -----------------------------------------

    def _handle_query(self, query_string: str) -> None:
        params = parse_params(query_string)
        self._query_id = params.query_id or str(uuid.uuid4())
        user, password = credentials(dict(self.headers.items()), params)
        check_credentials(
            user, password, expected_user=self.server.user, expected_password=self.server.password
        )
        if params.decompress:
            raise ClickHouseHTTPError(
                NOT_IMPLEMENTED,
                "decompress=1 (ClickHouse's compressed-block body) is not supported; "
                "send the body with Content-Encoding lz4, zstd, gzip or deflate instead",
            )
        body: IO[bytes] | None = None
        if self._raw is not None:
            body = open_body(self._raw, self.headers.get("Content-Encoding"))
        content_type = self.headers.get("Content-Type")
        if body is not None and is_form(content_type):
            # The query and its parameters travel as form fields; no data follows.
            data = read_body(body, MAX_FORM_BYTES + 1)
            apply_form(params, parse_form(data, content_type or ""))
            body = None
        head = params.query.encode("utf-8")
        eof = body is None
        if body is not None:
            if head:
                head += b"\n"
            while len(head) < MAX_QUERY_BYTES:
                data = read_body(body, min(READ_SIZE, MAX_QUERY_BYTES))
                if not data:
                    eof = True
                    break
                head += data
        insert = split_insert(head)
        if insert is not None:
            self._run_insert(params, insert.statement, insert.fmt, head[insert.data_offset :], body)
            return
        if not eof:
            raise ClickHouseHTTPError(
                QUERY_IS_TOO_LARGE,
                f"the query is longer than {MAX_QUERY_BYTES} bytes; send data as "
                "INSERT ... FORMAT <format> followed by the data",
            )
        try:
            sql = head.decode("utf-8")
        except UnicodeDecodeError:
            raise ClickHouseHTTPError(
                BAD_ARGUMENTS, "the query is not valid UTF-8", status=400
            ) from None
        if not sql.strip():
            raise ClickHouseHTTPError(SYNTAX_ERROR, "Empty query")
        self._run_statement(params, sql)

    def _insert_chunks(self, first: bytes, body: IO[bytes] | None) -> Iterator[bytes]:
        if first:
            yield first
        while body is not None:
            data = read_body(body, READ_SIZE)
            if not data:
                return
            yield data

    def _run_insert(
        self, params: RequestParams, statement: str, fmt: str, first: bytes, body: IO[bytes] | None
    ) -> None:
        with self.server.engine.lease(
            params.session_id, timeout_s=params.session_timeout_s, check=params.session_check
        ) as handle:
            handle.prepare(params.database, params.settings)
            self._kind = "insert"
            summary = handle.insert(statement, fmt, self._insert_chunks(first, body))
        self.server.metrics.inserted_rows.inc(summary.written_rows)
        self._result_headers(200, None, summary, 0)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _run_statement(self, params: RequestParams, sql: str) -> None:
        keyword = first_keyword(sql)
        fmt = trailing_format(sql) or params.default_format or "TabSeparated"
        produces_result = keyword in RESULT_STATEMENTS
        enabled = params.enable_http_compression is not False
        encoding = choose_encoding(self.headers.get("Accept-Encoding"), RESPONSE_ENCODINGS)
        compressor = Compressor(encoding if enabled else None)
        with self.server.engine.lease(
            params.session_id, timeout_s=params.session_timeout_s, check=params.session_check
        ) as handle:
            stateful = is_stateful(sql)
            if params.session_id is None and stateful:
                handle.discard = True  # USE/SET without a session must not outlive the request
            handle.prepare(params.database, {} if keyword == "SET" else params.settings)
            # chdb streams only SELECTs; DESCRIBE, SHOW ... come back whole.
            if keyword in ("SELECT", "WITH") and fmt.lower() in STREAMABLE_FORMATS:
                self._stream_result(handle, sql, fmt, params, compressor)
            else:
                data, summary = handle.query(sql, fmt, params.params)
                if keyword == "USE" and params.session_id is not None:
                    handle.after_use()
                if stateful:
                    handle.forget_originals()  # its SET changed what the overlay restores
                self._send_result(
                    fmt if produces_result or data else None, data, summary, compressor
                )

    def _send_result(
        self, fmt: str | None, data: bytes, summary: Summary, compressor: Compressor
    ) -> None:
        payload = compressor.whole(data) if data else b""
        self._result_headers(200, fmt, summary, 0)
        if payload and compressor.encoding:
            self.send_header("Content-Encoding", compressor.encoding)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream_result(
        self, handle: Handle, sql: str, fmt: str, params: RequestParams, compressor: Compressor
    ) -> None:
        blocks = handle.stream(sql, fmt, params.params)
        try:
            first = next(blocks, b"")  # most errors surface here, before any header
            if params.wait_end_of_query:
                self._send_spooled(fmt, first, blocks, compressor)
            else:
                self._send_chunked(fmt, first, blocks, compressor)
        finally:
            blocks.close()

    def _send_spooled(
        self, fmt: str, first: bytes, blocks: Iterator[bytes], compressor: Compressor
    ) -> None:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            size = 0
            for block in _chain(first, blocks):
                size += len(block)
                spool.write(compressor.compress(block))
            spool.write(compressor.flush() if size else b"")
            length = spool.tell()
            spool.seek(0)
            self._result_headers(200, fmt, Summary(), 0)
            if size and compressor.encoding:
                self.send_header("Content-Encoding", compressor.encoding)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            while chunk := spool.read(READ_SIZE):
                self.wfile.write(chunk)

    def _send_chunked(
        self, fmt: str, first: bytes, blocks: Iterator[bytes], compressor: Compressor
    ) -> None:
        tag = secrets.token_hex(8)
        self._result_headers(200, fmt, Summary(), 0)
        if compressor.encoding:
            self.send_header("Content-Encoding", compressor.encoding)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-ClickHouse-Exception-Tag", tag)
        self.end_headers()
        try:
            for block in _chain(first, blocks):
                self._write_chunk(compressor.compress(block))
            self._write_chunk(compressor.flush())
        except ClickHouseHTTPError as exc:
            # Headers are gone: report the error in-band the way ClickHouse 25.11+ does.
            message = exc.text(self.server.engine.version).encode("utf-8", "replace")
            block = (
                b"__exception__\r\n"
                + tag.encode()
                + b"\r\n"
                + message
                + b"\n"
                + str(len(message)).encode()
                + b" "
                + tag.encode()
                + b"\r\n__exception__\r\n"
            )
            with contextlib.suppress(Exception):
                self._write_chunk(compressor.compress(block) + compressor.flush())
            self.close_connection = True
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
