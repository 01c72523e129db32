"""Billing: the price book (TOML, tiers, versions), billing accounts, invoices, chargeback."""

from tokenpulse.sinks.billing.accounts import AccountMap, allocate_cents
from tokenpulse.sinks.billing.invoice import (
    Invoice,
    InvoiceLine,
    PricingError,
    UsageRow,
    compute_invoices,
    parse_month,
)
from tokenpulse.sinks.billing.pricebook import (
    TOKEN_TYPES,
    PriceBook,
    PriceBookError,
    load_pricebook,
    parse_pricebook,
    round_money,
)
from tokenpulse.sinks.billing.store import fetch_usage, write_invoices

__all__ = [
    "TOKEN_TYPES",
    "AccountMap",
    "Invoice",
    "InvoiceLine",
    "PriceBook",
    "PriceBookError",
    "PricingError",
    "UsageRow",
    "allocate_cents",
    "compute_invoices",
    "fetch_usage",
    "load_pricebook",
    "parse_month",
    "parse_pricebook",
    "round_money",
    "write_invoices",
]
