"""The HTML report renderer on hand-made (and hostile) data: no service needed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from tokenpulse.report import DepartmentCost, QuotaBurn, ReportData, TokenSeries, render_html
from tokenpulse.report.data import as_of, department_of
from tokenpulse.report.svg import esc, fmt_number, nice_ticks
from tokenpulse.schemas.quota import QuotaDefinition
from tokenpulse.sinks.capacity import ServingTable, plan_capacity

HOSTILE_TENANT = "acme/<script>alert(1)</script>"
HOSTILE_MODEL = '"><img src=x onerror=alert(2)>'
HOSTILE_QUOTA = "q</title><script>alert(3)</script>"


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _data(**overrides: object) -> ReportData:
    month = date(2026, 11, 1)
    days = tuple(month + timedelta(days=i) for i in range(30))
    series = tuple(
        TokenSeries(t, m, {d: (i + 1) * 1000 + k for k, d in enumerate(days)})
        for i, (t, m) in enumerate(
            [(HOSTILE_TENANT, HOSTILE_MODEL), ("globex", "small-fast")]
            + [(f"t{n}", "m") for n in range(9)]
        )
    )
    start = datetime(2026, 11, 1, tzinfo=UTC)
    definition = QuotaDefinition(
        quota_id=HOSTILE_QUOTA,
        tenant_id="acme",
        metric="total",
        period="month",
        limit=500_000,
        model=HOSTILE_MODEL,
    )
    burn = QuotaBurn(
        definition,
        start,
        start + timedelta(days=30),
        86400,
        tuple((start + timedelta(days=i + 1), 40_000 * (i + 1)) for i in range(30)),
    )
    end = datetime(2026, 12, 1, tzinfo=UTC)
    cap_start = end - timedelta(days=28)
    demand = {
        (HOSTILE_MODEL, "eu-west"): {
            cap_start + timedelta(minutes=m): 6000 + (m % 1440) for m in range(0, 28 * 1440, 7)
        }
    }
    serving = ServingTable({HOSTILE_MODEL: {"H100": 50.0, "<b>L4</b>": 10.0}})
    plans = plan_capacity(demand, serving, cap_start, end, 8)
    base: dict[str, object] = {
        "month": month,
        "database": "tokenpulse",
        "generated_at": end,
        "as_of": end,
        "days": days,
        "series": series,
        "events": 1234,
        "quotas": (burn,),
        "costs": (
            DepartmentCost(HOSTILE_TENANT, 10, Decimal("12.34"), Decimal("1")),
            DepartmentCost("globex", 5, Decimal("3.21"), Decimal("0")),
        ),
        "currency": "USD",
        "capacity": tuple(plans),
        "capacity_window": (cap_start, end),
        "capacity_headroom": 0.3,
    }
    base.update(overrides)
    return ReportData(**base)  # type: ignore[arg-type]


def test_hostile_strings_are_escaped_everywhere() -> None:
    page = render_html(_data())
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags
    assert "img" not in parser.tags
    # No attribute can make the page fetch or run anything.
    names = {name for name, _ in parser.attrs}
    assert not names & {"src", "href", "onerror", "onload", "onclick"}
    text = "".join(parser.text)
    assert HOSTILE_TENANT in text
    assert HOSTILE_MODEL in text
    assert HOSTILE_QUOTA in text
    assert "<script" not in page.lower().replace("&lt;script", "")


def test_page_is_self_contained_with_every_chart_and_a_table_each() -> None:
    page = render_html(_data())
    parser = _Collect()
    parser.feed(page)
    assert "link" not in parser.tags
    assert "iframe" not in parser.tags
    assert "url(" not in page
    for chart in ("tokens", "top-tenants", "quota-0", "cost", "capacity-demand", "capacity-gpus"):
        assert f'data-chart="{chart}"' in page
    # Every figure but the GPU one (its numbers are in the demand table) has a data table.
    assert page.count("<figure>") == 6
    assert page.count("<summary>Data table</summary>") == 5
    assert "tokens per day (input + output)" in page
    assert "cost in USD" in page
    assert "other (3 tenant-model pairs)" in page  # 11 series, 8 shown


def test_missing_parts_become_visible_notes() -> None:
    page = render_html(
        _data(
            quotas=(),
            quota_note="Kafka not reachable (no broker at 127.0.0.1:1)",
            costs=(),
            cost_note="costs omitted: usage of models missing from the price book: <x>",
            capacity=(),
            capacity_note="no serving table (pass --serving PATH)",
        )
    )
    assert 'class="note"' in page
    assert "Quota burn-down omitted: Kafka not reachable" in page
    assert "missing from the price book: &lt;x&gt;" in page
    assert "Capacity omitted: no serving table" in page
    assert 'data-chart="cost"' not in page


def test_empty_month_says_so() -> None:
    page = render_html(_data(series=(), events=0, quotas=(), costs=(), capacity=()))
    assert "no usage in 2026-11" in page
    assert 'data-chart="tokens"' not in page


def test_as_of_is_now_inside_the_month_else_its_end() -> None:
    nov = date(2026, 11, 1)
    inside = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
    assert as_of(nov, inside) == inside
    assert as_of(nov, datetime(2027, 1, 2, tzinfo=UTC)) == datetime(2026, 12, 1, tzinfo=UTC)
    assert as_of(nov, datetime(2026, 10, 2, tzinfo=UTC)) == datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("node", "department"),
    [("acme/research/agent-7", "acme/research"), ("globex", "globex"), ("a/b", "a/b")],
)
def test_department_is_the_first_two_levels(node: str, department: str) -> None:
    assert department_of(node) == department


def test_nice_ticks_cover_the_maximum_in_round_steps() -> None:
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(97) == [0, 20, 40, 60, 80, 100]
    ticks = nice_ticks(1_234_567)
    assert ticks[0] == 0
    assert ticks[-1] >= 1_234_567
    assert len(ticks) <= 7


def test_number_formats() -> None:
    assert fmt_number(950) == "950"
    assert fmt_number(12_500) == "12.5k"
    assert fmt_number(3_200_000) == "3.2M"
    assert fmt_number(0.25) == "0.25"
    assert esc('<a b="c">') == "&lt;a b=&quot;c&quot;&gt;"
