"""Every header an adapter parses is anyone's input: a malformed webhook signature header (an
absurd or non-numeric timestamp, non-ASCII, empty or too many parts, none at all) is a
WebhookVerificationError with a short reason, never another exception; a processor's Retry-After
that is not a finite number of seconds is ignored."""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from adapters.base import ProcessorAdapter, TransientProcessorError, WebhookVerificationError
from adapters.bridgepay import BridgePayAdapter
from adapters.mock import MockAdapter
from adapters.stripe import StripeAdapter
from adapters.stripe.transformers import refund_answer, signature_header, verify_signature
from gateway.settings import BridgePayProcessor, StripeProcessor

SECRET = "whsec_test_HostileHeaders0123456789"
BODY = orjson.dumps({"id": "evt_hostile", "type": "refund.updated", "data": {"object": {
    "id": "re_hostile", "object": "refund", "amount": 100, "currency": "usd", "charge": "ch_hostile",
    "status": "succeeded"}}})
MOCK_BODY = orjson.dumps({"id": "evt_mock", "type": "refund.updated", "refund": {
    "id": "mre_1", "payment": "ch_1", "amount": 100, "currency": "EUR", "status": "succeeded"}})
NOW = int(time.time())
VALID_V1 = hmac.new(SECRET.encode(), b"%d." % NOW + BODY, hashlib.sha256).hexdigest()

# What an attacker can put in Stripe-Signature; aiohttp hands non-UTF-8 bytes over as surrogates.
HOSTILE_STRIPE = {
    "t_309_nines": f"t={'9' * 309},v1=00",  # int() reads it; float arithmetic overflows
    "t_5000_digits": f"t={'9' * 5000},v1=00",  # int() refuses more than 4300 digits
    "t_4301_zeros": f"t={'0' * 4301},v1=00",
    "t_2_pow_64": f"t={2 ** 64},v1=00",
    "t_padded_now": f"t={NOW:024d},v1={VALID_V1}",
    "t_exponent": "t=1e10,v1=00",
    "t_negative": "t=-1,v1=00",
    "t_hex": "t=0x10,v1=00",
    "t_float": f"t={NOW}.0,v1=00",
    "t_arabic_digits": "t=١٧١٨٠٠٠٠٠٠,v1=00",
    "t_superscript": "t=²,v1=00",
    "t_fullwidth": "t=１７１８,v1=00",
    "t_space": f"t= {NOW},v1=00",
    "t_nul": f"t={NOW}\x00,v1=00",
    "v1_non_ascii": f"t={NOW},v1=é",
    "v1_surrogate": f"t={NOW},v1=\udcff\udcfe",
    "v1_emoji": f"t={NOW},v1={'🙂' * 64}",
    "v1_huge": f"t={NOW},v1={'a' * 100_000}",
    "all_non_ascii": "ünïcödé",
    "empty": "",
    "spaces": "   ",
    "commas": "," * 50,
    "equals": "=",
    "empty_parts": "t=,v1=",
    "no_value": "t,v1",
    "many_parts": ",".join(["v1=00"] * 10_000) + f",t={NOW}",
    "many_parts_then_valid": f"t={NOW},v1={VALID_V1}," + ",".join(["v0=00"] * 100),
    "many_t": ",".join(f"t={NOW}" for _ in range(1000)) + ",v1=00",
    "newlines": f"t={NOW}\r\n,v1=00",
}

HOSTILE_MOCK = {
    "non_ascii": "é",
    "surrogates": "\udcff" * 64,
    "hex_then_non_ascii": hmac.new(SECRET.encode(), MOCK_BODY, hashlib.sha256).hexdigest()[:-1] + "é",
    "emoji": "🙂" * 64,
    "empty": "",
    "nul": "\x00" * 64,
    "huge": "0" * 100_000,
    "zero_hex": "0" * 64,
}


@pytest.fixture
async def stripe():
    adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", api_key="sk_test_hostile_headers",
                                            webhook_secrets=[SECRET]))
    yield adapter
    await adapter.aclose()


@pytest.fixture
def mock() -> MockAdapter:
    return MockAdapter("mock", webhook_secrets=[SECRET])


def _as_aiohttp(name: str, value: str) -> CIMultiDictProxy[str]:
    """Headers as the webhook route gets them from aiohttp."""
    return CIMultiDictProxy(CIMultiDict({name: value}))


def test_the_valid_examples_are_valid(mock):
    verify_signature(f"t={NOW},v1={VALID_V1}", BODY, [SECRET.encode()], now=NOW)  # NOW: when the module loaded
    good = hmac.new(SECRET.encode(), MOCK_BODY, hashlib.sha256).hexdigest()
    assert mock.parse_webhook({"Mock-Signature": good}, MOCK_BODY).event_id == "evt_mock"


@pytest.mark.parametrize("header", HOSTILE_STRIPE.values(), ids=HOSTILE_STRIPE.keys())
async def test_hostile_stripe_signature_header_is_a_verification_error(stripe, header):
    with pytest.raises(WebhookVerificationError) as info:
        verify_signature(header, BODY, [SECRET.encode()])
    assert 0 < len(str(info.value)) < 100
    with pytest.raises(WebhookVerificationError):
        stripe.parse_webhook(_as_aiohttp("Stripe-Signature", header), BODY)


@pytest.mark.parametrize("header", HOSTILE_MOCK.values(), ids=HOSTILE_MOCK.keys())
def test_hostile_mock_signature_header_is_a_verification_error(mock, header):
    with pytest.raises(WebhookVerificationError) as info:
        mock.parse_webhook(_as_aiohttp("Mock-Signature", header), MOCK_BODY)
    assert 0 < len(str(info.value)) < 100


async def test_missing_signature_header_is_a_verification_error(stripe, mock):
    for adapter in (stripe, mock):
        with pytest.raises(WebhookVerificationError):
            adapter.parse_webhook(CIMultiDictProxy(CIMultiDict()), BODY)


# --- any header at all ----------------------------------------------------------------------------------------

HEADER_VALUES = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="ascii"), max_size=200),
    st.builds(lambda t, v: f"t={t},v1={v}", st.integers(min_value=-10 ** 400, max_value=10 ** 400), st.text()),
    st.builds(lambda t, v: f"t={t},v1={v}", st.text(alphabet="0123456789", min_size=1, max_size=6000),
              st.text(max_size=80)),
    st.lists(st.sampled_from(["t=1", "v1=00", "v0=00", "", "=", "t=", "v1="]), max_size=60).map(",".join),
)


def _only_verification_errors(adapter: ProcessorAdapter, name: str, value: str, body: bytes) -> None:
    try:
        adapter.parse_webhook({name: value}, body)
    except WebhookVerificationError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=HEADER_VALUES)
def test_any_stripe_signature_header_verifies_or_is_a_verification_error(value):
    # Built here, not in a fixture: hypothesis runs the body many times per fixture.
    adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", api_key="sk_test_hostile_headers",
                                            webhook_secrets=[SECRET]))
    _only_verification_errors(adapter, "Stripe-Signature", value, BODY)


@settings(max_examples=300, deadline=None)
@given(value=HEADER_VALUES)
def test_any_mock_signature_header_verifies_or_is_a_verification_error(value):
    _only_verification_errors(MockAdapter("mock", webhook_secrets=[SECRET]), "Mock-Signature", value, MOCK_BODY)


@settings(max_examples=50, deadline=None)
@given(value=HEADER_VALUES)
def test_bridgepay_refuses_every_webhook_as_unverifiable(value):
    adapter = BridgePayAdapter(BridgePayProcessor(id="bridgepay", kind="bridgepay", base_url="https://bp.test",
                                                  username="u", password="p", merchant_code="1",
                                                  merchant_account_code="2"))
    with pytest.raises(WebhookVerificationError):
        adapter.parse_webhook({"Stripe-Signature": value, "Mock-Signature": value}, BODY)


def test_a_valid_header_still_verifies_after_the_hardening():
    verify_signature(signature_header(BODY, [SECRET.encode()], NOW), BODY, [SECRET.encode()], now=NOW)
    verify_signature(signature_header(BODY, [b"whsec_old", SECRET.encode()], NOW), BODY, [SECRET.encode()], now=NOW)


# --- a processor's headers -----------------------------------------------------------------------------------

RETRY_AFTER = {
    "seconds": ("2", 2.0), "fraction": ("0.5", 0.5), "negative": ("-3", 0.0),
    "overflow": ("1e999", None), "inf": ("inf", None), "minus_inf": ("-inf", None), "nan": ("nan", None),
    "400_digits": ("9" * 400, None), "arabic_digits": ("١٢", None), "fullwidth": ("１２", None),
    "http_date": ("Wed, 21 Oct 2015 07:28:00 GMT", None), "empty": ("", None), "surrogate": ("\udcff", None),
}


@pytest.mark.parametrize("value, expected", RETRY_AFTER.values(), ids=RETRY_AFTER.keys())
def test_retry_after_that_is_not_a_finite_number_of_seconds_is_ignored(value, expected):
    with pytest.raises(TransientProcessorError) as info:
        refund_answer(429, {"Retry-After": value}, b'{"error": {"type": "rate_limit_error"}}')
    assert info.value.retry_after == expected
