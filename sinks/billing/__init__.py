"""Billing: the price book (TOML, tiers, versions), monthly invoices and chargeback."""

from tokenpulse.sinks.billing.invoice import (
    Invoice,
    InvoiceLine,
    PricingError,
    UsageRow,
    compute_invoices,
    fetch_usage,
    parse_month,
    write_invoices,
)
from tokenpulse.sinks.billing.pricebook import (
    TOKEN_TYPES,
    PriceBook,
    PriceBookError,
    load_pricebook,
    parse_pricebook,
    round_money,
)

__all__ = [
    "TOKEN_TYPES",
    "Invoice",
    "InvoiceLine",
    "PriceBook",
    "PriceBookError",
    "PricingError",
    "UsageRow",
    "compute_invoices",
    "fetch_usage",
    "load_pricebook",
    "parse_month",
    "parse_pricebook",
    "round_money",
    "write_invoices",
]
