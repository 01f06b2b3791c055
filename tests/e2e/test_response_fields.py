"""The response field names the billing core codes against, pinned: a rename or a dropped field is a
breaking change for it, whatever the models say. New fields may be added."""

from __future__ import annotations

REFUND_FIELDS = {"id", "status", "stage", "amount", "currency", "transaction_id", "invoice_id", "credit_note_id",
                 "reason", "psp_refund_id", "failure_code", "failure_message", "metadata", "created_at",
                 "updated_at"}
TRANSACTION_FIELDS = {"id", "processor", "psp_reference", "invoice_id", "amount", "currency", "refunded_amount",
                      "reserved_amount", "refundable_amount"}
INTEGERS = {"amount", "refunded_amount", "reserved_amount", "refundable_amount"}


def assert_shape(obj: dict, fields: set[str]) -> None:
    assert fields <= set(obj), f"missing {sorted(fields - set(obj))}"
    for name in fields & INTEGERS:
        assert type(obj[name]) is int, (name, obj[name])
    if "metadata" in fields:
        assert isinstance(obj["metadata"], dict)


def assert_list(body: dict, fields: set[str]) -> None:
    assert {"data", "has_more"} <= set(body) and isinstance(body["data"], list) and body["data"]
    assert isinstance(body["has_more"], bool)
    for item in body["data"]:
        assert_shape(item, fields)


async def test_refund_transaction_and_list_field_names_are_the_ones_the_billing_core_reads(api):
    tx = await api.transaction(amount=10_000, invoice_id="INV-FIELDS", metadata={"order": "o-1"})
    assert_shape(tx, TRANSACTION_FIELDS)
    assert_shape(await (await api.get(f"/v1/transactions/{tx['id']}")).json(), TRANSACTION_FIELDS)
    assert_list(await (await api.get("/v1/transactions", params={"invoice_id": "INV-FIELDS"})).json(),
                TRANSACTION_FIELDS)

    created = await api.refund(tx, 1_000, credit_note_id="CN-FIELDS-1", reason="requested_by_customer",
                               metadata={"k": "v"})
    assert_shape(created, REFUND_FIELDS)
    assert (created["credit_note_id"], created["metadata"], created["amount"]) == ("CN-FIELDS-1", {"k": "v"}, 1_000)
    declined = await api.post("/v1/invoices/INV-FIELDS/refund", {"amount": 4_001, "credit_note_id": "CN-FIELDS-2"})
    assert declined.status == 201, await declined.text()
    declined_body = await declined.json()
    assert_shape(declined_body, REFUND_FIELDS)
    assert declined_body["status"] == "failed" and declined_body["failure_code"]
    assert_shape(await (await api.get(f"/v1/refunds/{created['id']}")).json(), REFUND_FIELDS)
    assert_list(await (await api.get("/v1/refunds", params={"invoice_id": "INV-FIELDS"})).json(), REFUND_FIELDS)
