"""The protocol every processor adapter implements, and the values and errors it speaks in.

Adapters translate between our refunds and a processor's wire format. They never touch
the database or global state. Declines are values (RefundResult), not exceptions;
exceptions are for answers that tell us nothing final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

from gateway.domain.refunds import Outcome


@dataclass(frozen=True, slots=True)
class Capabilities:
    partial_refunds: bool
    multiple_refunds: bool  # several refunds against one payment
    webhooks: bool
    lookup: bool  # can find a refund again by our id (resolves an unknown outcome)
    idempotency_keys: bool  # the processor deduplicates on our key: a resend is safe


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


@dataclass(frozen=True, slots=True)
class RefundResult:
    outcome: Outcome
    psp_refund_id: str | None = None
    processor_code: str | None = None  # the processor's raw code, kept as sent
    decline_code: str | None = None  # our normalised code for declines
    message: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    event_id: str
    type: str
    psp_refund_id: str | None
    refund_id: str | None  # ours, when the processor echoes it back
    result: RefundResult | None
    payload: Mapping[str, object]


class ProcessorError(Exception):
    """An answer that says nothing final about the refund."""

    error_class = "processor_error"


class TransientProcessorError(ProcessorError):
    """A fault worth retrying (5xx, 429, connection refused, timeout before sending).

    `maybe_executed` is True when the processor may have acted before failing (a 5xx);
    retrying is then safe only with an idempotency key the processor honours.
    """

    error_class = "transient"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None,
                 maybe_executed: bool = False):
        super().__init__(message)
        self.code, self.retry_after, self.maybe_executed = code, retry_after, maybe_executed


class OutcomeUnknownError(ProcessorError):
    """The request may have reached the processor and no answer came back (timeout after send)."""

    error_class = "outcome_unknown"


class ProcessorProtocolError(ProcessorError):
    """An answer we cannot parse or that breaks the protocol: needs a person, never a blind retry."""

    error_class = "protocol_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code


class WebhookVerificationError(Exception):
    """A webhook whose signature or shape fails verification; nothing of it may be applied."""


class ProcessorAdapter(Protocol):
    id: str
    kind: str
    capabilities: Capabilities

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Ask for the refund. Raises ProcessorError subclasses when the answer is not final."""

    async def lookup_refund(self, request: RefundRequest, psp_refund_id: str | None) -> RefundResult | None:
        """Find the refund at the processor; None when the processor has no record of it."""

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        """Verify and parse a webhook; raises WebhookVerificationError."""

    async def aclose(self) -> None: ...
