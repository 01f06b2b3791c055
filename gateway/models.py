"""The HTTP API's request and response shapes (pydantic v2). Requests reject unknown fields:
a misspelt `amount` must never turn into "refund everything"."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.domain import credit_notes, money
from gateway.domain.credit_notes import CreditNoteStatus
from gateway.domain.refunds import NextAction, Outcome, Stage, Status
from gateway.logging import has_card_number, redact_known


def _amount(value: Any) -> int:
    try:
        return money.parse_minor_units(value)
    except money.InvalidAmount as e:
        raise PydanticCustomError("invalid_amount", str(e)) from None


def _currency(value: Any) -> str:
    try:
        return money.normalise_currency(value)
    except money.UnknownCurrency as e:
        raise PydanticCustomError("invalid_currency", str(e)) from None


def _checked_text(value: str) -> str:
    """Text from a client: card data never enters the gateway (not stored, not shown, not sent on as
    metadata), and a configured secret a client sends along is kept redacted, never stored."""
    if has_card_number(value):
        raise PydanticCustomError("card_number_not_allowed", "looks like a card number, which the gateway never "
                                                             "takes: remove it")
    return redact_known(value)


Amount = Annotated[int, BeforeValidator(_amount)]
Currency = Annotated[str, BeforeValidator(_currency)]
CheckedText = AfterValidator(_checked_text)
Ref = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$"), CheckedText]
Metadata = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=40), CheckedText],
         Annotated[str, Field(max_length=500), CheckedText]],
    Field(max_length=50),
]


# --- examples: in the OpenAPI document and on /docs; tests/e2e/test_openapi.py validates each
# against its model, so an example cannot drift from what the server takes or sends.

_TX_ID, _RF_ID = "tx_01hz3v6r1k8m2q4w6y8a0c2e4g", "rf_01hz3v7c9p1r3t5v7x9z1b3d5f"
TRANSACTION_EXAMPLE = {
    "id": _TX_ID, "processor": "stripe", "psp_reference": "ch_3PqRstUvWxYz0123", "invoice_id": "INV-2024-0042",
    "customer_id": "cus_QabcDEF123", "amount": 4200, "currency": "EUR", "refunded_amount": 1500,
    "reserved_amount": 0, "refundable_amount": 2700, "captured_at": "2024-06-10T06:13:20Z",
    "settled_at": "2024-06-12T00:00:00Z", "metadata": {"billing_account": "acct-77"},
    "created_at": "2024-06-10T06:13:21.004000Z", "updated_at": "2024-06-11T09:00:03.120000Z"}
REFUND_EXAMPLE = {
    "id": _RF_ID, "status": "succeeded", "stage": "done", "amount": 1500, "currency": "EUR",
    "transaction_id": _TX_ID, "processor": "stripe", "invoice_id": "INV-2024-0042", "credit_note_id": "CN-2024-0007",
    "reason": "requested_by_customer", "psp_refund_id": "re_3PqRstUvWxYz0456", "failure_code": None,
    "failure_message": None, "attempts": 1, "metadata": {"ticket": "SUP-311"},
    "created_at": "2024-06-11T09:00:02.871000Z", "updated_at": "2024-06-11T09:00:03.120000Z", "reversed_at": None,
    "method": "processor", "external_reference": None, "previous_refund_id": None, "next_action": "none"}
DECLINED_REFUND_EXAMPLE = {
    **REFUND_EXAMPLE, "status": "failed", "failure_code": "expired_or_canceled_card",
    "failure_message": "refund failed: expired_or_canceled_card", "next_action": "refund_offline"}
OFFLINE_REFUND_EXAMPLE = {
    **REFUND_EXAMPLE, "id": "rf_01hz3v9k2m4p6r8t0v2x4z6b8d", "status": "refunded_offline", "psp_refund_id": None,
    "attempts": 0, "method": "offline", "external_reference": "SEPA-2024-06-11-0042",
    "previous_refund_id": _RF_ID}
PENDING_REFUND_EXAMPLE = {**REFUND_EXAMPLE, "status": "requires_attention", "stage": "outcome_unknown",
                          "psp_refund_id": None, "failure_code": "outcome_unknown",
                          "failure_message": "Stripe 503: timed out", "attempts": 3, "next_action": "contact_support"}


def _examples(*examples: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class _Request(BaseModel):
    # strict: "100" is not an amount and "yes" is not a boolean.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TransactionCreate(_Request):
    model_config = _examples({
        "processor": "stripe", "psp_reference": "ch_3PqRstUvWxYz0123", "invoice_id": "INV-2024-0042",
        "customer_id": "cus_QabcDEF123", "amount": 4200, "currency": "EUR", "captured_at": "2024-06-10T06:13:20Z",
        "settled": True, "metadata": {"billing_account": "acct-77"}})

    processor: Ref
    psp_reference: Ref
    invoice_id: Ref
    customer_id: Ref | None = None
    amount: Amount
    currency: Currency
    captured_at: AwareDatetime | None = None
    settled: bool = False
    metadata: Metadata = Field(default_factory=dict)


class RefundTarget(_Request):
    """What the invoice refund endpoint takes (the seeds' shape); the invoice comes from the path."""

    model_config = _examples({"credit_note_id": "CN-2024-0007", "amount": 1500, "reason": "requested_by_customer"},
                             {"credit_note_id": "CN-2024-0008"})

    credit_note_id: Ref | None = None
    transaction_id: Ref | None = None
    psp_reference: Ref | None = None
    # Absent: everything still refundable. An explicit null is rejected (invalid_amount): only
    # leaving the field out may mean "refund everything".
    amount: Amount = None  # type: ignore[assignment]
    currency: Currency | None = None
    reason: Annotated[str, Field(min_length=1, max_length=255), CheckedText] | None = None
    metadata: Metadata = Field(default_factory=dict)
    method: Literal["processor", "offline"] = Field(
        "processor", description="offline: the billing core refunded it outside the processor (a bank transfer, a "
                                 "voucher); recorded refunded_offline at once, never sent to the processor")
    external_reference: Ref | None = Field(None, description="with method offline, required: the transfer's or "
                                                             "voucher's reference")
    allocation: Literal["auto"] | None = Field(
        None, description="auto: spread the amount over the invoice's refundable payments, newest first, one "
                          "refund per payment, all or none (needs credit_note_id); the answer is the credit note")


class RefundCreate(RefundTarget):
    model_config = _examples(
        {"invoice_id": "INV-2024-0042", "currency": "EUR", "amount": 1500, "credit_note_id": "CN-2024-0007",
         "reason": "requested_by_customer", "metadata": {"ticket": "SUP-311"}},
        {"invoice_id": "INV-2024-0042", "currency": "EUR", "transaction_id": _TX_ID, "credit_note_id": "CN-2024-0008"})

    invoice_id: Ref
    currency: Currency


def refundable_amount(row: Any, *, through_processor: bool = True) -> int:
    """What is left to refund on a payment: its amount less what is refunded and reserved. Through a
    processor that voids unsettled sales once (BridgePay), nothing after a void until it settles."""
    if through_processor and row["voided_at"] is not None and row["settled_at"] is None:
        return 0
    # A lost dispute's amount went back to the cardholder already (charged back).
    return max(0, row["amount"] - row["refunded_amount"] - row["reserved_amount"] - row["charged_back_amount"])


class TransactionOut(BaseModel):
    model_config = _examples(TRANSACTION_EXAMPLE)

    object: Literal["transaction"] = "transaction"
    id: str
    processor: str
    psp_reference: str
    invoice_id: str
    customer_id: str | None
    amount: int
    currency: str
    refunded_amount: int
    reserved_amount: int
    refundable_amount: int
    captured_at: datetime | None
    settled_at: datetime | None
    charged_back_amount: int = Field(0, description="the amounts of lost disputes: charged back to the cardholder, "
                                                    "no longer refundable")
    voided_at: datetime | None = Field(None, description="when the processor voided the unsettled payment (BridgePay "
                                                         "allows one void per sale): nothing is refundable through "
                                                         "it until it is registered again as settled")
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> "TransactionOut":
        return cls(id=row["id"], processor=row["processor_id"], psp_reference=row["psp_reference"],
                   invoice_id=row["invoice_id"], customer_id=row["customer_id"], amount=row["amount"],
                   currency=row["currency"], refunded_amount=row["refunded_amount"],
                   reserved_amount=row["reserved_amount"],
                   refundable_amount=refundable_amount(row), captured_at=row["captured_at"],
                   settled_at=row["settled_at"], voided_at=row["voided_at"],
                   charged_back_amount=row["charged_back_amount"], metadata=row["metadata"],
                   created_at=row["created_at"], updated_at=row["updated_at"])


class RefundOut(BaseModel):
    model_config = _examples(REFUND_EXAMPLE, DECLINED_REFUND_EXAMPLE)

    object: Literal["refund"] = "refund"
    id: str
    status: Status
    stage: Stage
    amount: int
    currency: str
    transaction_id: str
    processor: str
    invoice_id: str
    credit_note_id: str | None
    reason: str | None
    psp_refund_id: str | None
    failure_code: str | None
    failure_message: str | None
    attempts: int
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    reversed_at: datetime | None = Field(
        default=None, description="when a succeeded refund failed at its processor afterwards (a reversal: the "
                                  "money came back and the amount is refundable again); null otherwise")
    duplicate_psp_refund_ids: list[str] = Field(
        default_factory=list, description="the processor's ids of executions of this refund beyond the first "
                                          "(psp_refund_id): money went out more than once, and the refund needs "
                                          "attention (failure_code duplicate_at_processor); empty otherwise")
    method: Literal["processor", "offline"] = Field(
        "processor", description="offline: recorded by the billing core as refunded outside the processor")
    external_reference: str | None = Field(None, description="the bank transfer's or voucher's reference of a refund "
                                                             "made outside the processor")
    previous_refund_id: str | None = Field(None, description="the failed or canceled refund of the same credit note "
                                                             "that this one retries")
    next_action: NextAction = Field(
        NextAction.NONE, description="for a failed or stuck refund, what the billing core can do: retry (a new "
                                     "attempt may succeed), refund_offline (the card cannot take it), "
                                     "contact_support; none otherwise")

    @classmethod
    def from_row(cls, row: Any) -> "RefundOut":
        return cls(id=row["id"], status=row["status"], stage=row["stage"], amount=row["amount"],
                   currency=row["currency"], transaction_id=row["transaction_id"], processor=row["processor_id"],
                   invoice_id=row["invoice_id"], credit_note_id=row["credit_note_id"], reason=row["reason"],
                   psp_refund_id=row["psp_refund_id"], failure_code=row["failure_code"],
                   failure_message=row["failure_message"], attempts=row["attempts"], metadata=row["metadata"],
                   created_at=row["created_at"], updated_at=row["updated_at"], reversed_at=row.get("reversed_at"),
                   duplicate_psp_refund_ids=list(row.get("duplicate_psp_refund_ids") or ()),
                   method="offline" if row.get("origin") == "offline" else "processor",
                   external_reference=row.get("external_reference"), previous_refund_id=row.get("previous_refund_id"),
                   next_action=row.get("next_action") or NextAction.NONE)


def credit_note_parts(rows: Any) -> list[credit_notes.Part]:
    return [credit_notes.Part(id=r["id"], transaction_id=r["transaction_id"], status=Status(r["status"]),
                              amount=r["amount"], offline=r["origin"] == "offline", created_at=r["created_at"],
                              next_action=NextAction(r["next_action"]) if r["next_action"] else None)
            for r in rows]


CREDIT_NOTE_STATE_EXAMPLE = {"id": "CN-2024-0007", "invoice_id": "INV-2024-0042", "status": "refunded",
                             "next_action": "none"}


class CreditNoteState(BaseModel):
    """Where a credit note stands: sent with every event of its refunds."""

    model_config = _examples(CREDIT_NOTE_STATE_EXAMPLE)

    id: str
    invoice_id: str
    status: CreditNoteStatus = Field(
        description="refund_pending (an attempt is running), pending_refund (the last attempt failed: retry, or "
                    "refund outside the processor), refunded, refunded_offline, partially_refunded (the rest "
                    "canceled), requires_attention, canceled")
    next_action: NextAction

    @classmethod
    def from_rows(cls, invoice_id: str, credit_note_id: str, rows: Any) -> "CreditNoteState":
        parts = credit_note_parts(rows)
        return cls(id=credit_note_id, invoice_id=invoice_id, status=credit_notes.status(parts),
                   next_action=credit_notes.next_action(parts))


class CreditNoteOut(CreditNoteState):
    model_config = _examples({**CREDIT_NOTE_STATE_EXAMPLE, "currency": "EUR", "amount": 1500,
                              "refunded_amount": 1500, "pending_amount": 0, "open_amount": 0,
                              "refunds": [DECLINED_REFUND_EXAMPLE, OFFLINE_REFUND_EXAMPLE]})

    object: Literal["credit_note"] = "credit_note"
    currency: str
    amount: int = Field(description="refunded + pending + open: what the credit note's refunds add up to now")
    refunded_amount: int = Field(description="succeeded, or refunded outside the processor")
    pending_amount: int = Field(description="on its way, or waiting for a person")
    open_amount: int = Field(description="failed and not retried yet: still owed to the customer")
    refunds: list[RefundOut] = Field(description="every attempt, oldest first")

    @classmethod
    def from_rows(cls, invoice_id: str, credit_note_id: str, rows: Any) -> "CreditNoteOut":
        state = CreditNoteState.from_rows(invoice_id, credit_note_id, rows)
        totals = credit_notes.amounts(credit_note_parts(rows))
        return cls(**state.model_dump(), currency=rows[0]["currency"],
                   amount=totals.refunded + totals.pending + totals.open, refunded_amount=totals.refunded,
                   pending_amount=totals.pending, open_amount=totals.open,
                   refunds=[RefundOut.from_row(r) for r in rows])


# --- operator requests ----------------------------------------------------------------------------

Reason = Annotated[str, Field(min_length=3, max_length=1000), CheckedText]


class ApprovalRequest(_Request):
    model_config = _examples({"reason": "checked against ticket SUP-311: the customer returned every item"})

    reason: Reason


class CancelRequest(_Request):
    model_config = _examples({"reason": "the customer chose store credit"})

    reason: Annotated[str, Field(min_length=1, max_length=1000), CheckedText] | None = None


class ReplayRequest(_Request):
    model_config = _examples({"reason": "processor outage INC-4411 is over"})

    reason: Reason


class RefundFilter(_Request):
    ids: list[Ref] | None = Field(default=None, max_length=500)
    stuck: bool = False
    status: Literal["pending", "requires_attention"] | None = None
    processor: Ref | None = None
    failure_code: Ref | None = None


class BulkReplayRequest(_Request):
    model_config = _examples(
        {"reason": "processor outage INC-4411 is over", "filter": {"stuck": True, "processor": "stripe"},
         "dry_run": True},
        {"reason": "resend the refunds of INC-4411", "filter": {"ids": [_RF_ID]}, "limit": 10})

    reason: Reason
    filter: RefundFilter
    dry_run: bool = False
    limit: int = Field(default=100, ge=1, le=500)


class ResolveRequest(_Request):
    model_config = _examples({"resolution": "refunded_offline", "reason": "refunded by bank transfer",
                              "external_reference": "SEPA-2024-06-11-0042"})

    resolution: Literal["refunded_offline", "failed", "canceled"]
    reason: Reason
    external_reference: Ref | None = None


class ReprocessRequest(_Request):
    model_config = _examples({"reason": "the payment is registered now"})

    reason: Reason


class BulkReprocessRequest(_Request):
    model_config = _examples({"reason": "the payments are registered now", "status": "unmatched",
                              "processor": "stripe"})

    reason: Reason
    status: Literal["unmatched", "failed"]
    processor: Ref | None = None


# --- queries: GET parameters, validated like bodies but lax (a query value is always a string) -----

class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="after")
    def _one_cursor(self) -> "_Query":
        if getattr(self, "starting_after", None) and getattr(self, "ending_before", None):
            raise PydanticCustomError("one_cursor", "give starting_after or ending_before, not both")
        return self


def _limit(default: int, most: int) -> Any:
    return Field(default, ge=1, le=most, description=f"at most this many (default {default})")


class TransactionQuery(_Query):
    invoice_id: Ref = Field(description="the invoice whose payments to list", examples=["INV-2024-0042"])


class RefundQuery(_Query):
    invoice_id: Ref | None = Field(None, description="only this invoice's refunds", examples=["INV-2024-0042"])
    credit_note_id: Ref | None = Field(None, description="only this credit note's refunds: its attempts",
                                       examples=["CN-2024-0007"])
    status: Status | None = Field(None, description="only refunds in this status")
    limit: int = _limit(20, 100)
    starting_after: Ref | None = Field(None, description="the last refund id of the previous page",
                                       examples=[_RF_ID])
    ending_before: Ref | None = Field(None, description="the first refund id of the next page: the page before "
                                                        "it (newer refunds)")


class CreditNoteQuery(_Query):
    invoice_id: Ref | None = Field(None, description="the credit note's invoice; needed only when the credit note "
                                                     "id is used on several invoices", examples=["INV-2024-0042"])


class EventQuery(_Query):
    after: int = Field(0, ge=0, le=2**62, description="the id of the last event received (0: from the start)",
                       examples=[1042])
    limit: int = _limit(100, 1000)


class AdminRefundQuery(_Query):
    stuck: bool = Field(False, description="only refunds pending or requiring attention for longer than "
                                           "older_than_seconds")
    status: Status | None = None
    processor: Ref | None = Field(None, examples=["stripe"])
    failure_code: Ref | None = Field(None, examples=["outcome_unknown"])
    older_than_seconds: int | None = Field(None, ge=0, le=10**8, description="what counts as stuck (default: the "
                                           "stuck_after_seconds setting); also for stuck_counts")
    limit: int = _limit(50, 500)
    starting_after: Ref | None = Field(None, description="the last refund id of the previous page")
    ending_before: Ref | None = Field(None, description="the first refund id of the next page: the page before it")


WebhookEventStatus = Literal["received", "applied", "unmatched", "failed", "ignored"]


class WebhookEventQuery(_Query):
    status: WebhookEventStatus | None = None
    processor: Ref | None = Field(None, examples=["stripe"])
    limit: int = _limit(50, 500)
    starting_after: int = Field(0, ge=0, le=2**62, description="the last event id of the previous page (0: none)")
    ending_before: int = Field(0, ge=0, le=2**62, description="the first event id of the next page: the page "
                                                              "before it (0: none)")


# --- responses ------------------------------------------------------------------------------------
# Built by the handlers that send them, so the document describes what is sent. Unknown fields are
# an error here: a key added on the way out without its description fails the tests, not a client.

class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TransactionList(_Response):
    model_config = _examples({"data": [TRANSACTION_EXAMPLE], "has_more": False})

    object: Literal["list"] = "list"
    data: list[TransactionOut]
    has_more: bool


class RefundList(_Response):
    model_config = _examples({"data": [REFUND_EXAMPLE], "has_more": True})

    object: Literal["list"] = "list"
    data: list[RefundOut]
    has_more: bool = Field(description="more after the last one: ask again with starting_after")


class AdminRefundList(RefundList):
    model_config = _examples({"data": [PENDING_REFUND_EXAMPLE], "has_more": False,
                              "stuck_counts": {"requires_attention:outcome_unknown": 1, "pending:sending": 2},
                              "stuck_total": 3})

    stuck_counts: dict[str, int] = Field(description="stuck refunds (older than older_than_seconds) by reason: "
                                                     "`pending:<stage>` or `requires_attention:<failure_code>`, "
                                                     "whatever the other filters")
    stuck_total: int


# Every type publish (gateway.ledger) gives an event: refund.<status> when the status changed.
EVENT_EXAMPLE = {"id": 1042, "created_at": "2024-06-11T09:00:03.125000Z", "type": "refund.succeeded",
                 "refund_id": _RF_ID, "version": 3, "previous_status": "pending", "data": REFUND_EXAMPLE,
                 "credit_note": CREDIT_NOTE_STATE_EXAMPLE}
EVENT_TYPES = ("refund.created", "refund.updated", "refund.reversed", *(f"refund.{s}" for s in Status),
               "dispute.opened", "dispute.updated", "dispute.won", "dispute.lost")

DISPUTE_EXAMPLE = {"object": "dispute", "id": "dp_01hz3vb1c3e5g7j9l1n3q5s7u9", "processor": "stripe",
                   "psp_dispute_id": "dp_3PqRstUvWxYz0999", "transaction_id": _TX_ID, "amount": 4200,
                   "currency": "EUR", "status": "open", "funds_withdrawn": True, "reason": "fraudulent",
                   "source": "webhook", "version": 1, "created_at": "2024-06-20T10:00:00.000000Z",
                   "updated_at": "2024-06-20T10:00:00.000000Z"}


class DisputeOut(BaseModel):
    """A payment's dispute (chargeback): while open, the payment takes no new refund and its unsent
    refunds wait; lost, its amount counts as charged back."""

    model_config = _examples(DISPUTE_EXAMPLE)

    object: Literal["dispute"] = "dispute"
    id: str
    processor: str
    psp_dispute_id: str
    transaction_id: str
    amount: int
    currency: str
    status: Literal["open", "won", "lost"]
    funds_withdrawn: bool
    reason: str | None
    source: Literal["webhook", "operator"]
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> "DisputeOut":
        return cls(id=row["id"], processor=row["processor_id"], psp_dispute_id=row["psp_dispute_id"],
                   transaction_id=row["transaction_id"], amount=row["amount"], currency=row["currency"],
                   status=row["status"], funds_withdrawn=row["funds_withdrawn"], reason=row["reason"],
                   source=row["source"], version=row["version"], created_at=row["created_at"],
                   updated_at=row["updated_at"])


class DisputeRecord(_Request):
    """An operator's record of a dispute, for a processor that sends no dispute webhooks."""

    model_config = _examples({"processor": "bridgepay", "psp_reference": "113301", "psp_dispute_id": "CB-2024-0042",
                              "amount": 5000, "status": "open", "reason": "cardholder says not received"})

    processor: Ref
    psp_reference: Ref = Field(description="the disputed payment, by its processor's id")
    psp_dispute_id: Ref = Field(description="the processor's (or the acquirer's) id of the dispute")
    amount: Amount
    status: Literal["open", "won", "lost"]
    reason: Annotated[str, Field(min_length=1, max_length=255), CheckedText] | None = None


class DisputeList(_Response):
    model_config = _examples({"object": "list", "data": [DISPUTE_EXAMPLE], "has_more": False})

    object: Literal["list"] = "list"
    data: list[DisputeOut]
    has_more: bool


class DisputeQuery(_Query):
    status: Literal["open", "won", "lost"] | None = None
    processor: Ref | None = None
    limit: int = _limit(50, 500)
    starting_after: Ref | None = Field(None, description="the last dispute id of the previous page")


class Event(_Response):
    """A refund's change, as the gateway POSTs it to the billing core (a callback) and serves it from
    GET /v1/events: at least once, in version order per refund."""

    model_config = _examples(EVENT_EXAMPLE)

    object: Literal["event"] = "event"
    id: int = Field(description="the event's id: a delivery's Gateway-Event-Id, the cursor of GET /v1/events")
    created_at: datetime
    type: Literal[EVENT_TYPES] = Field(  # type: ignore[valid-type]
        description="refund.created for a new refund, refund.<status> when its status changed, refund.reversed "
                    "when a succeeded refund failed later, refund.updated otherwise; dispute.opened, "
                    "dispute.won, dispute.lost and dispute.updated for a payment's dispute")
    refund_id: str | None = Field(description="the refund it is about (null for a dispute's event)")
    dispute_id: str | None = Field(None, description="the dispute it is about (dispute.* events)")
    version: int = Field(description="the refund's (or dispute's) version after this change: keep the highest seen")
    previous_status: str | None = Field(description="null for refund.created and dispute.opened")
    data: RefundOut | DisputeOut = Field(description="the refund (or dispute) after this change")
    credit_note: CreditNoteState | None = Field(None, description="the refund's credit note after this change; "
                                                                 "null for a refund without one")


class EventList(_Response):
    model_config = _examples({"data": [EVENT_EXAMPLE], "has_more": False})

    object: Literal["list"] = "list"
    data: list[Event]
    has_more: bool


class _ReplayReport(_Response):
    found: str = Field(description="what the processor has: its status for the refund, 'no record at the "
                                   "processor', or 'not looked up'", examples=["succeeded"])
    action: Literal["resent with the same idempotency key", "recorded what the processor reported", "nothing"]
    status: Status
    stage: Stage


class ReplayResult(_ReplayReport):
    model_config = _examples({"found": "succeeded", "action": "recorded what the processor reported",
                              "status": "succeeded", "stage": "done", "refund": REFUND_EXAMPLE})

    refund: RefundOut


class ReplayOutcome(_ReplayReport):
    id: str


class ReplayRefusal(_Response):
    id: str
    error: str = Field(description="the problem code the single replay would have answered", examples=["refund_final"])
    detail: str


class BulkReplayPreview(_Response):
    model_config = _examples({"dry_run": True, "would_replay": [_RF_ID], "count": 1})

    dry_run: Literal[True]
    would_replay: list[str] = Field(description="the refund ids a replay would replay, newest first")
    count: int


class BulkReplayResult(_Response):
    model_config = _examples({"dry_run": False, "count": 2, "results": [
        {"id": _RF_ID, "found": "no record at the processor", "action": "resent with the same idempotency key",
         "status": "succeeded", "stage": "done"},
        {"id": "rf_01hz3v7c9p1r3t5v7x9z1b3d60", "error": "refund_final",
         "detail": "a succeeded refund cannot be replayed"}]})

    dry_run: Literal[False]
    results: list[ReplayOutcome | ReplayRefusal] = Field(description="one per refund, in the order replayed")
    count: int


WEBHOOK_EVENT_EXAMPLE = {
    "id": 42, "processor_id": "stripe", "event_id": "evt_3PqRstUvWxYz0789", "event_type": "charge.refund.updated",
    "status": "unmatched", "attempts": 1, "last_error": None, "match_keys": ["ch_3PqRstUvWxYz0123",
                                                                              "re_3PqRstUvWxYz0456"],
    "received_at": "2024-06-11T09:00:04.002000Z", "processed_at": None, "signature": "verified", "parsed": True}


class WebhookEventOut(_Response):
    model_config = _examples(WEBHOOK_EVENT_EXAMPLE)

    object: Literal["webhook_event"] = "webhook_event"
    id: int
    processor_id: str
    event_id: str
    event_type: str
    status: WebhookEventStatus = Field(description="unmatched: names no payment or refund the gateway knows (yet)")
    attempts: int
    last_error: str | None
    match_keys: list[str] = Field(description="the payment and refund ids it names")
    received_at: datetime
    processed_at: datetime | None
    signature: str = Field(description="the signature check's result, stored with the raw headers and body: "
                                       "verified (what fails it is rejected, not stored here)")
    parsed: bool = Field(description="false: verified but not an event the adapter could read (failed, with the "
                                     "reason in last_error); reprocessing parses the stored body again")


class WebhookEventList(_Response):
    model_config = _examples({"data": [WEBHOOK_EVENT_EXAMPLE], "has_more": False})

    object: Literal["list"] = "list"
    data: list[WebhookEventOut]
    has_more: bool


class ReprocessResult(_Response):
    model_config = _examples({"id": 42, "event_id": "evt_3PqRstUvWxYz0789", "status": "applied"})

    id: int
    event_id: str
    status: WebhookEventStatus


class Queued(_Response):
    model_config = _examples({"queued": 7})

    queued: int = Field(description="how many events were queued again")


class WebhookReceipt(_Response):
    model_config = _examples({"received": True, "event_id": "evt_3PqRstUvWxYz0789", "duplicate": False})

    received: Literal[True]
    event_id: str
    duplicate: bool = Field(description="stored before: acknowledged, not applied again")


class Health(_Response):
    model_config = _examples({"status": "ok"})

    status: Literal["ok"]


class Readiness(_Response):
    model_config = _examples({"status": "ready", "schema_version": 7})

    status: Literal["ready"]
    schema_version: int


# --- the finance export ---------------------------------------------------------------------------

def _utc(value: Any) -> Any:
    """A date is its midnight, UTC; a time without a zone is UTC."""
    if isinstance(value, str) and len(value) == 10:
        value += "T00:00:00Z"
    if isinstance(value, str) and value.endswith("Z"):
        value = value[:-1] + "+00:00"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("invalid_time", "a date (2026-11-01) or an ISO 8601 time") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    return value


Moment = Annotated[datetime, BeforeValidator(_utc)]
LONGEST_EXPORT_DAYS = 366


class ExportQuery(_Query):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    since: Moment = Field(alias="from", description="the period's start: a date (UTC midnight) or an ISO 8601 time")
    until: Moment = Field(alias="to", description="the period's end, excluded")
    format: Literal["csv", "jsonl"] = Field("csv", description="csv (opens in a spreadsheet) or jsonl")

    @field_validator("until")
    @classmethod
    def _a_period(cls, until: datetime, info: ValidationInfo) -> datetime:
        # On `until`, so that the 422 names the parameter (`to`), not the whole query.
        since = info.data.get("since")
        if since is not None and since >= until:
            raise PydanticCustomError("invalid_period", "from must be before to")
        if since is not None and until - since > timedelta(days=LONGEST_EXPORT_DAYS):
            raise PydanticCustomError("invalid_period", f"a period of at most {LONGEST_EXPORT_DAYS} days")
        return until


# --- reconciliation -------------------------------------------------------------------------------

FindingKind = Literal["missing_in_gateway", "missing_at_processor", "duplicate_at_processor", "amount_mismatch",
                      "status_mismatch"]
FINDING_EXAMPLE = {
    "object": "reconciliation_finding", "id": 7, "run_id": 3, "processor": "bridgepay", "kind": "missing_in_gateway",
    "status": "open", "refund_id": "rf_01hz3v9k2m4p6r8t0v2x4z6b8d", "transaction_id": _TX_ID,
    "psp_refund_id": "113372", "action": "recorded_external", "gateway": None,
    "processor_facts": {"psp_refund_id": "113372", "payment_reference": "113301", "status": "succeeded",
                        "amount": 1200, "currency": "USD", "created": "2024-06-11T09:00:00+00:00",
                        "refund_id": None, "kind": "refund"},
    "created_at": "2024-06-12T02:00:01.120000Z", "resolved_at": None, "resolved_by": None, "resolution": None}


class FindingOut(_Response):
    model_config = _examples(FINDING_EXAMPLE)

    object: Literal["reconciliation_finding"] = "reconciliation_finding"
    id: int
    run_id: int
    processor: str
    kind: FindingKind = Field(description="missing_in_gateway (the processor made a refund the gateway never "
                                          "recorded), missing_at_processor (one the gateway counts succeeded is not "
                                          "there), duplicate_at_processor, amount_mismatch, status_mismatch")
    status: Literal["open", "resolved"]
    refund_id: str | None
    transaction_id: str | None
    psp_refund_id: str | None
    action: str | None = Field(description="what the run did: recorded_external (the refund is now recorded "
                                           "against its payment), payment_unknown (flagged only), or null")
    gateway: dict[str, Any] | None = Field(description="the gateway's facts")
    processor_facts: dict[str, Any] | None = Field(description="the processor's facts")
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None

    @classmethod
    def from_row(cls, row: Any) -> "FindingOut":
        return cls(id=row["id"], run_id=row["run_id"], processor=row["processor_id"], kind=row["kind"],
                   status=row["status"], refund_id=row["refund_id"], transaction_id=row["transaction_id"],
                   psp_refund_id=row["psp_refund_id"], action=row["action"], gateway=row["gateway"],
                   processor_facts=row["processor"], created_at=row["created_at"], resolved_at=row["resolved_at"],
                   resolved_by=row["resolved_by"], resolution=row["resolution"])


class FindingList(_Response):
    model_config = _examples({"object": "list", "data": [FINDING_EXAMPLE], "has_more": False})

    object: Literal["list"] = "list"
    data: list[FindingOut]
    has_more: bool


RUN_EXAMPLE = {"object": "reconciliation_run", "id": 3, "processor": "bridgepay", "trigger": "schedule",
               "status": "finished", "since": "2024-06-11T00:00:00Z", "until": "2024-06-12T00:00:00Z",
               "started_at": "2024-06-12T02:00:00.020000Z", "finished_at": "2024-06-12T02:00:01.200000Z",
               "processor_refunds": 41, "gateway_refunds": 40, "new_findings": {"missing_in_gateway": 1},
               "error": None}


class RunOut(_Response):
    model_config = _examples(RUN_EXAMPLE)

    object: Literal["reconciliation_run"] = "reconciliation_run"
    id: int
    processor: str
    trigger: Literal["command", "schedule"]
    status: Literal["running", "finished", "failed"]
    since: datetime
    until: datetime
    started_at: datetime
    finished_at: datetime | None
    processor_refunds: int | None
    gateway_refunds: int | None
    new_findings: dict[str, int]
    error: str | None

    @classmethod
    def from_row(cls, row: Any) -> "RunOut":
        return cls(id=row["id"], processor=row["processor_id"], trigger=row["trigger"], status=row["status"],
                   since=row["period_start"], until=row["period_end"], started_at=row["started_at"],
                   finished_at=row["finished_at"], processor_refunds=row["processor_refunds"],
                   gateway_refunds=row["gateway_refunds"], new_findings=row["counts"], error=row["error"])


class RunList(_Response):
    model_config = _examples({"object": "list", "data": [RUN_EXAMPLE], "has_more": False})

    object: Literal["list"] = "list"
    data: list[RunOut]
    has_more: bool


class FindingQuery(_Query):
    status: Literal["open", "resolved"] | None = Field(None, description="open or resolved (default: both)")
    processor: Ref | None = None
    kind: FindingKind | None = None
    limit: int = _limit(50, 500)
    starting_after: int = Field(0, ge=0, le=2**62, description="the last finding id of the previous page (0: none)")


class RunQuery(_Query):
    processor: Ref | None = None
    limit: int = _limit(20, 200)
    starting_after: int = Field(0, ge=0, le=2**62, description="the last run id of the previous page (0: none)")


class ResolveFindingRequest(_Request):
    model_config = _examples({"reason": "the portal refund was agreed with the customer; booked by finance"})

    reason: Reason


# --- errors ---------------------------------------------------------------------------------------

class ProblemField(BaseModel):
    field: str = Field(description="the field, dotted (`filter.ids.0`), a parameter's name, or `body`")
    message: str
    type: str | None = None


class Candidate(BaseModel):
    transaction_id: str
    processor: str
    psp_reference: str
    currency: str
    refundable_amount: int


class Problem(BaseModel):
    """An error as application/problem+json (RFC 9457). Branch on `code`, never on `detail`; some
    codes add the fields named below."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="/problems/<code>, relative to the gateway: it serves the code's meaning there")
    title: str
    status: int
    code: str = Field(description="stable, for code to branch on")
    detail: str = Field(description="for people; may change")
    errors: list[ProblemField] | None = Field(None, description="validation errors: one per field")
    required_scope: str | None = Field(None, description="forbidden: the scope the key lacks")
    refundable_amount: int | None = Field(None, description="amount_exceeds_refundable: what is left")
    candidates: list[Candidate] | None = Field(None, description="ambiguous_transaction, amount_exceeds_refundable: "
                                                                 "the invoice's payments")
    transaction_currency: str | None = Field(None, description="currency_mismatch")
    transaction_id: str | None = Field(None, description="transaction_conflict: the registered payment")
    conflicting_fields: list[str] | None = Field(None, description="transaction_conflict: what differs")
    status_now: Status | None = Field(None, description="refund_final: the refund's status")
    refund_id: str | None = Field(None, description="credit_note_conflict: the credit note's live refund")
    refund_amount: int | None = Field(None, description="credit_note_conflict: that refund's amount")
    refunds: list[dict[str, Any]] | None = Field(None, description="credit_note_conflict: the credit note's live "
                                                                   "refunds (id, status, amount)")
    next_action: NextAction | None = Field(None, description="refund_window_expired: refund_offline")
    refunds_today: int | None = Field(None, description="daily_limit_exceeded: the client's refunds today (UTC)")
    daily_cap: int | None = Field(None, description="daily_limit_exceeded: how many it may make a day")


# --- processor webhooks: what the processors POST to /v1/webhooks/{processor_id}. Their adapters
# parse them; these describe them (a test checks them against the simulators' events).

class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: dict[str, Any] = Field(description="a snapshot: a Refund (refund.*, charge.refund.updated), a Charge "
                                               "(charge.refunded with its refunds, charge.succeeded) or a "
                                               "PaymentIntent (payment_intent.succeeded)")
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(BaseModel):
    """Stripe's event envelope, signed in `Stripe-Signature` (t=<unix>,v1=<HMAC-SHA256 of "t.body">).
    The gateway acts on refund.created, refund.updated, refund.failed, charge.refund.updated,
    charge.refunded, charge.succeeded and payment_intent.succeeded; other types are stored and ignored."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "evt_3PqRstUvWxYz0789", "object": "event", "api_version": "2024-06-20", "created": 1718096403,
        "livemode": False, "type": "charge.refund.updated", "data": {"object": {
            "id": "re_3PqRstUvWxYz0456", "object": "refund", "amount": 1500, "charge": "ch_3PqRstUvWxYz0123",
            "currency": "eur", "status": "succeeded", "metadata": {"refund_id": _RF_ID,
                                                                   "invoice_id": "INV-2024-0042"}},
            "previous_attributes": {"status": "pending"}}}]})

    id: str
    object: Literal["event"]
    type: str
    created: int = Field(description="unix seconds")
    livemode: bool = False
    api_version: str | None = None
    data: StripeEventData


class MockWebhookRefund(BaseModel):
    id: str = Field(description="the processor's refund id")
    refund_id: str | None = Field(None, description="ours, if it knows it")
    payment: str = Field(description="the payment's psp_reference")
    amount: int
    currency: str
    status: Outcome


class MockWebhook(BaseModel):
    """The `mock` processor's event, signed as hex HMAC-SHA256 of the body in `Mock-Signature`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "mev_0001", "type": "refund.updated", "refund": {
            "id": "mre_00000001", "refund_id": _RF_ID, "payment": "ch_3PqRstUvWxYz0123", "amount": 1500,
            "currency": "EUR", "status": "succeeded"}}]})

    id: str
    type: str
    refund: MockWebhookRefund
