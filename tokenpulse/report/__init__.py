"""The users' report: one self-contained HTML page of usage, quotas, costs and capacity.

Reading guide: `data.gather` reads ClickHouse (through the billing and
capacity code's own APIs) into a `model.ReportData`; `quotas` reads the
quota definitions from Kafka and computes each burn-down; `page.render_html`
turns the data into HTML with the inline SVG charts of `svg`. Nothing in the
page is fetched when it is opened.
"""

from tokenpulse.report.data import Inputs, as_of, gather
from tokenpulse.report.model import DepartmentCost, QuotaBurn, ReportData, TokenSeries
from tokenpulse.report.page import render_html
from tokenpulse.report.quotas import load_definitions

__all__ = [
    "DepartmentCost",
    "Inputs",
    "QuotaBurn",
    "ReportData",
    "TokenSeries",
    "as_of",
    "gather",
    "load_definitions",
    "render_html",
]
