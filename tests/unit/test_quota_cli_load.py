"""`tokenpulse quota load`: the TOML format, without a broker."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tokenpulse.cli.quota import parse_quota_file
from tokenpulse.errors import ConfigError
from tokenpulse.schemas import decode_quota_definition

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quotas.toml"


def test_example_file_parses_to_keyed_definitions() -> None:
    items = parse_quota_file(EXAMPLE)
    defs = {key.decode(): decode_quota_definition(value) for key, value in items}
    assert len(defs) == 3
    acme = defs["acme|acme-daily-tokens"]
    assert (acme.metric, acme.period, acme.limit, acme.hard) == ("total", "day", 50_000_000, True)
    assert acme.timezone == "Europe/Berlin"
    spend = defs["beta|beta-monthly-spend"]
    assert spend.limit == Decimal("250.00")
    assert isinstance(spend.limit, Decimal)
    assert spend.currency == "USD"
    research = next(d for d in defs.values() if d.tenant_id == "acme/research")
    assert research.model == "gpt-4o"
    assert research.quota_id.startswith("q-")


def test_derived_ids_are_stable_across_loads() -> None:
    assert parse_quota_file(EXAMPLE) == parse_quota_file(EXAMPLE)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "q.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no [[quota]] tables"),
        ("[[quota]\n", "cannot read"),
        (
            '[[quota]]\ntenant_id="a"\nmetric="total"\nperiod="day"\nlimit=5\nthreshold=[50]\n',
            "unknown key(s) threshold",
        ),
        (
            '[[quota]]\ntenant_id="a"\nmetric="cost"\nperiod="day"\nlimit=12.5\ncurrency="USD"\n',
            "is a float",
        ),
        ('[[quota]]\ntenant_id="a"\nmetric="cost"\nperiod="day"\nlimit="12.5"\n', "currency"),
        ('[[quota]]\ntenant_id="a"\nmetric="total"\nperiod="year"\nlimit=5\n', "quota #1"),
        ('[[quota]]\ntenant_id="a b"\nmetric="total"\nperiod="day"\nlimit=5\n', "quota #1"),
        (
            '[[quota]]\ntenant_id="a"\nmetric="total"\nperiod="day"\nlimit=5\n'
            '[[quota]]\ntenant_id="a"\nmetric="total"\nperiod="day"\nlimit=9\n',
            "appears twice",
        ),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_quota_file(_write(tmp_path, text))
    assert message in err.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        parse_quota_file(tmp_path / "absent.toml")
