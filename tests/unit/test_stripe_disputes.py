"""Stripe's dispute events (charge.dispute.*) reduced to our DisputeSnapshot: Stripe's statuses mapped
to open, won or lost (an unknown one stays open), whether the disputed amount is withdrawn, and
malformed disputes refused like any other malformed event."""

from __future__ import annotations

import time

import orjson
import pytest
from pydantic import SecretStr

from adapters.base import DisputeSnapshot, WebhookPayloadError
from adapters.stripe import StripeAdapter
from adapters.stripe.transformers import parse_event, signature_header
from gateway.settings import StripeProcessor

CHARGE = "ch_3PqRstUvWxYz0123"
INTENT = "pi_3PqRstUvWxYz0123"
DISPUTE = "dp_1PqRstDispute0001"
SECRET = "whsec_test_DisputeEndpointSecret01"

WITHDRAWAL = {"id": "txn_1PqRstWithdrawal", "object": "balance_transaction", "amount": -4200, "currency": "eur",
              "fee": 1500, "net": -5700, "reporting_category": "dispute", "type": "adjustment"}
REINSTATEMENT = {"id": "txn_1PqRstReinstated", "object": "balance_transaction", "amount": 4200, "currency": "eur",
                 "fee": 0, "net": 4200, "reporting_category": "dispute_reversal", "type": "adjustment"}


def dispute_object(status: str = "needs_response", *, balance_transactions: list | None = None,
                   **overrides) -> dict:
    """A Dispute as Stripe (API version 2024-06-20) sends it, trimmed of the evidence nobody reads."""
    obj = {
        "id": DISPUTE, "object": "dispute", "amount": 4200,
        "balance_transactions": [WITHDRAWAL] if balance_transactions is None else balance_transactions,
        "charge": CHARGE, "created": 1718007200, "currency": "eur",
        "evidence_details": {"due_by": 1718812799, "has_evidence": False, "past_due": False, "submission_count": 0},
        "is_charge_refundable": False, "livemode": False, "metadata": {}, "payment_intent": INTENT,
        "reason": "fraudulent", "status": status,
    }
    obj.update(overrides)
    return obj


def event(event_type: str, obj: object, *, event_id: str = "evt_1PqRstDispute01") -> dict:
    return {"id": event_id, "object": "event", "api_version": "2024-06-20", "created": 1718007201,
            "data": {"object": obj}, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": event_type}


def parsed_dispute(event_type: str, obj: dict) -> DisputeSnapshot:
    parsed = parse_event(orjson.dumps(event(event_type, obj)))
    assert parsed.payments == [] and parsed.refunds == []
    (dispute,) = parsed.disputes
    return dispute


# --- statuses -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stripe_status", "ours"), [
    ("warning_needs_response", "open"),
    ("warning_under_review", "open"),
    ("needs_response", "open"),
    ("under_review", "open"),
    ("won", "won"),
    ("warning_closed", "won"),  # an inquiry closed without a chargeback
    ("lost", "lost"),
    ("charge_refunded", "open"),  # a status Stripe may add later: the hold stays, never counted as won
    ("", "open"),
])
def test_stripe_dispute_status_maps_to_ours_and_an_unknown_one_stays_open(stripe_status, ours):
    assert parsed_dispute("charge.dispute.updated", dispute_object(stripe_status)).status == ours


def test_a_status_that_is_not_a_string_stays_open():
    assert parsed_dispute("charge.dispute.updated", dispute_object(None)).status == "open"


# --- each event type ------------------------------------------------------------------------------------

def test_dispute_created_gives_the_disputed_payment_amount_currency_and_reason():
    dispute = parsed_dispute("charge.dispute.created", dispute_object())
    assert dispute == DisputeSnapshot(psp_dispute_id=DISPUTE, payment_references=[CHARGE, INTENT], amount=4200,
                                      currency="EUR", status="open", funds_withdrawn=True, reason="fraudulent")


def test_dispute_of_a_charge_without_payment_intent_references_only_the_charge():
    dispute = parsed_dispute("charge.dispute.created", dispute_object(payment_intent=None, reason=None))
    assert (dispute.payment_references, dispute.reason) == ([CHARGE], None)


def test_dispute_created_before_any_withdrawal_has_no_funds_withdrawn():
    for transactions in ([], None):
        obj = dispute_object("warning_needs_response", balance_transactions=[])
        obj["balance_transactions"] = transactions
        dispute = parsed_dispute("charge.dispute.created", obj)
        assert (dispute.status, dispute.funds_withdrawn) == ("open", False)


def test_dispute_updated_to_under_review_keeps_the_withdrawal():
    dispute = parsed_dispute("charge.dispute.updated", dispute_object("under_review"))
    assert (dispute.status, dispute.funds_withdrawn) == ("open", True)


def test_funds_withdrawn_event_says_withdrawn_even_before_the_balance_transaction_is_listed():
    dispute = parsed_dispute("charge.dispute.funds_withdrawn", dispute_object(balance_transactions=[]))
    assert (dispute.status, dispute.funds_withdrawn) == ("open", True)


def test_funds_reinstated_event_says_not_withdrawn_even_when_only_the_withdrawal_is_listed():
    dispute = parsed_dispute("charge.dispute.funds_reinstated", dispute_object("won"))
    assert (dispute.status, dispute.funds_withdrawn) == ("won", False)


def test_dispute_closed_won_after_reinstatement_is_not_withdrawn_though_the_fee_stays_taken():
    obj = dispute_object("won", balance_transactions=[WITHDRAWAL, REINSTATEMENT])
    dispute = parsed_dispute("charge.dispute.closed", obj)
    assert (dispute.status, dispute.funds_withdrawn) == ("won", False)


def test_dispute_closed_lost_keeps_the_funds_withdrawn():
    dispute = parsed_dispute("charge.dispute.closed", dispute_object("lost"))
    assert (dispute.status, dispute.funds_withdrawn) == ("lost", True)


def test_inquiry_closed_without_a_chargeback_is_won_with_nothing_withdrawn():
    dispute = parsed_dispute("charge.dispute.closed", dispute_object("warning_closed", balance_transactions=[]))
    assert (dispute.status, dispute.funds_withdrawn) == ("won", False)


def test_match_keys_of_a_dispute_event_contain_both_payment_ids():
    parsed = parse_event(orjson.dumps(event("charge.dispute.closed", dispute_object("lost"))))
    assert parsed.match_keys() == sorted([CHARGE, INTENT])


def test_signed_dispute_event_is_verified_and_parsed_by_the_adapter():
    adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url="https://stripe.test",
                                            api_key=SecretStr("sk_test_disputes_0123456789"),
                                            webhook_secrets=[SecretStr(SECRET)]))
    body = orjson.dumps(event("charge.dispute.funds_withdrawn", dispute_object()))
    header = signature_header(body, [SECRET.encode()], int(time.time()))
    parsed = adapter.parse_webhook({"Stripe-Signature": header}, body)
    assert [(d.psp_dispute_id, d.status, d.funds_withdrawn) for d in parsed.disputes] == [(DISPUTE, "open", True)]


# --- malformed ----------------------------------------------------------------------------------------------

def _without(obj: dict, key: str) -> dict:
    del obj[key]
    return obj


MALFORMED_DISPUTES = {
    "without_id": _without(dispute_object(), "id"),
    "id_not_a_string": dispute_object(id=17),
    "without_amount": _without(dispute_object(), "amount"),
    "amount_a_string": dispute_object(amount="4200"),
    "amount_negative": dispute_object(amount=-1),
    "without_currency": _without(dispute_object(), "currency"),
    "without_status": _without(dispute_object(), "status"),
    "neither_charge_nor_payment_intent": dispute_object(charge=None, payment_intent=None),
    "balance_transactions_not_a_list": dispute_object(balance_transactions={"data": []}),
    "balance_transaction_without_amount": dispute_object(balance_transactions=[{"id": "txn_1"}]),
    "balance_transaction_amount_a_string": dispute_object(balance_transactions=[{**WITHDRAWAL, "amount": "-4200"}]),
    "balance_transaction_an_id": dispute_object(balance_transactions=["txn_1PqRstWithdrawal"]),
    "object_a_string": DISPUTE,
}


@pytest.mark.parametrize("event_type", ["charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
                                        "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated"])
@pytest.mark.parametrize("obj", MALFORMED_DISPUTES.values(), ids=MALFORMED_DISPUTES.keys())
def test_malformed_dispute_event_is_a_payload_error_carrying_its_id_and_type(event_type, obj):
    with pytest.raises(WebhookPayloadError) as raised:
        parse_event(orjson.dumps(event(event_type, obj, event_id="evt_1PqRstBroken01")))
    assert (raised.value.event_id, raised.value.event_type) == ("evt_1PqRstBroken01", event_type)
