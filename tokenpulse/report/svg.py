"""Small server-side SVG charts (line and horizontal bar) for the self-contained report.

No JavaScript and nothing fetched: each chart is one inline `<svg>` with its
axes, ticks, unit-bearing axis labels and an accessible `<title>`. Every
string that reaches the markup goes through `esc`, because tenant ids,
model names and quota ids come from data.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Tableau 10: distinguishable in colour and (mostly) in grey; colour is never
# the only cue, the legend and data table name every series.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


def esc(value: object) -> str:
    """HTML/SVG-escape any value, quotes included (safe in text and attributes)."""
    return html.escape(str(value), quote=True)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt_number(value: float) -> str:
    """Compact SI form for axes and labels: 950, 12.5k, 3.2M, 1.05G."""
    v = abs(value)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            s = f"{value / div:.3g}"
            return f"{s}{suffix}"
    if v == 0 or v >= 1:
        return f"{value:.4g}"
    return f"{value:.2g}"


def nice_ticks(hi: float, count: int = 5) -> list[float]:
    """0 .. a round number >= hi, in about `count` round steps (1, 2, 2.5, 5 x 10^k)."""
    if not math.isfinite(hi) or hi <= 0:
        return [0.0, 1.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(hi / step - 1e-9)
    return [i * step for i in range(n + 1)]


def truncate(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]  # (x, y), x ascending
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class RefLine:
    """A horizontal reference line (a quota limit, a threshold)."""

    y: float
    label: str
    color: str = "#c0392b"


@dataclass(frozen=True)
class Frame:
    width: int = 1100
    height: int = 340
    left: int = 78
    right: int = 24
    top: int = 16
    bottom: int = 56

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.top - self.bottom


def _open(chart_id: str, title: str, frame: Frame) -> list[str]:
    return [
        f'<svg class="chart" data-chart="{esc(chart_id)}" role="img"'
        f' aria-labelledby="{esc(chart_id)}-t" viewBox="0 0 {frame.width} {frame.height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet"'
        f' xmlns="http://www.w3.org/2000/svg" font-family="{esc(FONT)}" font-size="12">',
        f'<title id="{esc(chart_id)}-t">{esc(title)}</title>',
    ]


def line_chart(
    *,
    chart_id: str,
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    x_ticks: Sequence[tuple[float, str]],
    x_range: tuple[float, float],
    ref_lines: Sequence[RefLine] = (),
    frame: Frame | None = None,
) -> str:
    """Lines over a numeric x (e.g. epoch seconds); y starts at 0."""
    f = frame or Frame()
    x0, x1 = x_range
    span = (x1 - x0) or 1.0
    y_max = max(
        [y for s in series for _, y in s.points] + [r.y for r in ref_lines] + [0.0],
    )
    ticks = nice_ticks(y_max * 1.05 if y_max else 1.0)
    top = ticks[-1]

    def px(x: float) -> float:
        return f.left + (x - x0) / span * f.plot_w

    def py(y: float) -> float:
        return f.top + f.plot_h - (y / top) * f.plot_h

    out = _open(chart_id, title, f)
    out += _y_axis(f, ticks, py, y_label)
    for x, label in x_ticks:
        xp = px(x)
        out.append(
            f'<line class="tick" x1="{xp:.1f}" y1="{f.top + f.plot_h}" x2="{xp:.1f}"'
            f' y2="{f.top + f.plot_h + 5}" stroke="#888"/>'
            f'<text x="{xp:.1f}" y="{f.top + f.plot_h + 19}" text-anchor="middle"'
            f' fill="#444">{esc(label)}</text>'
        )
    out.append(
        f'<text x="{f.left + f.plot_w / 2:.1f}" y="{f.height - 8}" text-anchor="middle"'
        f' fill="#222" font-weight="600">{esc(x_label)}</text>'
    )
    for ref in ref_lines:
        yp = py(ref.y)
        out.append(
            f'<line class="ref" x1="{f.left}" y1="{yp:.1f}" x2="{f.left + f.plot_w}"'
            f' y2="{yp:.1f}" stroke="{esc(ref.color)}" stroke-width="1.5"'
            f' stroke-dasharray="6 4"/>'
            # Labels sit at the left: cumulative curves start low there.
            f'<text x="{f.left + 6}" y="{yp - 5:.1f}" text-anchor="start"'
            f' fill="{esc(ref.color)}">{esc(ref.label)}</text>'
        )
    for s in series:
        if not s.points:
            continue
        d = " ".join(
            f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(s.points)
        )
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        out.append(
            f'<path class="series" d="{d}" fill="none" stroke="{esc(s.color)}"'
            f' stroke-width="2"{dash}><title>{esc(s.name)}</title></path>'
        )
        if len(s.points) <= 62:
            for x, y in s.points:
                out.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{esc(s.color)}">'
                    f"<title>{esc(s.name)}: {esc(fmt_number(y))}</title></circle>"
                )
    out.append("</svg>")
    return "".join(out)


def _y_axis(
    f: Frame, ticks: Sequence[float], py: Callable[[float], float], label: str
) -> list[str]:
    out = []
    for t in ticks:
        yp = py(t)
        out.append(
            f'<line class="grid" x1="{f.left}" y1="{yp:.1f}" x2="{f.left + f.plot_w}"'
            f' y2="{yp:.1f}" stroke="#e4e7eb"/>'
            f'<text x="{f.left - 8}" y="{yp + 4:.1f}" text-anchor="end" fill="#444">'
            f"{esc(fmt_number(t))}</text>"
        )
    base = f.top + f.plot_h
    out.append(
        f'<line class="axis" x1="{f.left}" y1="{f.top}" x2="{f.left}" y2="{base}" stroke="#888"/>'
        f'<line class="axis" x1="{f.left}" y1="{base}" x2="{f.left + f.plot_w}" y2="{base}"'
        f' stroke="#888"/>'
    )
    cy = f.top + f.plot_h / 2
    out.append(
        f'<text x="16" y="{cy:.1f}" text-anchor="middle" fill="#222" font-weight="600"'
        f' transform="rotate(-90 16 {cy:.1f})">{esc(label)}</text>'
    )
    return out


def bar_chart(
    *,
    chart_id: str,
    title: str,
    items: Sequence[tuple[str, float]],
    x_label: str,
    y_label: str,
    value_text: Callable[[float], str] = fmt_number,
    width: int = 1100,
) -> str:
    """Horizontal bars, one per (label, value), in the given order."""
    label_w = 230
    bar_h, gap = 22, 8
    top, bottom = 30, 50
    height = top + bottom + max(1, len(items)) * (bar_h + gap)
    f = Frame(width=width, height=height, left=label_w + 20, right=90, top=top, bottom=bottom)
    v_max = max([v for _, v in items] + [0.0])
    ticks = nice_ticks(v_max if v_max > 0 else 1.0)
    top_v = ticks[-1]

    def px(v: float) -> float:
        return f.left + max(0.0, v) / top_v * f.plot_w

    out = _open(chart_id, title, f)
    base = f.top + f.plot_h
    for t in ticks:
        xp = px(t)
        out.append(
            f'<line class="grid" x1="{xp:.1f}" y1="{f.top}" x2="{xp:.1f}" y2="{base}"'
            f' stroke="#e4e7eb"/>'
            f'<text x="{xp:.1f}" y="{base + 17}" text-anchor="middle" fill="#444">'
            f"{esc(fmt_number(t))}</text>"
        )
    out.append(
        f'<line class="axis" x1="{f.left}" y1="{f.top}" x2="{f.left}" y2="{base}" stroke="#888"/>'
        f'<line class="axis" x1="{f.left}" y1="{base}" x2="{f.left + f.plot_w}" y2="{base}"'
        f' stroke="#888"/>'
        f'<text x="{f.left + f.plot_w / 2:.1f}" y="{f.height - 10}" text-anchor="middle"'
        f' fill="#222" font-weight="600">{esc(x_label)}</text>'
        f'<text x="{f.left - 8}" y="{f.top - 10}" text-anchor="end" fill="#222"'
        f' font-weight="600">{esc(y_label)}</text>'
    )
    for i, (label, value) in enumerate(items):
        y = f.top + gap / 2 + i * (bar_h + gap)
        w = px(value) - f.left
        out.append(
            f'<text x="{f.left - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end" fill="#222">'
            f"<title>{esc(label)}</title>{esc(truncate(label, 34))}</text>"
            f'<rect class="bar" x="{f.left}" y="{y:.1f}" width="{max(w, 1):.1f}" height="{bar_h}"'
            f' fill="{color(0)}" rx="2"><title>{esc(label)}: {esc(value_text(value))}</title>'
            f"</rect>"
            f'<text x="{f.left + w + 6:.1f}" y="{y + bar_h / 2 + 4:.1f}" fill="#333">'
            f"{esc(value_text(value))}</text>"
        )
    out.append("</svg>")
    return "".join(out)
