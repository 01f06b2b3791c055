"""The protocol every processor adapter implements, and the values and errors it speaks in.

Adapters translate between our refunds and a processor's wire format. They never touch
the database or global state. Declines are values (RefundResult), not exceptions;
exceptions are for answers that tell us nothing final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, Mapping, Protocol

from pydantic import BaseModel, ConfigDict

from gateway.domain.refunds import NextAction, Outcome


@dataclass(frozen=True, slots=True)
class Capabilities:
    partial_refunds: bool
    multiple_refunds: bool  # several refunds against one payment
    webhooks: bool
    lookup: bool  # can find a refund again by our id (resolves an unknown outcome)
    idempotency_keys: bool  # the processor deduplicates on our key: a resend is safe
    # How long the processor keeps a key (Stripe: at least 24 h); a resend after that may execute again.
    idempotency_key_window_seconds: float = 24 * 3600
    voids_while_unsettled: bool = False  # one void, not refunds, until the payment's batch settles
    cancel: bool = False  # can cancel a refund it holds but has not carried out (Stripe's requires_action)
    listing: bool = False  # can list its refunds over a period (reconciliation)
    currencies: frozenset[str] | None = None  # the only currencies it refunds in; None: any


@dataclass(frozen=True, slots=True)
class RefundRequest:
    refund_id: str
    idempotency_key: str  # stable for the refund's whole life
    psp_reference: str  # the original payment at the processor
    amount: int  # minor units
    currency: str
    invoice_id: str
    credit_note_id: str | None = None
    reason: str | None = None
    settled: bool = True
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None  # sent as X-Request-ID on every HTTP request made for it


@dataclass(frozen=True, slots=True)
class RefundResult:
    outcome: Outcome
    psp_refund_id: str | None = None
    processor_code: str | None = None  # the processor's raw code, kept as sent
    decline_code: str | None = None  # our normalised code for declines
    message: str | None = None
    details: Mapping[str, str] | None = None  # processor facts worth keeping (void or refund, remaining amount)
    # A look-up that found our refund carried out more than once: the ids of the executions
    # beyond the first (psp_refund_id). Only processors without idempotency keys can do that.
    duplicate_psp_refund_ids: tuple[str, ...] = ()
    # For a decline or an answer that needs a person: what the billing core can do next, from the
    # adapter's own table of its codes. None: the gateway's default for the outcome.
    next_action: NextAction | None = None
    # Carried out as a void of the unsettled payment (BridgePay): the processor allows one per payment.
    voided_payment: bool = False


@dataclass(frozen=True, slots=True)
class ProcessorRefund:
    """One refund as the processor's books list it (a reconciliation run compares these with ours)."""

    psp_refund_id: str
    payment_reference: str  # the payment it refunds, by the processor's id (a charge, a GatewayTransID)
    amount: int  # minor units
    currency: str  # ISO 4217, upper case
    outcome: Outcome  # SUCCEEDED, PENDING, DECLINED, CANCELED; NEEDS_ATTENTION for a status nobody knows
    created: datetime  # when the processor made it (UTC)
    refund_id: str | None = None  # ours, when the processor kept it (metadata, InvoiceNumber)
    kind: str | None = None  # the processor's word for it when it says more ("void", "refund")


class CredentialStatus(StrEnum):
    OK = "ok"
    REJECTED = "rejected"  # the processor refused the credentials (or the merchant codes with them)
    UNREACHABLE = "unreachable"  # no answer, or the processor is down: nothing learnt about the credentials
    UNEXPECTED = "unexpected"  # an answer that is none of those: a wrong base_url, a protocol change
    NOT_CHECKED = "not_checked"  # nothing to try (an in-process processor)


@dataclass(frozen=True, slots=True)
class CredentialCheck:
    status: CredentialStatus
    detail: str  # one line for a person; never holds a secret

    @property
    def failed(self) -> bool:
        return self.status not in (CredentialStatus.OK, CredentialStatus.NOT_CHECKED)


class _Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True)


class PaymentSnapshot(_Snapshot):
    """An original payment as a webhook describes it."""

    psp_reference: str  # the id refunds will reference (ch_..., GatewayTransID)
    other_references: list[str] = []  # other ids of the same payment (a charge's payment intent)
    invoice_id: str | None = None  # from the payment's metadata, when the billing core put it there
    customer_id: str | None = None
    amount: int
    currency: str
    metadata: dict[str, str] = {}


class RefundSnapshot(_Snapshot):
    """A refund as a webhook describes it, at the moment the event was created."""

    psp_refund_id: str
    refund_id: str | None = None  # ours, when the processor echoes our metadata back
    payment_references: list[str]  # the payment it refunds, under every id the processor gives
    amount: int
    currency: str
    outcome: Outcome
    processor_code: str | None = None
    decline_code: str | None = None
    message: str | None = None
    next_action: NextAction | None = None

    def result(self) -> RefundResult:
        return RefundResult(self.outcome, psp_refund_id=self.psp_refund_id, processor_code=self.processor_code,
                            decline_code=self.decline_code, message=self.message, next_action=self.next_action)


class DisputeSnapshot(_Snapshot):
    """A dispute (chargeback) of a payment as a webhook describes it."""

    psp_dispute_id: str
    payment_references: list[str]  # the disputed payment, under every id the processor gives
    amount: int  # minor units disputed
    currency: str
    # open (the cardholder disputes it, the outcome is pending), won (the merchant kept the money),
    # lost (the money went back to the cardholder: charged back)
    status: Literal["open", "won", "lost"]
    funds_withdrawn: bool = False  # the processor took the disputed amount from the merchant's balance
    reason: str | None = None


class WebhookEvent(_Snapshot):
    """One verified processor event, reduced to what the gateway acts on; stored as JSON."""

    event_id: str
    type: str
    created: int | None = None  # the processor's timestamp (unix seconds)
    payments: list[PaymentSnapshot] = []
    refunds: list[RefundSnapshot] = []
    disputes: list[DisputeSnapshot] = []

    def match_keys(self) -> list[str]:
        """Every id this event can be matched on: payment references, refund ids (ours and theirs)."""
        keys = {ref for p in self.payments for ref in (p.psp_reference, *p.other_references)}
        keys.update(ref for d in self.disputes for ref in d.payment_references)
        for r in self.refunds:
            keys.update(r.payment_references)
            keys.add(r.psp_refund_id)
            if r.refund_id:
                keys.add(r.refund_id)
        return sorted(keys)


class ProcessorError(Exception):
    """An answer that says nothing final about the refund."""

    error_class = "processor_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.retry_after = code, retry_after


class TransientProcessorError(ProcessorError):
    """A fault that left the refund undone (connection refused, 429, 409): safe to retry."""

    error_class = "transient"


class OutcomeUnknownError(ProcessorError):
    """The refund may have been carried out and no answer says so: a timeout after sending, a
    dropped connection, a 5xx. Resending is safe only to a processor that deduplicates on our
    idempotency key; otherwise look the refund up first."""

    error_class = "outcome_unknown"


class CancelRefusedError(ProcessorError):
    """The processor will not cancel the refund: it has started carrying it out, or already has."""

    error_class = "cancel_refused"


class ProcessorProtocolError(ProcessorError):
    """An answer we cannot parse or that breaks the protocol: needs a person, never a blind retry."""

    error_class = "protocol_error"


class WebhookVerificationError(Exception):
    """A webhook whose signature fails verification (or that cannot be verified at all): it may
    not come from the processor, so nothing of it is stored as an event or applied."""


class WebhookPayloadError(Exception):
    """A webhook whose signature verified but whose body the adapter cannot read: it is the
    processor's, so it is kept (failed, to be parsed again), not refused. Carries what could be
    read of it: the processor's event id and type, or None."""

    def __init__(self, message: str, *, event_id: str | None = None, event_type: str | None = None):
        super().__init__(message)
        self.event_id, self.event_type = event_id, event_type


class ProcessorAdapter(Protocol):
    id: str
    kind: str
    capabilities: Capabilities

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Ask for the refund. Raises ProcessorError subclasses when the answer is not final."""

    async def lookup_refund(self, request: RefundRequest, psp_refund_id: str | None) -> RefundResult | None:
        """Find the refund at the processor; None when the processor has no record of it."""

    async def cancel_refund(self, request: RefundRequest, psp_refund_id: str) -> RefundResult:
        """Only with `capabilities.cancel`: cancel a refund the processor holds without having carried
        it out. Returns the refund's state after the call (CANCELED when it worked); raises
        CancelRefusedError when the processor will not cancel it, other ProcessorErrors for faults."""

    async def list_refunds(self, since: datetime, until: datetime) -> list[ProcessorRefund]:
        """Only with `capabilities.listing`: every refund the processor made in [since, until), oldest
        first, whoever asked for it (the gateway, a dashboard, a portal). Raises ProcessorError when the
        listing cannot be had whole (a fault, a page it cannot read, more than it will page through)."""

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verify and parse a webhook; raises WebhookVerificationError for the signature, then
        WebhookPayloadError for a verified body it cannot read."""

    def parse_webhook_body(self, body: bytes) -> WebhookEvent:
        """Parse a body whose signature was verified when it arrived (a stored event parsed again);
        raises WebhookPayloadError."""

    async def check_credentials(self) -> CredentialCheck:
        """Try the account's credentials with a cheap read that moves no money; never raises for
        what the processor answers (or fails to)."""

    async def aclose(self) -> None: ...
