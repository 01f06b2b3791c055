"""Amounts are integer minor units of an ISO 4217 currency: what is accepted, what is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iso4217 import Currency as Iso4217

from gateway.domain.money import (
    MAX_MINOR_UNITS,
    InvalidAmount,
    UnknownCurrency,
    exponent,
    format_amount,
    normalise_currency,
    parse_minor_units,
)



def _known(code: str) -> bool:
    try:
        normalise_currency(code)
    except UnknownCurrency:
        return False
    return True


# --- currencies -------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["EUR", "eur", "Eur", "eUR"])
def test_currency_code_in_any_case_is_normalised_to_upper_case(code):
    assert normalise_currency(code) == "EUR"


@pytest.mark.parametrize("code", ["usd", "JPY", "kwd", "gbp", "CHF"])
def test_card_currencies_are_accepted(code):
    assert normalise_currency(code) == code.upper()


@pytest.mark.parametrize("code", [
    "XXX",  # "no currency involved"
    "XTS",  # reserved for testing
    "EURO",
    "EU",
    "",
    " EUR",
    "EUR ",
    "ZZZ",
])
def test_unknown_or_malformed_currency_code_is_rejected(code):
    with pytest.raises(UnknownCurrency):
        normalise_currency(code)


@pytest.mark.parametrize("code", ["XAU", "XAG", "XPT", "XPD", "xau"])
def test_precious_metals_are_not_money_the_gateway_refunds(code):
    with pytest.raises(UnknownCurrency):
        normalise_currency(code)


@pytest.mark.parametrize("code", [123, None, 978, b"EUR", ["EUR"], 2.0])
def test_currency_that_is_not_a_string_is_rejected(code):
    with pytest.raises(UnknownCurrency):
        normalise_currency(code)


def test_unknown_currency_is_a_value_error_whose_message_names_the_code():
    with pytest.raises(ValueError, match="EURO"):
        normalise_currency("EURO")


@pytest.mark.parametrize(("currency", "places"), [
    ("EUR", 2), ("USD", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("eur", 2), ("jpy", 0),
])
def test_exponent_is_the_number_of_decimal_places_of_the_minor_unit(currency, places):
    assert exponent(currency) == places


# ISO 4217's minor units where they are not 2, written out here rather than read from the module's
# own source: every other code the module takes has 2.
NOT_TWO_PLACES = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0, "UGX": 0,
    "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}
ISO_CODES = sorted(c.code for c in Iso4217)
KNOWN_CODES = [c for c in ISO_CODES if _known(c)]


def _any_case(code: str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from([ch.lower(), ch.upper()]) for ch in code)).map("".join)


def test_the_module_knows_the_card_currencies_and_no_metal_or_fund():
    assert {"EUR", "USD", "GBP", "JPY", "KWD", "CHF", "SEK", "BRL", *NOT_TWO_PLACES} <= set(KNOWN_CODES)
    assert not {"XAU", "XAG", "XDR", "XXX", "XTS", "CLF", "UYW", "BOV"} & set(KNOWN_CODES)
    assert len(KNOWN_CODES) > 150


@settings(max_examples=500)
@given(code=st.sampled_from(KNOWN_CODES).flatmap(_any_case),
       amount=st.integers(min_value=-MAX_MINOR_UNITS, max_value=MAX_MINOR_UNITS))
def test_every_known_code_in_any_case_has_its_iso_exponent_and_formats_back_to_the_same_amount(code, amount):
    upper = code.upper()
    places = NOT_TWO_PLACES.get(upper, 2)
    assert normalise_currency(code) == upper
    assert exponent(code) == places
    number, shown = format_amount(amount, code).split(" ")
    assert shown == upper
    assert len(number.partition(".")[2]) == places  # no dot at all when places == 0
    assert Decimal(number).scaleb(places) == amount


@given(code=st.sampled_from(sorted(set(ISO_CODES) - set(KNOWN_CODES))).flatmap(_any_case))
def test_every_iso_code_that_is_not_card_money_is_refused_in_any_case(code):
    with pytest.raises(UnknownCurrency):
        exponent(code)


def test_exponent_of_an_unknown_currency_is_rejected():
    with pytest.raises(UnknownCurrency):
        exponent("XAU")


# --- amounts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 1050, 999_999, MAX_MINOR_UNITS])
def test_positive_integer_amount_is_accepted_unchanged(value):
    assert parse_minor_units(value) == value
    assert type(parse_minor_units(value)) is int


@pytest.mark.parametrize("value", [10.0, 10.5, 0.0, 1e3, float("nan"), float("inf")])
def test_float_amount_is_rejected_even_when_whole(value):
    with pytest.raises(InvalidAmount, match="integer"):
        parse_minor_units(value)


@pytest.mark.parametrize("value", ["100", "10.50", "", "1e3"])
def test_string_amount_is_rejected(value):
    with pytest.raises(InvalidAmount, match="integer"):
        parse_minor_units(value)


@pytest.mark.parametrize("value", [True, False])
def test_boolean_amount_is_rejected_although_bool_is_an_int(value):
    with pytest.raises(InvalidAmount, match="integer"):
        parse_minor_units(value)


@pytest.mark.parametrize("value", [None, [100], {"amount": 100}])
def test_amount_of_another_type_is_rejected(value):
    with pytest.raises(InvalidAmount):
        parse_minor_units(value)


@pytest.mark.parametrize("value", [0, -1, -1050, -MAX_MINOR_UNITS])
def test_zero_or_negative_amount_is_rejected(value):
    with pytest.raises(InvalidAmount, match="greater than zero"):
        parse_minor_units(value)


@pytest.mark.parametrize("value", [MAX_MINOR_UNITS + 1, 2**63, 10**30])
def test_amount_above_the_maximum_is_rejected(value):
    with pytest.raises(InvalidAmount, match="exceed"):
        parse_minor_units(value)


def test_invalid_amount_is_a_value_error():
    with pytest.raises(ValueError):
        parse_minor_units(0)


@given(st.integers(min_value=1, max_value=MAX_MINOR_UNITS))
def test_any_integer_from_one_to_the_maximum_is_accepted_unchanged(value):
    assert parse_minor_units(value) == value


@given(st.integers(max_value=0) | st.integers(min_value=MAX_MINOR_UNITS + 1))
def test_any_integer_outside_one_to_the_maximum_is_rejected(value):
    with pytest.raises(InvalidAmount):
        parse_minor_units(value)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_is_rejected(value):
    with pytest.raises(InvalidAmount):
        parse_minor_units(value)


# --- formatting -------------------------------------------------------------------------------

@pytest.mark.parametrize(("amount", "currency", "text"), [
    (1050, "EUR", "10.50 EUR"),
    (5, "EUR", "0.05 EUR"),
    (100, "EUR", "1.00 EUR"),
    (0, "EUR", "0.00 EUR"),
    (-1050, "EUR", "-10.50 EUR"),
    (-5, "EUR", "-0.05 EUR"),
    (1050, "JPY", "1050 JPY"),
    (-7, "JPY", "-7 JPY"),
    (1, "KWD", "0.001 KWD"),
    (12345, "KWD", "12.345 KWD"),
    (MAX_MINOR_UNITS, "EUR", "10000000000000.00 EUR"),
])
def test_amount_is_formatted_in_major_units_with_the_currency(amount, currency, text):
    assert format_amount(amount, currency) == text


def test_formatting_an_unknown_currency_is_rejected():
    with pytest.raises(UnknownCurrency):
        format_amount(100, "XXX")


@pytest.mark.parametrize(("currency", "places"), [("JPY", 0), ("EUR", 2), ("KWD", 3)])
@given(amount=st.integers(min_value=-MAX_MINOR_UNITS, max_value=MAX_MINOR_UNITS))
def test_formatted_amount_reads_back_as_the_same_minor_units(currency, places, amount):
    text = format_amount(amount, currency)
    number, code = text.split(" ")
    assert code == currency
    whole, _, frac = number.lstrip("-").partition(".")
    assert len(frac) == places
    assert whole == whole.lstrip("0") or whole == "0"  # no padding in front
    assert number.startswith("-") == (amount < 0)
    sign = -1 if amount < 0 else 1
    assert sign * int(whole + frac) == amount


@pytest.mark.parametrize("code", ["BOV", "CLF", "USN", "UYW", "CHE"])
def test_funds_codes_are_not_card_currencies(code):
    with pytest.raises(UnknownCurrency):
        normalise_currency(code)


def test_format_amount_normalises_the_currency_code():
    assert format_amount(1050, "eur") == "10.50 EUR"
