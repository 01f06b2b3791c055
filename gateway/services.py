"""Use cases: register an original payment, create a refund under the transaction's row lock.

Each function owns its database transaction and raises GatewayError subclasses; the HTTP
layer only parses and serialises.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import asyncpg
import structlog

from adapters.base import PaymentSnapshot
from gateway import errors, ledger
from gateway.db import store
from gateway.domain import matching, money
from gateway.domain.refunds import Stage, Status
from gateway.ids import new_id
from gateway.models import RefundCreate, TransactionCreate

log = structlog.get_logger(__name__)


async def register_transaction(conn: asyncpg.Connection, body: TransactionCreate) -> tuple[asyncpg.Record, bool]:
    """Insert the payment, or return the one already known at that processor by that reference
    (its own, or another id a webhook gave for it, such as a charge's payment intent).

    Returns (row, created). The same body again is not an error; a different one is a 409.
    """
    settled_at = datetime.now(timezone.utc) if body.settled else None
    existing, created = await _register(
        conn, processor_id=body.processor, psp_reference=body.psp_reference, other_references=(),
        invoice_id=body.invoice_id, customer_id=body.customer_id, amount=body.amount, currency=body.currency,
        captured_at=body.captured_at, settled_at=settled_at, metadata=body.metadata, source="api")
    if created:
        return existing, True
    differs = [field for field, value in (
        ("invoice_id", body.invoice_id), ("customer_id", body.customer_id), ("amount", body.amount),
        ("currency", body.currency), ("metadata", body.metadata),
    ) if existing[field] != value]
    if body.captured_at is not None and existing["captured_at"] != body.captured_at:
        differs.append("captured_at")
    if body.settled != (existing["settled_at"] is not None):
        differs.append("settled")
    if differs:
        raise errors.Conflict(
            f"transaction {body.psp_reference!r} at {body.processor!r} is already registered with other values",
            code="transaction_conflict", transaction_id=existing["id"], conflicting_fields=differs)
    return existing, False


async def register_payment(conn: asyncpg.Connection, processor_id: str,
                           payment: PaymentSnapshot) -> tuple[asyncpg.Record, bool]:
    """Register a payment a processor's webhook announced, or add the ids it gives to the
    transaction that already knows it by one of them. Returns (row, created)."""
    currency = money.normalise_currency(payment.currency)
    row, created = await _register(
        conn, processor_id=processor_id, psp_reference=payment.psp_reference,
        other_references=payment.other_references, invoice_id=payment.invoice_id, customer_id=payment.customer_id,
        amount=payment.amount, currency=currency, captured_at=None, settled_at=None, metadata=payment.metadata,
        source="webhook")
    if not created and (row["amount"], row["currency"], row["invoice_id"]) != (payment.amount, currency,
                                                                              payment.invoice_id):
        log.warning("webhook_payment_differs", transaction_id=row["id"], processor=processor_id,
                    psp_reference=payment.psp_reference, amount=payment.amount, currency=currency,
                    invoice_id=payment.invoice_id)
    return row, created


async def known_payment(conn: asyncpg.Connection, processor_id: str,
                        references: Sequence[str]) -> asyncpg.Record | None:
    """The transaction the first known id names. Ids naming different transactions (a payment
    registered once per id before the gateway knew they were one) are logged as an error: each
    of those transactions could be refunded in full, so they need merging by hand."""
    rows = await store.transactions_by_any_reference(conn, processor_id, references)
    ids = list(dict.fromkeys(r["id"] for r in rows))
    if len(ids) > 1:
        log.error("payment_known_as_several_transactions", processor=processor_id, transaction_ids=ids,
                  references=list(references))
    return rows[0] if rows else None


async def _register(conn: asyncpg.Connection, *, processor_id: str, psp_reference: str,
                    other_references: Sequence[str], source: str, **values) -> tuple[asyncpg.Record, bool]:
    """The transaction that knows the payment by any of its ids, or a new one; (row, created).

    The ids are claimed first, for a transaction not written yet. When another registration of
    the same payment (the charge's webhook and the payment intent's, applied at once) holds one,
    the claim waits for it to commit; the payment is then known and takes the ids claimed here.
    """
    references = list(dict.fromkeys([psp_reference, *other_references]))
    transaction_id = new_id("tx")
    async with conn.transaction():
        # Held to the end of the (outermost) transaction: a webhook that finds the payment unknown
        # waits for this one to commit, or is parked before the wake-up below looks for it.
        await store.lock_payment_references(conn, processor_id, references)
        claimed = await store.claim_references(conn, processor_id, references, transaction_id)
        # Only a transaction already written joins: the one these claims are for is not, yet.
        row = await known_payment(conn, processor_id, references)
        created = row is None
        if created:
            row = await store.insert_transaction(conn, id=transaction_id, processor_id=processor_id,
                                                 psp_reference=psp_reference, **values)
        elif claimed:
            await store.move_references(conn, processor_id, claimed, transaction_id, row["id"])
        # Webhooks that arrived before the payment was known by these ids can be applied now.
        woken = await store.wake_unmatched(conn, processor_id, claimed) if claimed else 0
    if created:
        log.info("transaction_registered", transaction_id=row["id"], processor=processor_id, source=source,
                 invoice_id=row["invoice_id"], amount=row["amount"], currency=row["currency"],
                 webhooks_woken=woken)
    elif claimed:
        log.info("transaction_references_added", transaction_id=row["id"], processor=processor_id, source=source,
                 references=claimed, webhooks_woken=woken)
    return row, created


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    client_id: str
    key: str


def _candidate(row: asyncpg.Record) -> matching.Candidate:
    return matching.Candidate(id=row["id"], invoice_id=row["invoice_id"], psp_reference=row["psp_reference"],
                              processor_id=row["processor_id"], currency=row["currency"],
                              refundable=row["amount"] - row["refunded_amount"] - row["reserved_amount"])


def _candidates_json(candidates: list[matching.Candidate]) -> list[dict[str, object]]:
    return [{"transaction_id": c.id, "processor": c.processor_id, "psp_reference": c.psp_reference,
             "currency": c.currency, "refundable_amount": c.refundable} for c in candidates]


async def _lock_transaction_for(conn: asyncpg.Connection, cmd: RefundCreate) -> asyncpg.Record:
    """The transaction the command means, locked FOR UPDATE for the balance check."""
    if cmd.transaction_id is not None:
        # Named by id: lock it at once (the caller would lock it next anyway).
        row = await store.lock_transaction(conn, cmd.transaction_id)
        rows, by_pointer = ([row] if row else []), True
    elif cmd.psp_reference is not None:
        rows, by_pointer = await store.transactions_by_reference(conn, cmd.psp_reference), True
    else:
        rows, by_pointer = await store.transactions_by_invoice(conn, cmd.invoice_id), False
    try:
        chosen = matching.match([_candidate(r) for r in rows], by_pointer=by_pointer)
    except matching.NoTransaction:
        pointer = cmd.transaction_id or cmd.psp_reference
        detail = (f"no transaction {pointer!r}" if pointer else f"invoice {cmd.invoice_id!r} has no registered payment")
        raise errors.NotFound(detail, code="transaction_not_found") from None
    except matching.Ambiguous as e:
        raise errors.Conflict("several transactions match: name one with transaction_id",
                              code="ambiguous_transaction", candidates=_candidates_json(e.candidates)) from None
    except matching.NothingRefundable as e:
        raise errors.Refused(f"nothing is left to refund on invoice {cmd.invoice_id!r}",
                              code="amount_exceeds_refundable", refundable_amount=0,
                              candidates=_candidates_json(e.candidates)) from None
    if chosen.invoice_id != cmd.invoice_id:
        raise errors.Refused(
            f"transaction {chosen.id!r} belongs to invoice {chosen.invoice_id!r}, not {cmd.invoice_id!r}",
            code="invoice_mismatch")
    return rows[0] if cmd.transaction_id is not None else await store.lock_transaction(conn, chosen.id)


async def create_refund(conn: asyncpg.Connection, cmd: RefundCreate, *, lease_seconds: float,
                        claim: IdempotencyClaim | None = None, request_id: str | None = None,
                        ) -> tuple[asyncpg.Record, asyncpg.Record, bool]:
    """Match, check and reserve the balance, and write the refund, in one database transaction.

    The refund is written as already `sending` under a lease, because the caller sends it
    right after the commit. Returns (refund, transaction, created); a refund that already
    exists for the same credit note, or under the same Idempotency-Key, is returned as it is.
    """
    async with conn.transaction():
        if claim is not None:
            # The key row first, before any payment's row lock: a request that took the key over
            # when its lock expired, or the first one it took it from, waits here for the other and
            # answers with its refund; one key never makes two, even without a credit note.
            key_row = await store.lock_key(conn, claim.client_id, claim.key)
            if key_row is None:  # given up meanwhile by the key's other holder: a retry claims it anew
                raise errors.ServiceUnavailable("this request's Idempotency-Key was released while it ran; retry",
                                                code="idempotency_key_lost", headers={"Retry-After": "1"})
            if key_row["resource_id"] is not None:
                existing = await store.get_refund(conn, key_row["resource_id"])
                return existing, await store.get_transaction(conn, existing["transaction_id"]), False
        if cmd.credit_note_id is not None and cmd.transaction_id is None and cmd.psp_reference is None:
            # Without a pointer the match depends on balances that this credit note's own first
            # refund changed: look the credit note up on the whole invoice first.
            existing = await store.refund_by_invoice_credit_note(conn, cmd.invoice_id, cmd.credit_note_id)
            if existing is not None:
                return existing, await store.get_transaction(conn, existing["transaction_id"]), False
        tx = await _lock_transaction_for(conn, cmd)
        if cmd.credit_note_id is not None:
            existing = await store.refund_by_credit_note(conn, tx["id"], cmd.credit_note_id)
            if existing is not None:
                return existing, tx, False
        if cmd.currency != tx["currency"]:
            raise errors.Refused(f"the transaction is in {tx['currency']}, the refund in {cmd.currency}",
                                 code="currency_mismatch", transaction_currency=tx["currency"])
        refundable = tx["amount"] - tx["refunded_amount"] - tx["reserved_amount"]
        amount = cmd.amount if cmd.amount is not None else refundable
        if refundable <= 0 or amount > refundable:
            detail = (f"nothing is left to refund on transaction {tx['id']}" if refundable <= 0 else
                      f"{money.format_amount(amount, tx['currency'])} exceeds the refundable "
                      f"{money.format_amount(refundable, tx['currency'])}")
            raise errors.Refused(detail, code="amount_exceeds_refundable", refundable_amount=max(0, refundable),
                                 transaction_id=tx["id"])
        refund_id = new_id("rf")
        # One statement writes the refund, reserves its amount and records the event.
        refund = await store.insert_refund(
            conn, id=refund_id, transaction_id=tx["id"], processor_id=tx["processor_id"], invoice_id=cmd.invoice_id,
            credit_note_id=cmd.credit_note_id, amount=amount, currency=tx["currency"], reason=cmd.reason,
            metadata=cmd.metadata, status=Status.PENDING, stage=Stage.SENDING, idempotency_key=refund_id,
            lease_seconds=lease_seconds, request_id=request_id,
            event_detail={"amount": amount, "currency": tx["currency"]})
        await ledger.publish(conn, refund, previous_status=None, request_id=request_id)
        if claim is not None:
            await store.set_key_resource(conn, claim.client_id, claim.key, refund_id)
    log.info("refund_created", refund_id=refund_id, transaction_id=tx["id"], processor=tx["processor_id"],
             amount=amount, currency=tx["currency"], status=Status.PENDING, stage=Stage.SENDING)
    return refund, tx, True
