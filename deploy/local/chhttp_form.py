"""multipart/form-data request bodies, as clickhouse-connect sends them.

clickhouse-connect moves a query and its `param_*` bindings into a
multipart form once the bound values would make the URL longer than 4 KiB
(e.g. `event_id IN {ids:Array(String)}` with a hundred ids). ClickHouse
reads the fields `query` and `param_<name>` from such a body; so do we.
External-data file fields (temporary tables) are not supported here.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Final

from tokenpulse.local.chhttp_protocol import (
    BAD_ARGUMENTS,
    NOT_IMPLEMENTED,
    ClickHouseHTTPError,
    RequestParams,
)

# ClickHouse caps one form field at http_max_field_value_size (128 KiB); a
# form of many such fields is still small. Larger bodies are refused before
# they are parsed.
MAX_FORM_BYTES: Final = 8 * 1024 * 1024


def is_form(content_type: str | None) -> bool:
    return (content_type or "").lower().lstrip().startswith("multipart/form-data")


def parse_form(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """The (name, text) fields of a multipart/form-data body."""
    if len(body) > MAX_FORM_BYTES:
        raise ClickHouseHTTPError(
            BAD_ARGUMENTS,
            f"multipart form body larger than {MAX_FORM_BYTES} bytes; send the query in the body",
            status=413,
        )
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ClickHouseHTTPError(
            BAD_ARGUMENTS,
            "malformed multipart/form-data body (no boundary or no parts)",
            status=400,
        )
    fields: list[tuple[str, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ClickHouseHTTPError(
                BAD_ARGUMENTS, "a multipart form field has no name", status=400
            )
        if part.get_filename():
            raise ClickHouseHTTPError(
                NOT_IMPLEMENTED,
                f"external data (form file {name!r}) is not supported by the embedded endpoint",
            )
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        try:
            fields.append((name, raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise ClickHouseHTTPError(
                BAD_ARGUMENTS, f"form field {name!r} is not valid UTF-8", status=400
            ) from None
    return fields


def apply_form(params: RequestParams, fields: list[tuple[str, str]]) -> None:
    """Merge form fields into the request's parameters, as ClickHouse does."""
    for name, value in fields:
        if name == "query":
            params.query = value
        elif name.startswith("param_"):
            params.params[name[len("param_") :]] = value
        else:
            params.settings[name] = value
