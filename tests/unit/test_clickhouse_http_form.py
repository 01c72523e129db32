"""Parsing of multipart/form-data request bodies (no server)."""

from __future__ import annotations

import pytest

from tokenpulse.local.chhttp_form import MAX_FORM_BYTES, apply_form, is_form, parse_form
from tokenpulse.local.chhttp_protocol import ClickHouseHTTPError, RequestParams

BOUNDARY = "xYzZY"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def _form(*fields: tuple[str, str], filename: str | None = None) -> bytes:
    out = b""
    for name, value in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n"
            f"Content-Type: text/plain\r\n\r\n{value}\r\n"
        ).encode()
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_query_and_params_are_read_from_the_form() -> None:
    body = _form(("query", "SELECT {a:String}\n FORMAT Native"), ("param_a", "it's ünïcode"))
    params = RequestParams()
    apply_form(params, parse_form(body, CT))
    assert params.query == "SELECT {a:String}\n FORMAT Native"
    assert params.params == {"a": "it's ünïcode"}


def test_content_type_detection() -> None:
    assert is_form("Multipart/Form-Data; boundary=x")
    assert not is_form("text/plain; charset=utf-8")
    assert not is_form(None)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"no parts here", "multipart/form-data", 400),  # no boundary
        (_form(("query", "SELECT 1"), filename="t.csv"), CT, 501),  # external data
        (b"x" * (MAX_FORM_BYTES + 1), CT, 413),
    ],
)
def test_bad_forms_are_refused_with_a_4xx_or_501(
    body: bytes, content_type: str, status: int
) -> None:
    with pytest.raises(ClickHouseHTTPError) as info:
        parse_form(body, content_type)
    assert info.value.status == status
