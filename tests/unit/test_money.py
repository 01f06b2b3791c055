"""Amounts are integer minor units of an ISO 4217 currency: what is accepted, what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.money import (
    MAX_MINOR_UNITS,
    InvalidAmount,
    UnknownCurrency,
    exponent,
    format_amount,
    normalise_currency,
    parse_minor_units,
)


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
