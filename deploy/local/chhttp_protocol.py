"""The ClickHouse HTTP interface as pure functions: parameters, credentials, errors.

Everything here runs without the engine or a socket, so the unit tests can
pin the wire behaviour clickhouse-connect and curl rely on: which URL
parameters are settings and which belong to the transport, how the statement
of an `INSERT ... FORMAT X` body is told apart from its data, and the
`Code: N. DB::Exception: ... (NAME) (version V)` error text with the HTTP
status ClickHouse maps each code to.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

# Error codes this endpoint raises itself (the engine's own pass through).
BAD_ARGUMENTS = 36
CANNOT_READ_ALL_DATA = 33
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_SETTING = 115
QUERY_IS_TOO_LARGE = 229
CANNOT_DECOMPRESS = 271
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
HTTP_LENGTH_REQUIRED = 381
AUTHENTICATION_FAILED = 516
UNSUPPORTED_MEDIA_TYPE = 779
UNKNOWN_EXCEPTION = 1002

ERROR_NAMES: Mapping[int, str] = {
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    CANNOT_READ_ALL_DATA: "CANNOT_READ_ALL_DATA",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    UNKNOWN_SETTING: "UNKNOWN_SETTING",
    QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
    SESSION_IS_LOCKED: "SESSION_IS_LOCKED",
    HTTP_LENGTH_REQUIRED: "HTTP_LENGTH_REQUIRED",
    AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    UNSUPPORTED_MEDIA_TYPE: "UNSUPPORTED_MEDIA_TYPE",
    UNKNOWN_EXCEPTION: "UNKNOWN_EXCEPTION",
}

_BAD_REQUEST_CODES: tuple[int, ...] = (
    36,
    427,
    6,
    25,
    26,
    38,
    41,
    72,
    441,
    675,
    676,
    27,
    376,
    15,
    44,
    37,
)
_BAD_REQUEST_CODES += (123, 8, 167, 168, 223, 62, 117, 53, 321)  # BAD_ARGUMENTS, parse errors ...

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp),
# by numeric code; everything else is 500.
_STATUS_BY_CODE: Mapping[int, int] = {
    194: 401,  # REQUIRED_PASSWORD
    **dict.fromkeys((192, 193, 516, 512, 497), 403),  # UNKNOWN_USER .. ACCESS_DENIED
    **dict.fromkeys(_BAD_REQUEST_CODES, 400),
    **dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404),
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    209: 503,  # SOCKET_TIMEOUT
    76: 503,  # CANNOT_OPEN_FILE
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
    439: 503,  # CANNOT_SCHEDULE_TASK
    779: 415,  # UNSUPPORTED_MEDIA_TYPE
}

# URL parameters the HTTP layer consumes; they never reach the engine as settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_native_compression_disable_checksumming_on_decompress",
    }
)

_SETTING_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE_RE = re.compile(r"Code: (\d+)\.")
# An explicit output format at the end of a statement (optionally before SETTINGS).
_TRAILING_FORMAT_RE = re.compile(
    r"\bFORMAT\s+([A-Za-z0-9_]+)\s*(?:\bSETTINGS\b[^;]*)?;?\s*\Z", re.IGNORECASE
)
_INSERT_RE = re.compile(
    rb"\A(?:\s|--[^\n]*\n|/\*.*?\*/)*INSERT\s+INTO\b", re.IGNORECASE | re.DOTALL
)
_FORMAT_RE = re.compile(rb"\bFORMAT\s+([A-Za-z0-9_]+)", re.IGNORECASE)
_NOT_A_FORMAT_INSERT_RE = re.compile(rb"\b(?:VALUES|SELECT|WITH)\b", re.IGNORECASE)
_FIRST_WORD_RE = re.compile(r"\A(?:\s|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*\(?\s*([A-Za-z]+)", re.DOTALL)

RESULT_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
# Formats whose per-block encodings concatenate into one valid stream (no
# global header or footer), so a result can be streamed block by block.
STREAMABLE_FORMATS = frozenset(
    {"native", "tabseparated", "tsv", "csv", "rowbinary", "jsoneachrow", "jsoncompacteachrow"}
)


class ClickHouseHTTPError(Exception):
    """An error answered in ClickHouse's format: code, message, HTTP status."""

    def __init__(
        self, code: int, message: str, *, status: int | None = None, body: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else status_for_code(code)
        # The engine's own, already formatted text; None: format `message` here.
        self.body = body

    def text(self, version: str) -> str:
        return (
            self.body if self.body is not None else format_error(self.code, self.message, version)
        )


def status_for_code(code: int) -> int:
    return _STATUS_BY_CODE.get(code, 500)


def format_error(code: int, message: str, version: str) -> str:
    """`Code: N. DB::Exception: msg. (NAME) (version V)` as ClickHouse writes it."""
    name = ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")
    text = message.rstrip()
    if not text.endswith("."):
        text += "."
    return f"Code: {code}. DB::Exception: {text} ({name}) (version {version})\n"


def engine_error(raw: str, version: str) -> tuple[int, str]:
    """The code and ClickHouse-formatted text of an engine exception message.

    chdb prefixes some messages ("Streaming insert finish failed: ") and adds
    the version trailer only sometimes; the client sees the server's shape.
    """
    start = raw.find("Code: ")
    text = (raw[start:] if start >= 0 else raw).strip()
    match = _CODE_RE.match(text)
    if match is None:
        return UNKNOWN_EXCEPTION, format_error(UNKNOWN_EXCEPTION, text or "unknown error", version)
    if "(version " not in text[-40:]:
        text = f"{text} (version {version})"
    return int(match.group(1)), text + "\n"


@dataclass
class RequestParams:
    """A request's URL parameters sorted by who consumes them."""

    query: str = ""
    database: str | None = None
    default_format: str | None = None
    session_id: str | None = None
    session_timeout_s: float = 60.0
    session_check: bool = False
    query_id: str | None = None
    wait_end_of_query: bool = False
    enable_http_compression: bool | None = None
    decompress: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false")


def parse_params(raw_query_string: str) -> RequestParams:
    """Split the URL query string; raises ClickHouseHTTPError for invalid input."""
    try:
        pairs = parse_qsl(
            raw_query_string, keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        raise ClickHouseHTTPError(
            BAD_ARGUMENTS, "URL parameters are not valid UTF-8; percent-encode UTF-8 text"
        ) from None
    except ValueError as exc:
        raise ClickHouseHTTPError(BAD_ARGUMENTS, f"malformed URL parameters: {exc}") from None
    out = RequestParams()
    for key, value in pairs:
        if key.startswith("param_"):
            out.params[key[len("param_") :]] = value
        elif key == "query":
            out.query = value
        elif key == "database":
            out.database = value or None
        elif key == "default_format":
            out.default_format = value or None
        elif key == "session_id":
            out.session_id = value or None
        elif key == "session_timeout":
            try:
                out.session_timeout_s = float(value)
            except ValueError:
                raise ClickHouseHTTPError(
                    BAD_ARGUMENTS, f"session_timeout must be a number of seconds, got {value!r}"
                ) from None
        elif key == "session_check":
            out.session_check = _flag(value)
        elif key == "query_id":
            out.query_id = value or None
        elif key == "wait_end_of_query":
            out.wait_end_of_query = _flag(value)
        elif key == "enable_http_compression":
            out.enable_http_compression = _flag(value)
        elif key == "decompress":
            out.decompress = _flag(value)
        elif key == "user":
            out.user = value
        elif key == "password":
            out.password = value
        elif key in TRANSPORT_PARAMS:
            continue
        else:
            if not _SETTING_NAME_RE.fullmatch(key):
                raise ClickHouseHTTPError(UNKNOWN_SETTING, f"Unknown setting '{key}'")
            out.settings[key] = value
    return out


def credentials(headers: Mapping[str, str], params: RequestParams) -> tuple[str | None, str | None]:
    """(user, password) from basic auth, X-ClickHouse-User/Key headers or URL params."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization")
    if auth and auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ClickHouseHTTPError(
                AUTHENTICATION_FAILED, "malformed Basic authorization header"
            ) from None
        user, _, password = decoded.partition(":")
        return user, password
    header_user = lower.get("x-clickhouse-user")
    header_key = lower.get("x-clickhouse-key")
    if header_user is not None or header_key is not None:
        return header_user, header_key
    return params.user, params.password


def check_credentials(
    user: str | None, password: str | None, *, expected_user: str, expected_password: str
) -> None:
    """Accept exactly the configured user; raise AUTHENTICATION_FAILED otherwise."""
    given_user = user or "default"
    ok_user = hmac.compare_digest(given_user.encode(), expected_user.encode())
    ok_password = hmac.compare_digest((password or "").encode(), expected_password.encode())
    if not (ok_user and ok_password):
        raise ClickHouseHTTPError(
            AUTHENTICATION_FAILED,
            f"{given_user}: Authentication failed: password is incorrect, "
            "or there is no user with such name",
        )


@dataclass(frozen=True)
class InsertHead:
    """An `INSERT ... FORMAT X` statement and where its data starts in the buffer."""

    statement: str
    fmt: str
    data_offset: int


def split_insert(head: bytes) -> InsertHead | None:
    """Find `INSERT INTO ... FORMAT X` at the start of `head`, or None.

    Data starts after the first newline following the format name, or after
    the whitespace when there is no newline (ClickHouse's ParserInsertQuery).
    An INSERT with VALUES or SELECT is left to the engine as a whole query.
    """
    if _INSERT_RE.match(head) is None:
        return None
    match = _FORMAT_RE.search(head)
    if match is None or _NOT_A_FORMAT_INSERT_RE.search(head, 0, match.start()):
        return None
    try:
        statement = head[: match.start()].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ClickHouseHTTPError(
            BAD_ARGUMENTS, "the INSERT statement is not valid UTF-8"
        ) from None
    pos = match.end()
    while pos < len(head) and head[pos : pos + 1] in (b" ", b"\t", b"\r", b"\n", b"\f", b"\v"):
        pos += 1
        if head[pos - 1 : pos] == b"\n":
            break
    return InsertHead(statement, match.group(1).decode("ascii"), pos)


def trailing_format(sql: str) -> str | None:
    match = _TRAILING_FORMAT_RE.search(sql)
    return match.group(1) if match else None


def first_keyword(sql: str) -> str:
    match = _FIRST_WORD_RE.match(sql)
    return match.group(1).upper() if match else ""


def is_stateful(sql: str) -> bool:
    """Statements that change per-connection state (kept only within a session)."""
    word = first_keyword(sql)
    if word in ("USE", "SET"):
        return True
    return word == "CREATE" and re.match(r"\s*CREATE\s+TEMPORARY\b", sql, re.IGNORECASE) is not None


def content_type(fmt: str) -> str:
    lower = fmt.lower()
    if lower in ("native", "rowbinary", "rowbinarywithnamesandtypes", "arrow", "parquet", "orc"):
        return "application/octet-stream"
    if lower.startswith("json"):
        return "application/json; charset=UTF-8"
    if lower.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if lower.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    return "text/plain; charset=UTF-8"


def choose_encoding(accept_encoding: str | None, supported: Sequence[str]) -> str | None:
    """The first encoding the client lists (q > 0) that this server can produce."""
    if not accept_encoding:
        return None
    for item in accept_encoding.split(","):
        name, _, rest = item.strip().partition(";")
        name = name.strip().lower()
        if "q=0" in rest.replace(" ", "") and "q=0." not in rest.replace(" ", ""):
            continue
        if name in supported:
            return name
    return None


def summary_header(
    *,
    read_rows: int = 0,
    read_bytes: int = 0,
    written_rows: int = 0,
    written_bytes: int = 0,
    result_rows: int = 0,
    result_bytes: int = 0,
    elapsed_ns: int = 0,
) -> str:
    """X-ClickHouse-Summary: a JSON object whose numbers are strings, as ClickHouse sends."""
    values = {
        "read_rows": read_rows,
        "read_bytes": read_bytes,
        "written_rows": written_rows,
        "written_bytes": written_bytes,
        "total_rows_to_read": read_rows,
        "result_rows": result_rows,
        "result_bytes": result_bytes,
        "elapsed_ns": elapsed_ns,
    }
    return "{" + ",".join(f'"{k}":"{int(v)}"' for k, v in values.items()) + "}"
