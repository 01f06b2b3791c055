"""Stripe's wire shapes and their mapping to ours: refund form, answers and errors, webhook
signatures and events. Pure functions; facts from Stripe's API reference."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, NoReturn, Sequence

import orjson

from adapters.base import (
    CancelRefusedError,
    CredentialCheck,
    CredentialStatus,
    DisputeSnapshot,
    OutcomeUnknownError,
    PaymentSnapshot,
    ProcessorProtocolError,
    ProcessorRefund,
    RefundRequest,
    RefundResult,
    RefundSnapshot,
    TransientProcessorError,
    WebhookEvent,
    WebhookPayloadError,
    WebhookVerificationError,
)
from gateway.domain.refunds import NextAction, Outcome

SIGNATURE_TOLERANCE_SECONDS = 300
# A header is anyone's input: a unix time in seconds has 10 digits until the year 2286 (int() of
# 5000 digits raises, and 309 overflow a float), and Stripe sends a v1 per secret and a v0 or two.
MAX_TIMESTAMP_DIGITS = 12
MAX_SIGNATURE_PARTS = 16
STRIPE_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})

# Exhaustive: a status that is not here needs a person, never counts as success.
STATUS = {
    "pending": Outcome.PENDING,
    "succeeded": Outcome.SUCCEEDED,
    "failed": Outcome.DECLINED,
    "canceled": Outcome.CANCELED,
    # Only non-card refunds ask the customer for details: Stripe holds the refund (and its amount)
    # until they act, so a person looks; cancelling it releases the amount.
    "requires_action": Outcome.NEEDS_ATTENTION,
}

DisputeStatus = Literal["open", "won", "lost"]
# A dispute's status at Stripe, as ours. A status not here counts as open: the payment's hold stays until
# Stripe says how the dispute ended, never released on a guess that it was won.
DISPUTE_STATUS: dict[str, DisputeStatus] = {
    "warning_needs_response": "open",  # an inquiry (no chargeback yet)
    "warning_under_review": "open",
    "needs_response": "open",
    "under_review": "open",
    "won": "won",
    "warning_closed": "won",  # an inquiry closed without a chargeback: the merchant keeps the money
    "lost": "lost",
}
# A tuple, not a set: an event whose type is a JSON list or object stays a type nobody acts on.
DISPUTE_EVENTS = ("charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
                  "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated")

# What the billing core can do next, by a failed refund's failure_reason, the error code of a refused
# POST /v1/refunds, or requires_action. A code not here needs a person: CONTACT_SUPPORT.
NEXT_ACTIONS = {
    # failure_reason
    "lost_or_stolen_card": NextAction.REFUND_OFFLINE,
    "expired_or_canceled_card": NextAction.REFUND_OFFLINE,
    "declined": NextAction.REFUND_OFFLINE,  # the card's issuer will not take it
    "insufficient_funds": NextAction.RETRY,  # the account's Stripe balance was short
    "charge_for_pending_refund_disputed": NextAction.CONTACT_SUPPORT,
    "merchant_request": NextAction.CONTACT_SUPPORT,  # someone on our side stopped it at Stripe
    "unknown": NextAction.CONTACT_SUPPORT,
    # error codes
    "balance_insufficient": NextAction.RETRY,
    "rate_limit": NextAction.RETRY,
    "charge_expired_for_refund": NextAction.REFUND_OFFLINE,  # the payment is too old to refund
    "card_declined": NextAction.REFUND_OFFLINE,
    "expired_card": NextAction.REFUND_OFFLINE,
    "charge_already_refunded": NextAction.CONTACT_SUPPORT,  # Stripe's books disagree with ours
    "charge_disputed": NextAction.CONTACT_SUPPORT,
    "refund_disputed_payment": NextAction.CONTACT_SUPPORT,
    "amount_too_large": NextAction.CONTACT_SUPPORT,
    "resource_missing": NextAction.CONTACT_SUPPORT,
    # the customer must act on it first; the card route is closed, so cancel it and refund offline
    "requires_action": NextAction.REFUND_OFFLINE,
}


def refund_form(request: RefundRequest) -> dict[str, str]:
    """The body of POST /v1/refunds. Our ids ride in metadata, which is how a lost answer is found again."""
    reference_field = "payment_intent" if request.psp_reference.startswith("pi_") else "charge"
    form = {f"metadata[{k}]": v for k, v in request.metadata.items()}
    form.update({reference_field: request.psp_reference, "amount": str(request.amount),
                 "metadata[refund_id]": request.refund_id, "metadata[invoice_id]": request.invoice_id})
    if request.credit_note_id:
        form["metadata[credit_note_id]"] = request.credit_note_id
    if request.reason:
        form["reason"] = request.reason if request.reason in STRIPE_REASONS else "requested_by_customer"
    return form


def next_action(code: str | None) -> NextAction:
    """What to do about a decline or a refund that needs a person, from NEXT_ACTIONS."""
    return NEXT_ACTIONS.get(code or "", NextAction.CONTACT_SUPPORT)


def refund_result(refund: Mapping[str, Any]) -> RefundResult:
    status = refund.get("status")
    outcome = STATUS.get(status) if isinstance(status, str) else None
    if outcome is None:
        return RefundResult(Outcome.NEEDS_ATTENTION, psp_refund_id=refund.get("id"), processor_code=str(status),
                            message=f"Stripe refund status {status!r} is not one the gateway knows",
                            next_action=NextAction.CONTACT_SUPPORT)
    failure = refund.get("failure_reason")
    if outcome is Outcome.DECLINED:
        return RefundResult(outcome, psp_refund_id=refund["id"], processor_code=failure or "failed",
                            decline_code=failure or "failed", message=f"refund failed: {failure or 'unknown'}",
                            next_action=next_action(failure))
    if status == "requires_action":
        ours = _metadata(refund).get("refund_id") or "{id}"
        return RefundResult(outcome, psp_refund_id=refund["id"], processor_code=status, decline_code=status,
                            next_action=next_action(status),
                            message=f"Stripe needs the customer to act on this refund before it is carried out, "
                                    f"and holds its amount meanwhile; cancelling it (POST /v1/refunds/{ours}/cancel) "
                                    f"releases the amount to refund another way")
    return RefundResult(outcome, psp_refund_id=refund["id"], processor_code=status)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    try:
        seconds = float(value) if value.isascii() else math.nan  # float() reads other scripts' digits
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None  # "1e999", "nan"


def refund_answer(status: int, headers: Mapping[str, str], body: bytes) -> RefundResult:
    """Map an answer to POST /v1/refunds (or a read of one): declines are values, faults raise."""
    data = _json(body)
    if 200 <= status < 300:
        if not isinstance(data, dict) or data.get("object") != "refund" or not isinstance(data.get("id"), str):
            raise ProcessorProtocolError(f"Stripe answered {status} without a refund object", code="unparseable")
        return refund_result(data)
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        error = {}
    etype, code = error.get("type"), error.get("code") or error.get("decline_code")
    message = str(error.get("message") or f"HTTP {status}")[:500]
    should_retry = headers.get("Stripe-Should-Retry")
    if etype == "idempotency_error" and status != 409:
        # Same key, other parameters: something is wrong on our side. Never retry with a new key.
        raise ProcessorProtocolError(f"Stripe idempotency error: {message}", code="idempotency_error")
    transient = status in (409, 429) or status >= 500
    if should_retry is not None:
        transient = should_retry == "true"
    if transient:
        error = OutcomeUnknownError if status >= 500 else TransientProcessorError  # a 5xx may have acted
        raise error(f"Stripe {status}: {message}", code=str(code or status), retry_after=_retry_after(headers))
    if status >= 500:  # Stripe-Should-Retry: false on a server error: we cannot know what happened
        raise ProcessorProtocolError(f"Stripe {status} and not to be retried: {message}", code=str(code or status))
    if status in (401, 403):
        raise ProcessorProtocolError(f"Stripe rejected our credentials ({status}): {message}",
                                     code=str(etype or "authentication_error"))
    if status == 402 or etype in ("card_error", "invalid_request_error"):
        decline = str(code or etype or status)
        return RefundResult(Outcome.DECLINED, processor_code=decline, decline_code=decline, message=message,
                            next_action=next_action(decline))
    raise ProcessorProtocolError(f"Stripe answered {status} ({etype}): {message}", code=str(code or status))


def cancel_answer(status: int, headers: Mapping[str, str], body: bytes) -> RefundResult:
    """Map an answer to POST /v1/refunds/{id}/cancel: the refund as it is now (canceled when it
    worked); CancelRefusedError when Stripe will not cancel it; faults as for refund_answer."""
    data = _json(body)
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"HTTP {status}")[:500]
    if status == 404:
        raise CancelRefusedError(f"Stripe has no such refund: {message}", code="resource_missing")
    if status == 400 and error.get("type") == "invalid_request_error":
        # Stripe's answer for a refund that is not requires_action: it is under way, done or over.
        raise CancelRefusedError(f"Stripe will not cancel the refund: {message}",
                                 code=str(error.get("code") or "invalid_request_error"))
    result = refund_answer(status, headers, body)
    if not 200 <= status < 300:  # a "decline" of a cancel says nothing we can act on
        raise ProcessorProtocolError(f"Stripe answered {status} to a refund cancel: {message}",
                                     code=str(result.processor_code or status))
    return result


def refund_page(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    """A GET /v1/refunds listing: (refunds, has_more)."""
    page = _json(body)
    data = page.get("data") if isinstance(page, dict) else None
    if not isinstance(data, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in data):
        raise ProcessorProtocolError("Stripe's refund listing is unparseable", code="unparseable")
    return data, page.get("has_more") is True


def read_fault(status: int, headers: Mapping[str, str], body: bytes, what: str) -> NoReturn:
    """Raise for a GET answered other than 200. A read moves nothing: what Stripe says may be retried
    (409, 429, 5xx, or Stripe-Should-Retry: true) is transient, anything else needs a person."""
    data = _json(body)
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or error.get("type") or status)
    # Stripe's message for a refused key repeats part of it: only the status is quoted then.
    message = f"HTTP {status}" if status in (401, 403) else str(error.get("message") or f"HTTP {status}")[:500]
    transient = status in (409, 429) or status >= 500
    if (should_retry := headers.get("Stripe-Should-Retry")) is not None:
        transient = should_retry == "true"
    if transient:
        raise TransientProcessorError(f"Stripe {status} to {what}: {message}", code=code,
                                      retry_after=_retry_after(headers))
    raise ProcessorProtocolError(f"Stripe answered {status} to {what}: {message}", code=code)


def _unix(value: Any) -> datetime:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"created is {value!r}, not a unix time")
    return datetime.fromtimestamp(value, timezone.utc)


def listed_refund(refund: Mapping[str, Any]) -> ProcessorRefund:
    """One refund object of a GET /v1/refunds listing, as the processor's books hold it; raises
    ProcessorProtocolError for one that lacks what a listing needs (the listing is then not whole)."""
    try:
        amount, currency = refund["amount"], refund["currency"]
        if not isinstance(amount, int) or isinstance(amount, bool) or not isinstance(currency, str):
            raise ValueError(f"amount {amount!r} or currency {currency!r}")
        payment = _text(refund.get("charge")) or _text(refund.get("payment_intent"))
        if payment is None:
            raise ValueError("neither charge nor payment_intent")
        status = refund.get("status")
        # Exhaustive: a status nobody knows needs a person, never counts as carried out.
        outcome = STATUS.get(status, Outcome.NEEDS_ATTENTION) if isinstance(status, str) else Outcome.NEEDS_ATTENTION
        return ProcessorRefund(psp_refund_id=refund["id"], payment_reference=payment, amount=amount,
                               currency=currency.upper(), outcome=outcome, created=_unix(refund.get("created")),
                               refund_id=_metadata(refund).get("refund_id"))
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as e:  # the last two: a wild `created`
        refund_id = str(refund.get("id"))[:40]
        raise ProcessorProtocolError(f"Stripe listed refund {refund_id!r} that cannot be read: {str(e)[:200]}",
                                     code="unparseable") from None


def credentials_answer(status: int, body: bytes) -> CredentialCheck:
    """What a GET /v1/refunds?limit=1 says about the API key. Only the status is quoted: Stripe's
    message for a refused key repeats part of it."""
    if status == 200:
        try:
            refund_page(body)
        except ProcessorProtocolError:
            return CredentialCheck(CredentialStatus.UNEXPECTED, "HTTP 200 that is not a Stripe refund listing: "
                                                                "is base_url a Stripe API?")
        return CredentialCheck(CredentialStatus.OK, "the API key may read refunds")
    if status == 401:
        return CredentialCheck(CredentialStatus.REJECTED, "HTTP 401: the API key was refused")
    if status == 403:
        return CredentialCheck(CredentialStatus.REJECTED, "HTTP 403: the API key may not read refunds "
                                                          "(a restricted key without refund access?)")
    if status == 429 or status >= 500:
        return CredentialCheck(CredentialStatus.UNREACHABLE, f"HTTP {status}: Stripe is busy or down; try again")
    return CredentialCheck(CredentialStatus.UNEXPECTED, f"HTTP {status} to GET /v1/refunds: is base_url a Stripe API?")


# --- webhooks ------------------------------------------------------------------------------------

def signature_header(body: bytes, secrets: Sequence[bytes], timestamp: int) -> str:
    """Build a Stripe-Signature header (for simulators and tests)."""
    signed = b"%d." % timestamp + body
    v1 = ",".join(f"v1={hmac.new(s, signed, hashlib.sha256).hexdigest()}" for s in secrets)
    return f"t={timestamp},{v1}"


def verify_signature(header: str | None, body: bytes, secrets: Sequence[bytes], *, now: float | None = None,
                     tolerance: int = SIGNATURE_TOLERANCE_SECONDS) -> None:
    """Check Stripe-Signature over the raw body: HMAC-SHA256 of "t.body", any v1, any secret, within tolerance."""
    if not secrets:
        raise WebhookVerificationError("no webhook secret is configured for this processor")
    if not header or not isinstance(header, str):
        raise WebhookVerificationError("missing Stripe-Signature header")
    parts = header.split(",", MAX_SIGNATURE_PARTS)
    if len(parts) > MAX_SIGNATURE_PARTS:
        raise WebhookVerificationError("Stripe-Signature header has too many parts")
    timestamp, candidates = None, []
    for part in parts:
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value)
    if not timestamp or not (timestamp.isascii() and timestamp.isdigit()) or not candidates:
        raise WebhookVerificationError("malformed Stripe-Signature header")
    if len(timestamp) > MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError("Stripe-Signature timestamp is not a plausible time")
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        raise WebhookVerificationError("Stripe-Signature timestamp outside the tolerance")
    signed = timestamp.encode() + b"." + body
    expected = [hmac.new(s, signed, hashlib.sha256).hexdigest().encode() for s in secrets]
    given = [c.encode("utf-8", "replace") for c in candidates]
    # Compare against every candidate and secret, without stopping early.
    if not any([hmac.compare_digest(e, c) for e in expected for c in given]):
        raise WebhookVerificationError("no Stripe-Signature v1 matches")


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata")
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _refs(*values: Any) -> list[str]:
    return [v for v in values if isinstance(v, str) and v]


def _refund_snapshot(refund: Mapping[str, Any], charge: Mapping[str, Any] | None = None) -> RefundSnapshot:
    result = refund_result(refund)
    return RefundSnapshot(
        psp_refund_id=refund["id"], refund_id=_metadata(refund).get("refund_id"),
        payment_references=_refs(refund.get("charge"), refund.get("payment_intent"),
                                 *((charge.get("id"), charge.get("payment_intent")) if charge else ())),
        amount=int(refund["amount"]), currency=str(refund["currency"]).upper(), outcome=result.outcome,
        processor_code=result.processor_code, decline_code=result.decline_code, message=result.message,
        next_action=result.next_action)


def _payment(obj: Mapping[str, Any], *, reference: str, others: list[str], amount: Any) -> PaymentSnapshot:
    meta = _metadata(obj)
    customer = obj.get("customer")
    return PaymentSnapshot(psp_reference=reference, other_references=others, invoice_id=meta.get("invoice_id"),
                           customer_id=customer if isinstance(customer, str) else None, amount=int(amount),
                           currency=str(obj["currency"]).upper(), metadata=meta)


def _dispute_snapshot(dispute: Mapping[str, Any], event_type: str) -> DisputeSnapshot:
    dispute_id, amount, currency = dispute["id"], dispute["amount"], dispute["currency"]
    if not isinstance(dispute_id, str) or not dispute_id:
        raise ValueError(f"dispute id {dispute_id!r}")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0 or not isinstance(currency, str):
        raise ValueError(f"dispute amount {amount!r} or currency {currency!r}")
    references = _refs(dispute.get("charge"), dispute.get("payment_intent"))
    if not references:
        raise ValueError("a dispute of neither a charge nor a payment intent")
    status = dispute["status"]
    withdrawn = _withdrawn_net(dispute.get("balance_transactions"))  # read on every event: a bad one is malformed
    if event_type == "charge.dispute.funds_withdrawn":
        withdrawn = True
    elif event_type == "charge.dispute.funds_reinstated":
        withdrawn = False
    return DisputeSnapshot(psp_dispute_id=dispute_id, payment_references=references, amount=amount,
                           currency=currency.upper(),
                           status=DISPUTE_STATUS.get(status, "open") if isinstance(status, str) else "open",
                           funds_withdrawn=withdrawn, reason=_text(dispute.get("reason")))


def _withdrawn_net(transactions: Any) -> bool:
    """Whether a dispute's balance transactions (its withdrawal, then any reinstatement) take money out,
    net. Summed by amount, fees left out: a won dispute's fee may stay taken though the amount came back."""
    if transactions is None:
        return False
    if not isinstance(transactions, list):
        raise TypeError(f"balance_transactions is {type(transactions).__name__}, not a list")
    total = 0
    for transaction in transactions:
        amount = transaction["amount"]
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise ValueError(f"balance transaction amount {amount!r}")
        total += amount
    return total < 0


def parse_event(body: bytes) -> WebhookEvent:
    """Reduce a verified Stripe event to the payments, refunds and disputes it describes; raises
    WebhookPayloadError for a body that is not one."""
    data = _json(body)
    try:
        event_id, event_type, obj = data["id"], data["type"], data["data"]["object"]
        payments, refunds, disputes = [], [], []
        if event_type == "charge.succeeded":
            payments.append(_payment(obj, reference=obj["id"], others=_refs(obj.get("payment_intent")),
                                     amount=obj["amount"]))
        elif event_type == "payment_intent.succeeded":
            payments.append(_payment(obj, reference=obj["id"], others=_refs(obj.get("latest_charge")),
                                     amount=obj.get("amount_received") or obj["amount"]))
        elif event_type in ("refund.created", "refund.updated", "refund.failed", "charge.refund.updated"):
            refunds.append(_refund_snapshot(obj))
        elif event_type == "charge.refunded":
            listed = (obj.get("refunds") or {}).get("data") or []
            refunds.extend(_refund_snapshot(r, obj) for r in listed)
        elif event_type in DISPUTE_EVENTS:
            disputes.append(_dispute_snapshot(obj, event_type))
        created = data.get("created")
        return WebhookEvent(event_id=str(event_id), type=str(event_type),
                            created=created if isinstance(created, int) else None, payments=payments,
                            refunds=refunds, disputes=disputes)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        known = data if isinstance(data, dict) else {}
        raise WebhookPayloadError(f"not a Stripe event: {type(e).__name__}: {e}",
                                  event_id=_text(known.get("id")), event_type=_text(known.get("type"))) from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
