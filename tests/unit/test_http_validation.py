"""Request bodies: unknown fields, bad amounts and currencies become problem details with codes
a client can act on; a body that is not JSON is a 400."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gateway import errors
from gateway.http import validation_error
from gateway.models import RefundCreate, RefundTarget, TransactionCreate

REFUND = {"invoice_id": "INV-1", "transaction_id": "tx_1", "currency": "EUR", "amount": 1050}
TRANSACTION = {"processor": "mock", "psp_reference": "ch_1", "invoice_id": "INV-1", "amount": 10_000,
               "currency": "EUR"}


def rejection(model, body) -> errors.GatewayError:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(raw)
    return validation_error(info.value)


# --- valid bodies -------------------------------------------------------------------------------

def test_valid_refund_body_is_accepted_with_the_currency_normalised():
    refund = RefundCreate.model_validate_json(json.dumps({**REFUND, "currency": "eur"}))
    assert (refund.invoice_id, refund.transaction_id, refund.amount, refund.currency) == ("INV-1", "tx_1", 1050,
                                                                                          "EUR")


def test_valid_transaction_body_is_accepted():
    tx = TransactionCreate.model_validate_json(json.dumps({**TRANSACTION, "captured_at": "2024-05-01T10:00:00Z",
                                                           "settled": True, "metadata": {"order": "42"}}))
    assert (tx.amount, tx.currency, tx.settled, tx.metadata) == (10_000, "EUR", True, {"order": "42"})


def test_refund_body_without_amount_means_everything_left():
    body = {k: v for k, v in REFUND.items() if k != "amount"}
    assert RefundCreate.model_validate_json(json.dumps(body)).amount is None


# --- unknown fields -----------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "body"), [
    (RefundCreate, {**{k: v for k, v in REFUND.items() if k != "amount"}, "amout": 1050}),
    (TransactionCreate, {**TRANSACTION, "amout": 1}),
    (RefundTarget, {"amout": 1050}),
], ids=["refund", "transaction", "invoice refund"])
def test_misspelt_field_is_rejected_not_ignored(model, body):
    err = rejection(model, body)
    assert isinstance(err, errors.InvalidRequest) and err.status == 422
    assert err.code == "validation_error"
    assert [e["field"] for e in err.extra["errors"]] == ["amout"]
    assert err.extra["errors"][0]["type"] == "extra_forbidden"
    assert "amout" in err.detail


# --- amounts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("amount", [10.0, 10.5, "1050", True, False, -1, 0, 10**16, [1050], {"value": 1}],
                         ids=repr)
@pytest.mark.parametrize("model, base", [(RefundCreate, REFUND), (TransactionCreate, TRANSACTION)],
                         ids=["refund", "transaction"])
def test_amount_that_is_not_a_positive_integer_gives_invalid_amount(model, base, amount):
    err = rejection(model, {**base, "amount": amount})
    assert isinstance(err, errors.InvalidRequest) and err.status == 422
    assert err.code == "invalid_amount"
    assert [(e["field"], e["type"]) for e in err.extra["errors"]] == [("amount", "invalid_amount")]
    assert err.problem()["code"] == "invalid_amount"


def test_json_number_with_a_fraction_or_exponent_is_not_an_amount():
    raw = '{"invoice_id": "INV-1", "currency": "EUR", "amount": 1e3}'
    assert rejection(RefundCreate, raw).code == "invalid_amount"
    assert rejection(RefundCreate, raw.replace("1e3", "1000.0")).code == "invalid_amount"


def test_missing_transaction_amount_is_a_validation_error_naming_amount():
    body = {k: v for k, v in TRANSACTION.items() if k != "amount"}
    err = rejection(TransactionCreate, body)
    assert err.code == "validation_error"
    assert [e["field"] for e in err.extra["errors"]] == ["amount"]


# --- currencies -------------------------------------------------------------------------------

@pytest.mark.parametrize("currency", ["EURO", "XXX", "XAU", "", 978, None])
@pytest.mark.parametrize("model, base", [(RefundCreate, REFUND), (TransactionCreate, TRANSACTION)],
                         ids=["refund", "transaction"])
def test_unknown_currency_gives_invalid_currency(model, base, currency):
    err = rejection(model, {**base, "currency": currency})
    assert err.status == 422
    assert err.code == "invalid_currency"
    assert [(e["field"], e["type"]) for e in err.extra["errors"]] == [("currency", "invalid_currency")]


# --- several problems at once -------------------------------------------------------------------

def test_bad_amount_and_bad_currency_give_validation_error_listing_both_fields():
    err = rejection(RefundCreate, {**REFUND, "amount": 10.5, "currency": "EURO"})
    assert err.code == "validation_error"
    fields = {e["field"]: e["type"] for e in err.extra["errors"]}
    assert fields == {"amount": "invalid_amount", "currency": "invalid_currency"}
    assert "amount" in err.detail and "currency" in err.detail


def test_several_errors_list_every_failing_field_with_a_message():
    err = rejection(TransactionCreate, {"processor": "", "psp_reference": "ch_1", "amount": "100",
                                        "currency": "EUR", "settled": "yes", "extra": 1})
    assert err.code == "validation_error"
    assert {e["field"] for e in err.extra["errors"]} == {"processor", "invoice_id", "amount", "settled", "extra"}
    assert all(e["message"] for e in err.extra["errors"])
    problem = err.problem()
    assert problem["status"] == 422 and problem["errors"] == err.extra["errors"]


def test_nested_field_error_names_the_full_path():
    err = rejection(TransactionCreate, {**TRANSACTION, "metadata": {"order": 42}})
    assert [e["field"] for e in err.extra["errors"]] == ["metadata.order"]


def test_body_that_is_not_an_object_names_the_body():
    err = rejection(RefundCreate, "[]")
    assert err.code == "validation_error"
    assert [e["field"] for e in err.extra["errors"]] == ["body"]


@pytest.mark.parametrize(("field", "value"), [("settled", "yes"), ("settled", 1), ("captured_at",
                                                                                   "2024-05-01T10:00:00")])
def test_loosely_typed_transaction_field_is_rejected(field, value):
    err = rejection(TransactionCreate, {**TRANSACTION, field: value})
    assert [e["field"] for e in err.extra["errors"]] == [field]


# --- malformed JSON -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b'{"invoice_id": ', b"", b"not json", b'{"amount": 10,}', b"\xff\xfe"])
def test_body_that_is_not_json_gives_malformed_request(raw):
    err = rejection(RefundCreate, raw)
    assert isinstance(err, errors.MalformedRequest)
    assert err.status == 400 and err.code == "malformed_request"


def test_explicit_null_amount_is_rejected_not_read_as_refund_everything():
    err = rejection(RefundCreate, {**REFUND, "amount": None})
    assert err.code == "invalid_amount"
