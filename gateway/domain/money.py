"""Money as integer minor units plus an ISO 4217 currency; never floats."""

from __future__ import annotations

from iso4217 import Currency

# The largest amount the gateway accepts: far above any card payment and well
# inside Postgres bigint, so sums of amounts can never overflow.
MAX_MINOR_UNITS = 10**15


class UnknownCurrency(ValueError):
    pass


class InvalidAmount(ValueError):
    pass


# ISO 4217 funds codes: units of account, never what a card was charged in.
_FUNDS = frozenset({"BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "UYI", "UYW", "XSU", "XUA"})


def _exponents() -> dict[str, int]:
    # Metals and special units (XAU, XDR, ...) have no minor unit: not card money either.
    return {c.code: c.exponent for c in Currency if c.exponent is not None and c.code not in _FUNDS}


_EXPONENTS = _exponents()


def normalise_currency(code: object) -> str:
    """Return the upper-case ISO 4217 code, or raise UnknownCurrency."""
    if not isinstance(code, str) or code.upper() not in _EXPONENTS:
        raise UnknownCurrency(f"unknown currency {code!r}: use an ISO 4217 code such as EUR")
    return code.upper()


def exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit: 2 for EUR, 0 for JPY, 3 for KWD."""
    return _EXPONENTS[normalise_currency(currency)]


def parse_minor_units(value: object) -> int:
    """Accept a positive JSON integer of minor units; reject floats, strings and booleans."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount("amount must be an integer number of minor units (e.g. 1050 for 10.50 EUR)")
    if value <= 0:
        raise InvalidAmount("amount must be greater than zero")
    if value > MAX_MINOR_UNITS:
        raise InvalidAmount(f"amount must not exceed {MAX_MINOR_UNITS} minor units")
    return value


def decimal_amount(amount: int, currency: str) -> str:
    """The amount in major units, without the currency: decimal_amount(1050, 'EUR') == '10.50'."""
    exp = exponent(currency)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exp)
    return f"{sign}{whole}.{frac:0{exp}d}" if exp else f"{sign}{whole}"


def format_amount(amount: int, currency: str) -> str:
    """Human-readable major units for messages: format_amount(1050, 'EUR') == '10.50 EUR'."""
    currency = normalise_currency(currency)
    return f"{decimal_amount(amount, currency)} {currency}"
