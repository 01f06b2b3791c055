"""The HTTP API's request and response shapes (pydantic v2). Requests reject unknown fields:
a misspelt `amount` must never turn into "refund everything"."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from gateway.domain import money


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


Amount = Annotated[int, BeforeValidator(_amount)]
Currency = Annotated[str, BeforeValidator(_currency)]
Ref = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]
Metadata = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=40)], Annotated[str, Field(max_length=500)]],
    Field(max_length=50),
]


class _Request(BaseModel):
    # strict: "100" is not an amount and "yes" is not a boolean.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TransactionCreate(_Request):
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

    credit_note_id: Ref | None = None
    transaction_id: Ref | None = None
    psp_reference: Ref | None = None
    # Absent: everything still refundable. An explicit null is rejected (invalid_amount): only
    # leaving the field out may mean "refund everything".
    amount: Amount = None  # type: ignore[assignment]
    currency: Currency | None = None
    reason: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    metadata: Metadata = Field(default_factory=dict)


class RefundCreate(RefundTarget):
    invoice_id: Ref
    currency: Currency


class TransactionOut(BaseModel):
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
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> "TransactionOut":
        return cls(id=row["id"], processor=row["processor_id"], psp_reference=row["psp_reference"],
                   invoice_id=row["invoice_id"], customer_id=row["customer_id"], amount=row["amount"],
                   currency=row["currency"], refunded_amount=row["refunded_amount"],
                   reserved_amount=row["reserved_amount"],
                   refundable_amount=row["amount"] - row["refunded_amount"] - row["reserved_amount"],
                   captured_at=row["captured_at"], settled_at=row["settled_at"], metadata=row["metadata"],
                   created_at=row["created_at"], updated_at=row["updated_at"])


class RefundOut(BaseModel):
    id: str
    status: str
    stage: str
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

    @classmethod
    def from_row(cls, row: Any) -> "RefundOut":
        return cls(id=row["id"], status=row["status"], stage=row["stage"], amount=row["amount"],
                   currency=row["currency"], transaction_id=row["transaction_id"], processor=row["processor_id"],
                   invoice_id=row["invoice_id"], credit_note_id=row["credit_note_id"], reason=row["reason"],
                   psp_refund_id=row["psp_refund_id"], failure_code=row["failure_code"],
                   failure_message=row["failure_message"], attempts=row["attempts"], metadata=row["metadata"],
                   created_at=row["created_at"], updated_at=row["updated_at"])


# --- operator requests ----------------------------------------------------------------------------

Reason = Annotated[str, Field(min_length=3, max_length=1000)]


class ReplayRequest(_Request):
    reason: Reason


class RefundFilter(_Request):
    ids: list[Ref] | None = Field(default=None, max_length=500)
    stuck: bool = False
    status: Literal["pending", "requires_attention"] | None = None
    processor: Ref | None = None
    failure_code: Ref | None = None


class BulkReplayRequest(_Request):
    reason: Reason
    filter: RefundFilter
    dry_run: bool = False
    limit: int = Field(default=100, ge=1, le=500)


class ResolveRequest(_Request):
    resolution: Literal["refunded_offline", "failed", "canceled"]
    reason: Reason
    external_reference: Ref | None = None


class ReprocessRequest(_Request):
    reason: Reason


class BulkReprocessRequest(_Request):
    reason: Reason
    status: Literal["unmatched", "failed"]
    processor: Ref | None = None
