"""Stripe webhooks: the Stripe-Signature check, with the official `stripe` package as the independent
reference for what a valid header is, and the reduction of realistic Stripe events to ours."""

from __future__ import annotations

import time

import orjson
import pytest
import stripe
from pydantic import SecretStr

from adapters.base import PaymentSnapshot, WebhookEvent, WebhookPayloadError, WebhookVerificationError
from adapters.stripe import StripeAdapter
from adapters.stripe.transformers import parse_event, signature_header, verify_signature
from gateway.domain.refunds import Outcome
from gateway.settings import StripeProcessor

SECRET = "whsec_test_CurrentEndpointSecret0123"
OLD_SECRET = "whsec_test_PreviousEndpointSecret4567"
STRANGER_SECRET = "whsec_test_SomeoneElsesSecret8901"

CHARGE = "ch_3PqRstUvWxYz0123"
INTENT = "pi_3PqRstUvWxYz0123"
CUSTOMER = "cus_QabcDEF123"


# --- realistic Stripe payloads (API version 2024-06-20, trimmed of fields nobody reads) ----------------

def charge_object(**overrides) -> dict:
    obj = {
        "id": CHARGE, "object": "charge", "amount": 4200, "amount_captured": 4200, "amount_refunded": 0,
        "application": None, "balance_transaction": "txn_3PqRstCharge", "billing_details": {
            "address": {"city": "Köln", "country": "DE", "line1": "Domplatz 1", "postal_code": "50667"},
            "email": "zoe@example.com", "name": "Zoë Müller", "phone": None},
        "captured": True, "created": 1718000000, "currency": "eur", "customer": CUSTOMER,
        "description": "Invoice INV-2024-0042", "disputed": False, "failure_code": None, "failure_message": None,
        "livemode": False, "metadata": {"invoice_id": "INV-2024-0042", "billing_account": "acct-77"},
        "outcome": {"network_status": "approved_by_network", "reason": None, "risk_level": "normal",
                    "seller_message": "Payment complete.", "type": "authorized"},
        "paid": True, "payment_intent": INTENT, "payment_method": "pm_1PqRstCard",
        "payment_method_details": {"card": {"brand": "visa", "country": "DE", "exp_month": 12, "exp_year": 2030,
                                            "last4": "4242", "network": "visa"}, "type": "card"},
        "receipt_url": "https://pay.stripe.com/receipts/payment/CAcaFwo", "refunded": False, "status": "succeeded",
    }
    obj.update(overrides)
    return obj


def payment_intent_object(**overrides) -> dict:
    obj = {
        "id": INTENT, "object": "payment_intent", "amount": 5000, "amount_capturable": 0, "amount_received": 4500,
        "capture_method": "manual", "client_secret": "pi_3PqRstUvWxYz0123_secret_abc", "created": 1718000000,
        "currency": "usd", "customer": CUSTOMER, "description": None, "latest_charge": CHARGE, "livemode": False,
        "metadata": {"invoice_id": "INV-2024-0043"}, "payment_method": "pm_1PqRstCard",
        "payment_method_types": ["card"], "status": "succeeded",
    }
    obj.update(overrides)
    return obj


def refund_object(status: str = "succeeded", *, id: str = "re_3PqRst0001", refund_id: str | None = "rf_01HZXK4Q7M",
                  **overrides) -> dict:
    metadata = {"refund_id": refund_id, "invoice_id": "INV-2024-0042"} if refund_id else {}
    obj = {
        "id": id, "object": "refund", "amount": 1500, "balance_transaction": "txn_3PqRstRefund", "charge": CHARGE,
        "created": 1718003600, "currency": "eur", "destination_details": {"card": {"type": "refund"}, "type": "card"},
        "metadata": metadata, "payment_intent": INTENT, "reason": "requested_by_customer",
        "receipt_number": None, "source_transfer_reversal": None, "status": status, "transfer_reversal": None,
    }
    obj.update(overrides)
    return obj


def event(event_type: str, obj: dict, *, event_id: str = "evt_3PqRstEvent0001", created: int = 1718003601,
          previous: dict | None = None) -> dict:
    data = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id, "object": "event", "api_version": "2024-06-20", "created": created, "data": data,
            "livemode": False, "pending_webhooks": 1,
            "request": {"id": "req_AbCdEf123", "idempotency_key": "rf_01HZXK4Q7M:refund"}, "type": event_type}


def body_of(evt: dict) -> bytes:
    return orjson.dumps(evt)


# --- signing with the official library ----------------------------------------------------------------

def stripe_signed(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header computed by the official stripe package, not by our code."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={stripe.WebhookSignature._compute_signature(f'{t}.{body.decode()}', secret)}"


def adapter_with(*secrets: str) -> StripeAdapter:
    return StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url="https://stripe.test",
                                         api_key=SecretStr("sk_test_webhooks_0123456789"),
                                         webhook_secrets=[SecretStr(s) for s in secrets]))


@pytest.fixture
async def adapter():
    adapter = adapter_with(SECRET, OLD_SECRET)
    yield adapter
    await adapter.aclose()


@pytest.fixture
def body() -> bytes:
    # Non-ASCII on purpose: the signature is over the raw UTF-8 bytes.
    return body_of(event("charge.succeeded", charge_object()))


# --- signatures: agreement with the official library ----------------------------------------------------

def test_header_signed_by_the_stripe_library_is_accepted_by_verify_signature(body):
    verify_signature(stripe_signed(body, SECRET), body, [SECRET.encode()])


def test_header_from_the_stripe_librarys_generator_is_accepted_by_verify_signature(body):
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
    verify_signature(header, body, [SECRET.encode()])


def test_header_signed_by_the_stripe_library_is_accepted_by_parse_webhook(adapter, body):
    parsed = adapter.parse_webhook({"Stripe-Signature": stripe_signed(body, SECRET)}, body)
    assert parsed.event_id == "evt_3PqRstEvent0001"
    assert parsed.type == "charge.succeeded"


def test_header_built_by_signature_header_is_accepted_by_the_stripe_library(body):
    header = signature_header(body, [SECRET.encode()], int(time.time()))
    constructed = stripe.Webhook.construct_event(body, header, SECRET)
    assert constructed.id == "evt_3PqRstEvent0001"


def test_header_built_by_signature_header_for_another_secret_is_rejected_by_the_stripe_library(body):
    header = signature_header(body, [STRANGER_SECRET.encode()], int(time.time()))
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, header, SECRET)


def test_header_built_by_signature_header_with_two_secrets_is_accepted_by_the_stripe_library_for_either(body):
    header = signature_header(body, [SECRET.encode(), OLD_SECRET.encode()], int(time.time()))
    assert header.count("v1=") == 2
    for secret in (SECRET, OLD_SECRET):
        assert stripe.Webhook.construct_event(body, header, secret).id == "evt_3PqRstEvent0001"


# --- secret rotation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("signing_secret", [SECRET, OLD_SECRET], ids=["current", "previous"])
def test_during_rotation_a_header_signed_with_either_secret_is_accepted(adapter, body, signing_secret):
    verify_signature(stripe_signed(body, signing_secret), body, [SECRET.encode(), OLD_SECRET.encode()])
    assert adapter.parse_webhook({"Stripe-Signature": stripe_signed(body, signing_secret)}, body).event_id


def test_during_rotation_a_header_with_two_v1_entries_is_accepted_when_one_matches(adapter, body):
    t = int(time.time())
    stranger = stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", STRANGER_SECRET)
    ours = stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", OLD_SECRET)
    header = f"t={t},v1={stranger},v1={ours}"
    verify_signature(header, body, [SECRET.encode(), OLD_SECRET.encode()])
    assert adapter.parse_webhook({"Stripe-Signature": header}, body).event_id == "evt_3PqRstEvent0001"


def test_header_with_two_v1_entries_signed_by_two_secrets_is_accepted_by_an_endpoint_knowing_one(body):
    header = signature_header(body, [STRANGER_SECRET.encode(), SECRET.encode()], int(time.time()))
    verify_signature(header, body, [SECRET.encode()])


def test_header_with_a_v0_and_a_matching_v1_is_accepted(body):
    t = int(time.time())
    header = f"t={t},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39," \
             f"v1={stripe.WebhookSignature._compute_signature(f'{t}.{body.decode()}', SECRET)}"
    verify_signature(header, body, [SECRET.encode()])


# --- signatures that must be refused ----------------------------------------------------------------------

def test_header_signed_with_another_secret_is_rejected(adapter, body):
    header = stripe_signed(body, STRANGER_SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_signature(header, body, [SECRET.encode(), OLD_SECRET.encode()])
    with pytest.raises(WebhookVerificationError):
        adapter.parse_webhook({"Stripe-Signature": header}, body)


def test_tampered_body_is_rejected_like_the_stripe_library_rejects_it(adapter, body):
    header = stripe_signed(body, SECRET)
    tampered = body.replace(b'"amount":4200', b'"amount":420000')
    assert tampered != body
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(tampered, header, SECRET, 300)
    with pytest.raises(WebhookVerificationError):
        verify_signature(header, tampered, [SECRET.encode()])
    with pytest.raises(WebhookVerificationError):
        adapter.parse_webhook({"Stripe-Signature": header}, tampered)


def test_reserialised_body_is_rejected_because_the_raw_bytes_are_signed():
    raw = b'{\n  "id": "evt_3PqRstEvent0001",\n  "object": "event",\n  "type": "customer.created",\n' \
          b'  "data": {"object": {"id": "cus_1"}}\n}'
    header = stripe_signed(raw, SECRET)
    verify_signature(header, raw, [SECRET.encode()])
    with pytest.raises(WebhookVerificationError):
        verify_signature(header, orjson.dumps(orjson.loads(raw)), [SECRET.encode()])


def test_signature_for_the_body_under_another_timestamp_is_rejected(body):
    t = int(time.time())
    v1 = stripe.WebhookSignature._compute_signature(f"{t - 10}.{body.decode()}", SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_signature(f"t={t},v1={v1}", body, [SECRET.encode()])


@pytest.mark.parametrize("age", [-299, 0, 299], ids=["299s_ahead", "now", "299s_old"])
def test_timestamp_within_300_seconds_is_accepted(body, age):
    now = 1_718_003_700
    verify_signature(stripe_signed(body, SECRET, now - age), body, [SECRET.encode()], now=now)


@pytest.mark.parametrize("age", [301, 3600, -301, -3600],
                         ids=["301s_old", "an_hour_old", "301s_ahead", "an_hour_ahead"])
def test_timestamp_more_than_300_seconds_from_now_is_rejected(body, age):
    now = 1_718_003_700
    with pytest.raises(WebhookVerificationError):
        verify_signature(stripe_signed(body, SECRET, now - age), body, [SECRET.encode()], now=now)


@pytest.mark.parametrize("age", [301, -301], ids=["old", "ahead"])
def test_parse_webhook_rejects_a_timestamp_more_than_300_seconds_from_the_clock(adapter, body, age):
    header = stripe_signed(body, SECRET, int(time.time()) - age)
    with pytest.raises(WebhookVerificationError):
        adapter.parse_webhook({"Stripe-Signature": header}, body)


@pytest.mark.parametrize("header", [None, ""], ids=["absent", "empty"])
def test_missing_signature_header_is_rejected(body, header):
    with pytest.raises(WebhookVerificationError):
        verify_signature(header, body, [SECRET.encode()])


def test_parse_webhook_without_a_signature_header_is_rejected(adapter, body):
    with pytest.raises(WebhookVerificationError):
        adapter.parse_webhook({"Content-Type": "application/json"}, body)


def _v1(body: bytes, t: int | str) -> str:
    return stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", SECRET)


MALFORMED = {
    "no_t": lambda body, t: f"v1={_v1(body, t)}",
    "no_v1": lambda body, t: f"t={t}",
    "only_v0": lambda body, t: f"t={t},v0={_v1(body, t)}",
    "non_digit_t": lambda body, t: f"t=abc,v1={_v1(body, 'abc')}",
    "negative_t": lambda body, t: f"t=-{t},v1={_v1(body, f'-{t}')}",
    "fractional_t": lambda body, t: f"t={t}.5,v1={_v1(body, f'{t}.5')}",
    "empty_t": lambda body, t: f"t=,v1={_v1(body, '')}",
    "garbage": lambda body, t: "not a signature header",
    "bare_signature": lambda body, t: _v1(body, t),
}


@pytest.mark.parametrize("build", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_signature_header_is_rejected(adapter, body, build):
    header = build(body, int(time.time()))
    with pytest.raises(WebhookVerificationError):
        verify_signature(header, body, [SECRET.encode()])
    with pytest.raises(WebhookVerificationError):
        adapter.parse_webhook({"Stripe-Signature": header}, body)


def test_timestamp_of_unicode_digits_that_int_cannot_read_is_rejected(body):
    with pytest.raises(WebhookVerificationError):
        verify_signature(f"t=²,v1={_v1(body, '²')}", body, [SECRET.encode()])


def test_signature_with_non_ascii_characters_is_rejected(body):
    with pytest.raises(WebhookVerificationError):
        verify_signature(f"t={int(time.time())},v1=é", body, [SECRET.encode()])


def test_verify_signature_without_a_configured_secret_rejects_even_a_valid_header(body):
    with pytest.raises(WebhookVerificationError):
        verify_signature(stripe_signed(body, SECRET), body, [])


async def test_parse_webhook_of_a_processor_without_webhook_secrets_rejects_everything(body):
    adapter = adapter_with()
    try:
        with pytest.raises(WebhookVerificationError):
            adapter.parse_webhook({"Stripe-Signature": stripe_signed(body, SECRET)}, body)
    finally:
        await adapter.aclose()


def test_valid_signature_over_a_body_that_is_not_an_event_is_a_payload_error_not_a_bad_signature(adapter):
    body = b'{"hello": "world"}'
    with pytest.raises(WebhookPayloadError) as raised:
        adapter.parse_webhook({"Stripe-Signature": stripe_signed(body, SECRET)}, body)
    assert (raised.value.event_id, raised.value.event_type) == (None, None)
    with pytest.raises(WebhookPayloadError):
        adapter.parse_webhook_body(body)


# --- parsing events ------------------------------------------------------------------------------------------

def test_charge_succeeded_gives_a_payment_snapshot_with_invoice_and_payment_intent():
    parsed = parse_event(body_of(event("charge.succeeded", charge_object(), created=1718000001)))
    assert parsed.event_id == "evt_3PqRstEvent0001"
    assert parsed.type == "charge.succeeded"
    assert parsed.created == 1718000001
    assert parsed.refunds == []
    assert parsed.payments == [PaymentSnapshot(
        psp_reference=CHARGE, other_references=[INTENT], invoice_id="INV-2024-0042", customer_id=CUSTOMER,
        amount=4200, currency="EUR", metadata={"invoice_id": "INV-2024-0042", "billing_account": "acct-77"})]


def test_charge_succeeded_without_invoice_metadata_or_customer_has_neither():
    parsed = parse_event(body_of(event("charge.succeeded", charge_object(metadata={}, customer=None,
                                                                         payment_intent=None))))
    (payment,) = parsed.payments
    assert payment.invoice_id is None
    assert payment.customer_id is None
    assert payment.other_references == []


def test_payment_intent_succeeded_gives_the_received_amount_and_the_latest_charge():
    parsed = parse_event(body_of(event("payment_intent.succeeded", payment_intent_object())))
    assert parsed.refunds == []
    assert parsed.payments == [PaymentSnapshot(
        psp_reference=INTENT, other_references=[CHARGE], invoice_id="INV-2024-0043", customer_id=CUSTOMER,
        amount=4500, currency="USD", metadata={"invoice_id": "INV-2024-0043"})]


REFUND_EVENTS = {
    "refund.created": ("pending", {}, Outcome.PENDING),
    "refund.updated": ("succeeded", {}, Outcome.SUCCEEDED),
    "refund.failed": ("failed", {"failure_reason": "expired_or_canceled_card",
                                 "failure_balance_transaction": "txn_3PqRstFail"}, Outcome.DECLINED),
    "charge.refund.updated": ("canceled", {}, Outcome.CANCELED),
}


@pytest.mark.parametrize(("event_type", "status", "extra", "outcome"),
                         [(t, *v) for t, v in REFUND_EVENTS.items()], ids=REFUND_EVENTS.keys())
def test_refund_event_gives_a_refund_snapshot(event_type, status, extra, outcome):
    previous = {"status": "pending"} if event_type.endswith(".updated") else None
    parsed = parse_event(body_of(event(event_type, refund_object(status, **extra), previous=previous)))
    assert parsed.type == event_type
    assert parsed.payments == []
    (snapshot,) = parsed.refunds
    assert snapshot.psp_refund_id == "re_3PqRst0001"
    assert snapshot.refund_id == "rf_01HZXK4Q7M"
    assert CHARGE in snapshot.payment_references and INTENT in snapshot.payment_references
    assert snapshot.amount == 1500
    assert snapshot.currency == "EUR"
    assert snapshot.outcome is outcome


def test_refund_failed_keeps_the_failure_reason_as_processor_and_decline_code():
    parsed = parse_event(body_of(event("refund.failed", refund_object(
        "failed", failure_reason="lost_or_stolen_card", failure_balance_transaction="txn_3PqRstFail"))))
    (snapshot,) = parsed.refunds
    assert snapshot.outcome is Outcome.DECLINED
    assert snapshot.processor_code == "lost_or_stolen_card"
    assert snapshot.decline_code == "lost_or_stolen_card"
    assert snapshot.result().decline_code == "lost_or_stolen_card"


def test_refund_event_with_an_unknown_status_needs_attention():
    parsed = parse_event(body_of(event("refund.updated", refund_object("processing"))))
    assert parsed.refunds[0].outcome is Outcome.NEEDS_ATTENTION


def test_refund_made_outside_the_gateway_has_no_refund_id_of_ours():
    parsed = parse_event(body_of(event("refund.created", refund_object("succeeded", refund_id=None))))
    (snapshot,) = parsed.refunds
    assert snapshot.refund_id is None
    assert snapshot.psp_refund_id == "re_3PqRst0001"


def test_refund_of_a_charge_without_payment_intent_references_only_the_charge():
    parsed = parse_event(body_of(event("refund.created", refund_object("pending", payment_intent=None))))
    assert parsed.refunds[0].payment_references == [CHARGE]


def test_charge_refunded_gives_one_refund_snapshot_per_listed_refund():
    ours = refund_object("succeeded", id="re_3PqRst0001", amount=1500)
    dashboard = refund_object("pending", id="re_3PqRst0002", refund_id=None, amount=700)
    charge = charge_object(amount_refunded=2200, refunded=False, refunds={
        "object": "list", "data": [ours, dashboard], "has_more": False, "total_count": 2,
        "url": f"/v1/charges/{CHARGE}/refunds"})
    parsed = parse_event(body_of(event("charge.refunded", charge, previous={"amount_refunded": 0})))
    assert parsed.payments == []
    assert [(r.psp_refund_id, r.refund_id, r.amount, r.outcome) for r in parsed.refunds] == [
        ("re_3PqRst0001", "rf_01HZXK4Q7M", 1500, Outcome.SUCCEEDED),
        ("re_3PqRst0002", None, 700, Outcome.PENDING),
    ]
    for snapshot in parsed.refunds:
        assert CHARGE in snapshot.payment_references
        assert INTENT in snapshot.payment_references


def test_charge_refunded_takes_the_charge_id_from_the_charge_when_the_refund_omits_it():
    listed = refund_object("succeeded", charge=None, payment_intent=None)
    charge = charge_object(refunds={"object": "list", "data": [listed], "has_more": False})
    parsed = parse_event(body_of(event("charge.refunded", charge)))
    assert set(parsed.refunds[0].payment_references) == {CHARGE, INTENT}


def test_charge_refunded_without_an_expanded_refund_list_gives_no_refunds_and_no_error():
    # Since API version 2022-11-15 a Charge no longer carries its refunds unless expanded.
    parsed = parse_event(body_of(event("charge.refunded", charge_object(amount_refunded=4200, refunded=True))))
    assert parsed.event_id == "evt_3PqRstEvent0001"
    assert parsed.refunds == [] and parsed.payments == []


@pytest.mark.parametrize(("event_type", "obj"), [
    ("customer.created", {"id": CUSTOMER, "object": "customer", "email": "zoe@example.com", "metadata": {}}),
    ("charge.failed", charge_object(status="failed", paid=False, failure_code="card_declined")),
    ("payment_intent.payment_failed", payment_intent_object(status="requires_payment_method", amount_received=0)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_unrelated_event_gives_no_payments_and_no_refunds(event_type, obj):
    parsed = parse_event(body_of(event(event_type, obj, event_id="evt_unrelated1")))
    assert parsed.event_id == "evt_unrelated1"
    assert parsed.type == event_type
    assert parsed.payments == [] and parsed.refunds == [] and parsed.disputes == []


def _without(evt: dict, *path: str) -> dict:
    target = evt
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return evt


MALFORMED_EVENTS = {
    "not_json": b"this is not json",
    "empty": b"",
    "json_list": b"[]",
    "missing_id": orjson.dumps(_without(event("refund.created", refund_object()), "id")),
    "missing_type": orjson.dumps(_without(event("refund.created", refund_object()), "type")),
    "missing_data": orjson.dumps(_without(event("refund.created", refund_object()), "data")),
    "missing_data_object": orjson.dumps(_without(event("refund.created", refund_object()), "data", "object")),
    "missing_data_object_unrelated": orjson.dumps(_without(event("customer.created", {"id": "c"}), "data", "object")),
    "object_is_a_string": orjson.dumps(event("refund.created", "re_3PqRst0001")),  # type: ignore[arg-type]
    "refund_without_id": orjson.dumps(event("refund.updated", _without(refund_object(), "id"))),
    "refund_without_amount": orjson.dumps(event("refund.updated", _without(refund_object(), "amount"))),
    "charge_without_currency": orjson.dumps(event("charge.succeeded", _without(charge_object(), "currency"))),
    "charge_refunds_not_a_list": orjson.dumps(event("charge.refunded", charge_object(refunds={"data": 5}))),
}


@pytest.mark.parametrize("body", MALFORMED_EVENTS.values(), ids=MALFORMED_EVENTS.keys())
def test_malformed_event_envelope_is_a_payload_error(body):
    with pytest.raises(WebhookPayloadError):
        parse_event(body)


def test_payload_error_carries_the_event_id_and_type_it_could_read():
    with pytest.raises(WebhookPayloadError) as raised:
        parse_event(MALFORMED_EVENTS["refund_without_amount"])
    assert (raised.value.event_id, raised.value.event_type) == (event("refund.updated", {})["id"], "refund.updated")
    with pytest.raises(WebhookPayloadError) as raised:
        parse_event(MALFORMED_EVENTS["missing_id"])
    assert (raised.value.event_id, raised.value.event_type) == (None, "refund.created")


def test_signed_refund_event_is_verified_and_parsed_by_the_adapter(adapter):
    body = body_of(event("refund.updated", refund_object("succeeded"), previous={"status": "pending"}))
    parsed = adapter.parse_webhook({"Stripe-Signature": stripe_signed(body, OLD_SECRET)}, body)
    assert isinstance(parsed, WebhookEvent)
    (snapshot,) = parsed.refunds
    assert (snapshot.psp_refund_id, snapshot.refund_id, snapshot.outcome) == (
        "re_3PqRst0001", "rf_01HZXK4Q7M", Outcome.SUCCEEDED)


# --- match keys -------------------------------------------------------------------------------------------

def test_match_keys_of_a_charge_refunded_event_contain_every_id():
    charge = charge_object(refunds={"object": "list", "has_more": False, "data": [
        refund_object("succeeded", id="re_3PqRst0001"),
        refund_object("pending", id="re_3PqRst0002", refund_id="rf_01HZXK4Q8N")]})
    keys = parse_event(body_of(event("charge.refunded", charge))).match_keys()
    assert set(keys) == {CHARGE, INTENT, "re_3PqRst0001", "re_3PqRst0002", "rf_01HZXK4Q7M", "rf_01HZXK4Q8N"}
    assert keys == sorted(set(keys))


def test_match_keys_of_a_refund_event_contain_both_payment_ids_and_both_refund_ids():
    keys = parse_event(body_of(event("refund.created", refund_object("pending")))).match_keys()
    assert set(keys) == {CHARGE, INTENT, "re_3PqRst0001", "rf_01HZXK4Q7M"}


@pytest.mark.parametrize(("evt", "expected"), [
    (event("charge.succeeded", charge_object()), {CHARGE, INTENT}),
    (event("payment_intent.succeeded", payment_intent_object()), {CHARGE, INTENT}),
    (event("customer.created", {"id": CUSTOMER, "object": "customer"}), set()),
], ids=["charge.succeeded", "payment_intent.succeeded", "unrelated"])
def test_match_keys_of_a_payment_event_contain_every_payment_id(evt, expected):
    assert set(parse_event(body_of(evt)).match_keys()) == expected
