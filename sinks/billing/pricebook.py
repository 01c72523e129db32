"""The price book: versioned per-model prices per token type, with tiers, from TOML.

Prices are per million tokens, written as decimal strings ("150.00"), and
never touch a float. A version applies to whole usage months from its
`effective_from` (the first of a month). Each (model, token type) has a tier
schedule over the tenant's monthly quantity of that token type of that model:

- graduated: each tier's tokens at that tier's price (like income tax);
- volume: all tokens at the price of the tier the monthly total falls in.

Tier `i` covers quantities (up_to[i-1], up_to[i]]; the last tier has no
`up_to`. Tiers and minimums apply per billing account: top-level
`account_level` and `[accounts]` say which account a tenant is billed to
(see accounts.py); `tenant_minimums` keys are account ids. Everything is
validated before anything is billed or written.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

from tokenpulse.errors import ConfigError
from tokenpulse.sinks.billing.accounts import SEPARATOR, AccountMap

TOKEN_TYPES = ("input", "cached_input", "output", "reasoning")
# A token type without its own price is billed as part of its parent type
# (cached input as input, reasoning as output): never twice, never at zero.
PARENT_TYPE = {"cached_input": "input", "reasoning": "output"}
MODES = ("graduated", "volume")
PER_TOKENS = 1_000_000
CENT = Decimal("0.01")


class PriceBookError(ConfigError):
    """The price book is malformed; the message names the version, model and tier."""

    code = "pricebook_error"


@dataclass(frozen=True)
class Tier:
    up_to: int | None  # inclusive upper bound of monthly tokens; None = unbounded
    price_per_million: Decimal


@dataclass(frozen=True)
class Rate:
    """The tier schedule of one token type of one model."""

    mode: str
    tiers: tuple[Tier, ...]

    def cost(self, quantity: int) -> Decimal:
        """Exact (unrounded) cost of `quantity` tokens in one month."""
        return sum((amount for _, _, amount in self.breakdown(quantity)), Decimal(0))

    def breakdown(self, quantity: int) -> list[tuple[int, Decimal, Decimal]]:
        """(tokens, price per million, exact amount) per tier used."""
        out: list[tuple[int, Decimal, Decimal]] = []
        with localcontext() as ctx:
            ctx.prec = 60  # 10^18 tokens x prices with many decimals stay exact
            if self.mode == "volume":
                tier = next(t for t in self.tiers if t.up_to is None or quantity <= t.up_to)
                price = tier.price_per_million
                return [(quantity, price, Decimal(quantity) * price / PER_TOKENS)]
            lower = 0
            for tier in self.tiers:
                upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
                n = max(0, upper - lower)
                if n:
                    price = tier.price_per_million
                    out.append((n, price, Decimal(n) * price / PER_TOKENS))
                if tier.up_to is None or quantity <= tier.up_to:
                    break
                lower = tier.up_to
        return out


@dataclass(frozen=True)
class PriceBookVersion:
    id: str
    effective_from: date
    currency: str
    models: Mapping[str, Mapping[str, Rate]]
    minimum_monthly_fee: Decimal = Decimal(0)
    # Keyed by billing account id (the leaf tenant when account_level is 0).
    tenant_minimums: Mapping[str, Decimal] = field(default_factory=dict)

    def minimum_for(self, account_id: str) -> Decimal:
        return self.tenant_minimums.get(account_id, self.minimum_monthly_fee)

    def rate(self, model: str, token_type: str) -> tuple[str, Rate] | None:
        """(the type whose price applies, its rate), or None if the model has no price."""
        prices = self.models.get(model)
        if prices is None:
            return None
        if token_type in prices:
            return token_type, prices[token_type]
        parent = PARENT_TYPE.get(token_type)
        if parent and parent in prices:
            return parent, prices[parent]
        return None


@dataclass(frozen=True)
class PriceBook:
    versions: tuple[PriceBookVersion, ...]  # sorted by effective_from
    source: str = "<memory>"
    accounts: AccountMap = field(default_factory=AccountMap)

    def with_account_level(self, level: int) -> PriceBook:
        """This book with `account_level` replaced (`bill --account-level`), re-validated."""
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise PriceBookError(
                f"account level {level!r} must be an integer >= 0"
                " (0 bills each tenant, 1 its top-level org, ...)"
            )
        accounts = dataclasses.replace(self.accounts, level=level)
        _check_minimums(self.versions, accounts, self.source)
        return dataclasses.replace(self, accounts=accounts)

    def version_for(self, month: date) -> PriceBookVersion:
        applicable = [v for v in self.versions if v.effective_from <= month]
        if not applicable:
            first = self.versions[0].effective_from.isoformat()
            raise PriceBookError(
                f"price book {self.source} has no version effective for {month:%Y-%m}"
                f" (the first starts {first}); add a version with an earlier effective_from"
            )
        return applicable[-1]


def round_money(amount: Decimal) -> Decimal:
    """Half-up to cents: the one rounding rule of invoices."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _decimal(raw: object, where: str) -> Decimal:
    if not isinstance(raw, str):
        raise PriceBookError(
            f'{where}: price {raw!r} must be a decimal string such as "150.00"'
            " (numbers in TOML are floats or integers and are not accepted for money)"
        )
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise PriceBookError(f"{where}: {raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise PriceBookError(f"{where}: price {raw} must be a finite number >= 0")
    return value


def _rate(raw: object, where: str) -> Rate:
    if not isinstance(raw, dict):
        # A flat price; _decimal rejects floats and integers with the fix.
        return Rate("graduated", (Tier(None, _decimal(raw, where)),))
    unknown = set(raw) - {"mode", "tiers", "price"}
    if unknown:
        raise PriceBookError(f"{where}: unknown keys {sorted(unknown)}; use mode, tiers or price")
    if "price" in raw:
        return Rate("graduated", (Tier(None, _decimal(raw["price"], where)),))
    mode = raw.get("mode", "graduated")
    if mode not in MODES:
        raise PriceBookError(f"{where}: mode {mode!r} is not one of {', '.join(MODES)}")
    tiers_raw = raw.get("tiers")
    if not isinstance(tiers_raw, list) or not tiers_raw:
        raise PriceBookError(f"{where}: tiers must be a non-empty list")
    tiers: list[Tier] = []
    previous = 0
    for i, t in enumerate(tiers_raw, start=1):
        tw = f"{where} tier {i}"
        if not isinstance(t, dict) or "price" not in t or set(t) - {"up_to", "price"}:
            raise PriceBookError(f'{tw}: expected {{ up_to = <tokens>, price = "<decimal>" }}')
        up_to = t.get("up_to")
        last = i == len(tiers_raw)
        if up_to is None and not last:
            raise PriceBookError(f"{tw}: only the last tier may omit up_to")
        if up_to is not None:
            if last:
                raise PriceBookError(f"{tw}: the last tier must omit up_to (it is unbounded)")
            if isinstance(up_to, bool) or not isinstance(up_to, int) or up_to <= previous:
                raise PriceBookError(
                    f"{tw}: up_to {up_to!r} must be an integer above the previous tier's"
                    f" {previous}; tiers must be sorted and must not overlap"
                )
            previous = up_to
        tiers.append(Tier(up_to, _decimal(t["price"], tw)))
    return Rate(mode, tuple(tiers))


def _version(raw: Any, index: int, default_currency: str | None) -> PriceBookVersion:
    vid = str(raw.get("id", f"#{index}"))
    where = f"price book version {vid}"
    eff = raw.get("effective_from")
    if isinstance(eff, str):
        try:
            eff = date.fromisoformat(eff)
        except ValueError:
            raise PriceBookError(f"{where}: effective_from {eff!r} is not YYYY-MM-DD") from None
    if not isinstance(eff, date) or eff.day != 1:
        raise PriceBookError(f"{where}: effective_from must be the first day of a month")
    currency = raw.get("currency", default_currency)
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise PriceBookError(f"{where}: currency is missing or not a 3-letter code (e.g. USD)")
    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise PriceBookError(f'{where}: no [versions.models."<model>"] prices')
    models: dict[str, dict[str, Rate]] = {}
    for model, prices in models_raw.items():
        mw = f"{where} model {model!r}"
        if not isinstance(prices, dict):
            raise PriceBookError(f"{mw}: expected a table of token type -> price")
        unknown = set(prices) - set(TOKEN_TYPES)
        if unknown:
            raise PriceBookError(
                f"{mw}: unknown token type {sorted(unknown)}; use {', '.join(TOKEN_TYPES)}"
            )
        for required in ("input", "output"):
            if required not in prices:
                raise PriceBookError(f"{mw}: missing the {required!r} price")
        models[model] = {tt: _rate(p, f"{mw} {tt}") for tt, p in prices.items()}
    minimum = _decimal(str(raw.get("minimum_monthly_fee", "0")), f"{where} minimum_monthly_fee")
    tenant_minimums = {
        str(t): _decimal(v, f"{where} tenant_minimums {t!r}")
        for t, v in dict(raw.get("tenant_minimums", {})).items()
    }
    return PriceBookVersion(vid, eff, currency.upper(), models, minimum, tenant_minimums)


def _accounts(data: Mapping[str, Any], source: str) -> AccountMap:
    level = data.get("account_level", 0)
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise PriceBookError(
            f"price book {source}: account_level {level!r} must be an integer >= 0"
            " (0 bills each tenant, 1 its top-level org such as `globex`, ...)"
        )
    raw = data.get("accounts", {})
    if not isinstance(raw, dict):
        raise PriceBookError(
            f'price book {source}: [accounts] must be a table of "tenant/prefix" = "account-id"'
        )
    explicit: dict[str, str] = {}
    for prefix, account in raw.items():
        if (
            not isinstance(account, str)
            or not account
            or not prefix
            or prefix != prefix.strip(SEPARATOR)
        ):
            raise PriceBookError(
                f"price book {source}: [accounts] {prefix!r} = {account!r}: expected"
                ' "tenant/prefix" = "account-id" (no leading or trailing "/", a non-empty id)'
            )
        explicit[prefix] = account
    return AccountMap(level, explicit)


def _check_minimums(
    versions: Sequence[PriceBookVersion], accounts: AccountMap, source: str
) -> None:
    """A minimum for an account no tenant is billed to would invoice a phantom customer."""
    for v in versions:
        for account in v.tenant_minimums:
            if not accounts.can_produce(account):
                parent = SEPARATOR.join(account.split(SEPARATOR)[: accounts.level])
                raise PriceBookError(
                    f"price book {source} version {v.id}: tenant_minimums names {account!r},"
                    f" but with account_level = {accounts.level} no tenant is billed to it;"
                    f" name its account ({parent!r}) or map {account!r} in [accounts]"
                )


def parse_pricebook(data: Mapping[str, Any], source: str = "<memory>") -> PriceBook:
    versions_raw = data.get("versions")
    if not isinstance(versions_raw, list) or not versions_raw:
        raise PriceBookError(f"price book {source} has no [[versions]]")
    default_currency = data.get("currency")
    versions = sorted(
        (_version(v, i, default_currency) for i, v in enumerate(versions_raw, start=1)),
        key=lambda v: v.effective_from,
    )
    for a, b in itertools.pairwise(versions):
        if a.effective_from == b.effective_from:
            raise PriceBookError(
                f"price book versions {a.id} and {b.id} both start {a.effective_from}"
            )
    accounts = _accounts(data, source)
    _check_minimums(versions, accounts, source)
    return PriceBook(tuple(versions), source, accounts)


def load_pricebook(path: Path) -> PriceBook:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PriceBookError(
            f"price book {path} not found; pass --pricebook PATH or set TOKENPULSE_PRICEBOOK"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceBookError(f"price book {path} is not valid TOML: {exc}") from None
    return parse_pricebook(data, str(path))
