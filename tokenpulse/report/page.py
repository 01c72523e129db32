"""Renders ReportData as one self-contained HTML page: inline CSS and SVG, no script, no fetch.

Every chart is a <figure> with a visible title, an SVG with unit-bearing
axis labels, a legend in text, and a <details> data table for screen
readers and for copying numbers. All data-derived text is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta

from tokenpulse.report.model import QuotaBurn, ReportData, TokenSeries
from tokenpulse.report.svg import (
    Frame,
    RefLine,
    Series,
    bar_chart,
    color,
    esc,
    fmt_number,
    line_chart,
)

MAX_SERIES = 8
MAX_QUOTA_CHARTS = 24
OTHER_COLOR = "#8a8f98"

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f6f8; color: #1f2933;
  font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }
header { background: #1f3a5f; color: #fff; padding: 22px 32px 18px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 650; }
header p { margin: 0; opacity: .85; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 48px; }
section { margin-top: 26px; }
section > h2 { font-size: 19px; margin: 0 0 10px; color: #1f3a5f; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 14px 16px; box-shadow: 0 1px 2px #0001; }
.card .k { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #52606d; }
.card .v { font-size: 24px; font-weight: 650; margin-top: 2px; }
figure { background: #fff; margin: 0 0 14px; padding: 14px 16px 10px; border-radius: 8px;
  box-shadow: 0 1px 2px #0001; min-width: 0; }
figure h3 { margin: 0 0 6px; font-size: 15px; font-weight: 620; overflow-wrap: anywhere; }
figure .sub { margin: -2px 0 6px; font-size: 13px; color: #52606d; overflow-wrap: anywhere; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; }
.grid2 figure { margin: 0; }
ul.legend { list-style: none; margin: 6px 0 4px; padding: 0; display: flex; flex-wrap: wrap;
  gap: 4px 16px; font-size: 13px; }
ul.legend li { display: flex; align-items: center; gap: 6px; overflow-wrap: anywhere; }
.sw { display: inline-block; width: 14px; height: 4px; border-radius: 2px; flex: none; }
.sw.dash { background-image: linear-gradient(90deg, #fff 50%, transparent 50%);
  background-size: 6px 4px; }
details { margin-top: 6px; font-size: 13px; }
summary { cursor: pointer; color: #1f3a5f; }
table { border-collapse: collapse; margin-top: 6px; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e4e7eb;
  overflow-wrap: anywhere; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #f0b429; padding: 10px 14px;
  border-radius: 4px; margin: 0 0 12px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; }
.ok { background: #e3f9e5; color: #207227; }
.warning { background: #fff3c4; color: #8d6708; }
.exceeded { background: #ffe3e3; color: #a61b1b; }
footer { color: #7b8794; font-size: 12px; text-align: center; padding: 0 0 24px; }
"""


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], numeric: set[int]) -> str:
    ths = "".join(
        f'<th scope="col"{" class=n" if i in numeric else ""}>{esc(h)}</th>'
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=n' if i in numeric else ''}>{esc(v)}</td>" for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        "<details><summary>Data table</summary><table>"
        f"<thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table></details>"
    )


def _legend(items: Iterable[tuple[str, str, bool]]) -> str:
    lis = "".join(
        f'<li><span class="sw{" dash" if dashed else ""}" style="background-color:{esc(c)}">'
        f"</span>{esc(name)}</li>"
        for name, c, dashed in items
    )
    return f'<ul class="legend">{lis}</ul>'


def _figure(title: str, svg: str, *, sub: str = "", legend: str = "", table: str = "") -> str:
    sub_html = f'<p class="sub">{esc(sub)}</p>' if sub else ""
    return f"<figure><h3>{esc(title)}</h3>{sub_html}{svg}{legend}{table}</figure>"


def _note(text: str) -> str:
    return f'<p class="note" role="note">{esc(text)}</p>'


def _series_name(s: TokenSeries) -> str:
    return f"{s.tenant_id} \u00b7 {s.model}"


def tokens_over_time(data: ReportData) -> str:
    title = "Tokens per day by tenant and model"
    if not data.series:
        return _note(f"no usage in {data.month:%Y-%m} in database {data.database}")
    shown = list(data.series[:MAX_SERIES])
    rest = data.series[MAX_SERIES:]
    named: list[tuple[str, dict[date, int]]] = [(_series_name(s), dict(s.by_day)) for s in shown]
    if rest:
        other: dict[date, int] = {}
        for s in rest:
            for d, v in s.by_day.items():
                other[d] = other.get(d, 0) + v
        named.append((f"other ({len(rest)} tenant-model pairs)", other))
    series = [
        Series(
            name,
            tuple((float(i), float(by_day.get(d, 0))) for i, d in enumerate(data.days)),
            # "other" is grey and dashed so it never reads as one more tenant.
            OTHER_COLOR if rest and k == len(shown) else color(k),
            dashed=bool(rest) and k == len(shown),
        )
        for k, (name, by_day) in enumerate(named)
    ]
    step = 5 if len(data.days) > 10 else 1
    ticks = [(float(i), f"{d:%b} {d.day}") for i, d in enumerate(data.days) if i % step == 0]
    svg = line_chart(
        chart_id="tokens",
        title=title,
        series=series,
        x_label="day (UTC)",
        y_label="tokens per day (input + output)",
        x_ticks=ticks,
        x_range=(0.0, float(max(1, len(data.days) - 1))),
    )
    legend = _legend((s.name, s.color, s.dashed) for s in series)
    rows = [
        (f"{d:%Y-%m-%d}", name, by_day.get(d, 0))
        for name, by_day in named
        for d in data.days
        if by_day.get(d)
    ]
    table = _table(("day", "tenant \u00b7 model", "tokens"), rows, {2})
    return _figure(
        title,
        svg,
        sub=f"top {len(shown)} of {len(data.series)} tenant-model pairs",
        legend=legend,
        table=table,
    )


def top_tenants(data: ReportData) -> str:
    title = "Top tenants by tokens"
    top = data.top_tenants(10)
    if not top:
        return ""
    svg = bar_chart(
        chart_id="top-tenants",
        title=title,
        items=[(t, float(v)) for t, v in top],
        x_label=f"tokens in {data.month:%B %Y} (input + output)",
        y_label="tenant",
    )
    table = _table(("tenant", "tokens"), top, {1})
    return _figure(title, svg, table=table)


def _period_label(period: str, t: datetime, tz_name: str) -> str:
    from zoneinfo import ZoneInfo

    local = t.astimezone(ZoneInfo(tz_name))
    if period == "minute":
        return f"{local:%H:%M:%S}"
    if period in ("hour", "day"):
        return f"{local:%H:%M}"
    return f"{local:%b} {local.day}"


def quota_chart(b: QuotaBurn, idx: int) -> str:
    d = b.definition
    limit = int(d.limit)
    status = (
        "exceeded"
        if b.used >= limit
        else "warning"
        if any(b.used * 100 >= t * limit for t in d.thresholds_pct)
        else "ok"
    )
    scope = f"model {d.model}" if d.model else "all models"
    title = f"Quota {d.quota_id}: {d.tenant_id}"
    sub = (
        f"{d.metric} tokens per {d.period} ({d.timezone}), {scope}, "
        f"{'hard' if d.hard else 'soft'} limit; period from {b.period_start:%Y-%m-%d %H:%M} UTC"
    )
    length = (b.period_end - b.period_start).total_seconds()
    points = [(0.0, 0.0)] + [
        ((t - b.period_start).total_seconds(), float(v)) for t, v in b.cumulative
    ]
    refs = [RefLine(float(limit), f"limit {fmt_number(limit)}")]
    refs += [RefLine(limit * t / 100, f"{t} %", "#b7791f") for t in d.thresholds_pct if t < 100]
    n_ticks = 6
    ticks = [
        (
            length * k / n_ticks,
            _period_label(
                d.period, b.period_start + timedelta(seconds=length * k / n_ticks), d.timezone
            ),
        )
        for k in range(n_ticks + 1)
    ]
    svg = line_chart(
        chart_id=f"quota-{idx}",
        title=f"{title} ({sub})",
        series=[Series("used so far", tuple(points), color(0))],
        x_label=f"time in period ({d.timezone})",
        y_label=f"{d.metric} tokens used",
        x_ticks=ticks,
        x_range=(0.0, length),
        ref_lines=refs,
        frame=Frame(width=560, height=280, left=70, right=16),
    )
    badge = f'<span class="badge {status}">{esc(status)}</span>'
    table = _table(
        ("bucket end (UTC)", "used so far", "limit"),
        [(f"{t:%Y-%m-%d %H:%M:%S}", v, limit) for t, v in b.cumulative],
        {1, 2},
    )
    used = f"used {b.used:,} of {limit:,} ({b.used_pct:.1f} %)"
    head = f'<p class="sub">{esc(used)} {badge}</p>'
    return _figure(title, svg, sub=sub, legend=head, table=table)


def quotas(data: ReportData) -> str:
    parts = []
    if data.quota_note:
        parts.append(_note(f"Quota burn-down omitted: {data.quota_note}"))
    parts += [_note(n) for n in data.notes]
    charts = [quota_chart(b, i) for i, b in enumerate(data.quotas[:MAX_QUOTA_CHARTS])]
    if len(data.quotas) > MAX_QUOTA_CHARTS:
        parts.append(_note(f"showing {MAX_QUOTA_CHARTS} of {len(data.quotas)} quotas"))
    if charts:
        parts.append('<div class="grid2">' + "".join(charts) + "</div>")
    return "".join(parts)


def costs(data: ReportData) -> str:
    if data.cost_note:
        return _note(data.cost_note)
    if not data.costs:
        return _note("no billable usage this month")
    title = f"Cost by department ({data.currency})"
    svg = bar_chart(
        chart_id="cost",
        title=title,
        items=[(c.department, float(c.cost)) for c in data.costs],
        x_label=f"cost in {data.currency}, {data.month:%B %Y} (usage at price-book rates)",
        y_label="department",
        value_text=lambda v: f"{v:,.2f}",
    )
    table = _table(
        ("department", "tokens", f"cost ({data.currency})", f"previous month ({data.currency})"),
        [(c.department, c.tokens, f"{c.cost:.2f}", f"{c.prev_cost:.2f}") for c in data.costs],
        {1, 2, 3},
    )
    sub = (
        "department = the first two levels of the tenant id (acme/research);"
        " minimums and late adjustments excluded"
    )
    return _figure(title, svg, sub=sub, table=table)


def capacity(data: ReportData) -> str:
    if data.capacity_note and not data.capacity:
        return _note(f"Capacity omitted: {data.capacity_note}")
    plans = data.capacity
    if not plans or data.capacity_window is None:
        return ""
    start, end = data.capacity_window
    weeks = max(len(p.forecast) for p in plans)
    ticks = [(0.0, "last 28 d")] + [
        (float(k + 1), f"{end + timedelta(weeks=k):%b} {(end + timedelta(weeks=k)).day}")
        for k in range(weeks)
    ]
    demand_series, gpu_series = [], []
    for i, p in enumerate(plans):
        name = f"{p.model} \u00b7 {p.region or 'no region'}"
        pts = [(0.0, p.sizing_tokens_per_s)] + [
            (float(k + 1), f.peak_tokens_per_s) for k, f in enumerate(p.forecast)
        ]
        demand_series.append(Series(name, tuple(pts), color(i)))
        for j, (gpu, n) in enumerate(sorted(p.gpus.items())):
            gpts = [(0.0, float(n))] + [
                (float(k + 1), float(f.gpus.get(gpu, 0))) for k, f in enumerate(p.forecast)
            ]
            gpu_series.append(
                Series(f"{name} \u00b7 {gpu}", tuple(gpts), color(i), dashed=j % 2 == 1)
            )
    x_range = (0.0, float(max(1, weeks)))
    sizing = data.capacity_sizing
    demand_svg = line_chart(
        chart_id="capacity-demand",
        title="Peak demand now and forecast",
        series=demand_series,
        x_label="week starting (UTC); now = the last 28 days",
        y_label=f"{sizing} tokens per second",
        x_ticks=ticks,
        x_range=x_range,
    )
    gpu_svg = line_chart(
        chart_id="capacity-gpus",
        title="GPUs needed now and forecast",
        series=gpu_series,
        x_label="week starting (UTC)",
        y_label=f"GPUs needed (+{data.capacity_headroom:.0%} headroom)",
        x_ticks=ticks,
        x_range=x_range,
    )
    rates = _table(
        (
            "model",
            "region",
            "p50 tok/s",
            "p95 tok/s",
            "p99 tok/s",
            "max tok/s",
            "GPUs now",
            f"GPUs in {weeks} weeks",
        ),
        [
            (
                p.model,
                p.region or "-",
                f"{p.rates['p50']:.1f}",
                f"{p.rates['p95']:.1f}",
                f"{p.rates['p99']:.1f}",
                f"{p.rates['max']:.1f}",
                ", ".join(f"{g} {n}" for g, n in sorted(p.gpus.items())) or "no serving entry",
                ", ".join(f"{g} {n}" for g, n in sorted(p.forecast[-1].gpus.items()))
                if p.forecast
                else "-",
            )
            for p in plans
        ],
        {2, 3, 4, 5},
    )
    window = f"demand from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC, sized at {sizing}"
    out = _figure(
        "Demand: peak tokens/s now and forecast",
        demand_svg,
        sub=window,
        legend=_legend((s.name, s.color, s.dashed) for s in demand_series),
        table=rates,
    )
    if gpu_series:
        out += _figure(
            "GPUs needed now and forecast",
            gpu_svg,
            sub=f"per GPU type of the serving table, with {data.capacity_headroom:.0%} headroom",
            legend=_legend((s.name, s.color, s.dashed) for s in gpu_series),
        )
    else:
        out += _note("no model in the demand has an entry in the serving table: GPUs not sized")
    return out


def _card(label: str, value: str) -> str:
    return (
        f'<div class="card"><div class="k">{esc(label)}</div>'
        f'<div class="v">{esc(value)}</div></div>'
    )


def render_html(data: ReportData) -> str:
    """The whole page as one string (UTF-8, no external resource)."""
    tenants = len({s.tenant_id for s in data.series})
    cards = [
        _card("tokens", fmt_number(data.total_tokens)),
        _card("events", f"{data.events:,}"),
        _card("tenants", f"{tenants:,}"),
    ]
    if data.costs:
        total = sum(c.cost for c in data.costs)
        cards.append(_card(f"usage cost ({data.currency})", f"{total:,.2f}"))
    generated = data.generated_at.astimezone(UTC)
    sections = [
        ("Summary", f'<div class="cards">{"".join(cards)}</div>'),
        ("Usage", tokens_over_time(data) + top_tenants(data)),
        ("Quotas", quotas(data) or _note("no token quotas defined")),
        ("Cost by department", costs(data)),
        ("GPU capacity", capacity(data)),
    ]
    body = "".join(f"<section><h2>{esc(h)}</h2>{content}</section>" for h, content in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may load: no script, no remote style, font or image.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\';'
        " style-src 'unsafe-inline'; img-src data:\">"
        f"<title>tokenpulse report {data.month:%Y-%m}</title><style>{CSS}</style></head><body>"
        f"<header><h1>tokenpulse usage report \u2014 {data.month:%B %Y}</h1>"
        f"<p>database {esc(data.database)} \u00b7 as of {data.as_of:%Y-%m-%d %H:%M} UTC"
        f" \u00b7 generated {generated:%Y-%m-%d %H:%M:%S} UTC</p></header>"
        f"<main>{body}</main>"
        "<footer>tokenpulse \u2014 tokens from ClickHouse usage_by_hour; costs from the price book;"
        " capacity from demand_by_minute and the serving table.</footer>"
        "</body></html>\n"
    )
