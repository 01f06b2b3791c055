"""Use cases: register an original payment, create a refund under the transaction's row lock.

Each function owns its database transaction and raises GatewayError subclasses; the HTTP
layer only parses and serialises.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

import asyncpg
import structlog

from adapters.base import PaymentSnapshot
from gateway import disputes, errors, ledger
from gateway.db import store
from gateway.domain import credit_notes, matching, money
from gateway.domain.refunds import Stage, Status
from gateway.ids import new_id
from gateway.models import RefundCreate, TransactionCreate, credit_note_parts, refundable_amount
from gateway.settings import ClientConfig, ProcessorConfig

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
    settles = body.settled and existing["settled_at"] is None
    if not body.settled and existing["settled_at"] is not None:
        differs.append("settled")
    if differs:
        raise errors.Conflict(
            f"transaction {body.psp_reference!r} at {body.processor!r} is already registered with other values",
            code="transaction_conflict", transaction_id=existing["id"], conflicting_fields=differs)
    if settles:
        # Settlement is news that comes later: the payment's batch closed (what is refundable after
        # a void of the unsettled sale depends on it).
        existing = await store.mark_settled(conn, existing["id"])
        log.info("transaction_settled", transaction_id=existing["id"], processor=body.processor)
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
    # Inside a caller's transaction (a webhook's), its own: a savepoint would cost two round trips
    # and save nothing, as a failure here fails the caller's work too.
    async with contextlib.nullcontext() if conn.is_in_transaction() else conn.transaction():
        # Held to the end of the (outermost) transaction: a webhook that finds the payment unknown
        # waits for this one to commit, or is parked before the wake-up below looks for it.
        claimed = await store.lock_and_claim_references(conn, processor_id, references, transaction_id)
        # Every id free: no transaction knows the payment (the claim waited for any registration
        # holding one). Else the one that does, if written; the one these claims are for is not, yet.
        row = None if len(claimed) == len(references) else await known_payment(conn, processor_id, references)
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


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A refund command's refunds (one, or one per payment for a credit note spread over several),
    their payments by id, and whether the command made them."""

    refunds: list[asyncpg.Record]
    transactions: dict[str, asyncpg.Record]
    created: bool

    @property
    def refund(self) -> asyncpg.Record:
        return self.refunds[0]


def _candidate(row: asyncpg.Record, offline: bool) -> matching.Candidate:
    return matching.Candidate(id=row["id"], invoice_id=row["invoice_id"], psp_reference=row["psp_reference"],
                              processor_id=row["processor_id"], currency=row["currency"],
                              refundable=refundable_amount(row, through_processor=not offline))


def _candidates_json(candidates: list[matching.Candidate]) -> list[dict[str, object]]:
    return [{"transaction_id": c.id, "processor": c.processor_id, "psp_reference": c.psp_reference,
             "currency": c.currency, "refundable_amount": c.refundable} for c in candidates]


def _pointer(cmd: RefundCreate) -> str | None:
    return cmd.transaction_id or cmd.psp_reference


async def _transaction_for(conn: asyncpg.Connection, cmd: RefundCreate, *, lock: bool) -> asyncpg.Record:
    """The transaction the command means (store.transaction_for_refund), `lock`ed FOR UPDATE for the
    balance check, or read as it is (the refund is then written only if it is still so)."""
    offline = cmd.method == "offline"
    if cmd.transaction_id is not None:
        # Named by id: read it at once, as the balance check needs it.
        row = await store.transaction_for_refund(conn, cmd.transaction_id, lock=lock)
        rows, by_pointer = ([row] if row else []), True
    elif cmd.psp_reference is not None:
        rows, by_pointer = await store.transactions_by_reference(conn, cmd.psp_reference), True
    else:
        rows, by_pointer = await store.transactions_by_invoice(conn, cmd.invoice_id), False
    try:
        chosen = matching.match([_candidate(r, offline) for r in rows], by_pointer=by_pointer)
    except matching.NoTransaction:
        pointer = _pointer(cmd)
        detail = (f"no transaction {pointer!r}" if pointer else f"invoice {cmd.invoice_id!r} has no registered payment")
        raise errors.NotFound(detail, code="transaction_not_found") from None
    except matching.Ambiguous as e:
        raise errors.Conflict("several transactions match: name one with transaction_id, or spread the credit note "
                              "over them with allocation auto", code="ambiguous_transaction",
                              candidates=_candidates_json(e.candidates)) from None
    except matching.NothingRefundable as e:
        raise errors.Refused(f"nothing is left to refund on invoice {cmd.invoice_id!r}",
                              code="amount_exceeds_refundable", refundable_amount=0,
                              candidates=_candidates_json(e.candidates)) from None
    if chosen.invoice_id != cmd.invoice_id:
        raise errors.Refused(
            f"transaction {chosen.id!r} belongs to invoice {chosen.invoice_id!r}, not {cmd.invoice_id!r}",
            code="invoice_mismatch")
    if cmd.transaction_id is not None:
        return rows[0]
    return await store.transaction_for_refund(conn, chosen.id, lock=lock)


def _check_command(cmd: RefundCreate) -> None:
    """What the fields allow together (each field on its own is the model's)."""
    problems = []
    if cmd.method == "offline" and cmd.external_reference is None:
        problems.append({"field": "external_reference", "message": "required with method offline"})
    if cmd.method != "offline" and cmd.external_reference is not None:
        problems.append({"field": "external_reference", "message": "only for method offline"})
    if cmd.allocation is not None and cmd.credit_note_id is None:
        problems.append({"field": "credit_note_id", "message": "required with allocation"})
    if cmd.allocation is not None and _pointer(cmd) is not None:
        problems.append({"field": "allocation", "message": "spreads over the invoice's payments: name none of them"})
    if problems:
        raise errors.InvalidRequest("; ".join(f"{p['field']}: {p['message']}" for p in problems), errors=problems)


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks for a refund, and the controls on what they may ask (config: per client and per
    processor account; the stricter wins)."""

    client: ClientConfig | None = None
    processors: Sequence[ProcessorConfig] = ()

    @property
    def client_id(self) -> str | None:
        return self.client.id if self.client is not None else None

    def _strictest(self, name: str, processor_id: str) -> int | None:
        processor = next((p for p in self.processors if p.id == processor_id), None)
        values = [getattr(c, name) for c in (self.client, processor) if c is not None]
        return min((v for v in values if v is not None), default=None)

    def max_age_days(self, processor_id: str) -> int | None:
        return self._strictest("max_refund_age_days", processor_id)

    def approval_threshold(self, processor_id: str) -> int | None:
        return self._strictest("approval_threshold", processor_id)


async def create_refund(conn: asyncpg.Connection, cmd: RefundCreate, *, lease_seconds: float,
                        claim: IdempotencyClaim | None = None, request_id: str | None = None,
                        requester: Requester = Requester()) -> CommandResult:
    """Match, check and reserve the balance, and write the refund (or, for a credit note spread over
    an invoice's payments, one per payment).

    A refund for the processor is written as already `sending` under a lease, because the caller
    sends it right after the commit; one refunded outside it is written `refunded_offline`. A
    command for a credit note that already has refunds is answered by credit_notes.plan: the same
    refunds again, a retry of failed ones, or a conflict.

    A refund of one payment with no credit note and no daily cap to count is checked against the
    payment as read and written by one statement that holds only while the payment is still that
    version (two round trips, no transaction held open); if it changed meanwhile, or the command
    needs more, all is done again under the payment's lock (`_create_locked`)."""
    _check_command(cmd)
    if cmd.credit_note_id is None and cmd.allocation is None and (
            requester.client is None or requester.client.daily_refund_cap is None):
        made = await _create_unlocked(conn, cmd, lease_seconds, claim, request_id, requester)
        if made is not None:
            return made
    return await _create_locked(conn, cmd, lease_seconds, claim, request_id, requester)


async def _create_unlocked(conn: asyncpg.Connection, cmd: RefundCreate, lease_seconds: float,
                           claim: IdempotencyClaim | None, request_id: str | None,
                           requester: Requester) -> CommandResult | None:
    """The refund checked against its payment as read, written only if the payment is unchanged
    (INSERT_REFUND); None when it changed (or the key points elsewhere): try under the lock. A
    refusal is the answer for the payment as it stood when read."""
    tx = await _transaction_for(conn, cmd, lock=False)
    shares, transactions = [(tx["id"], _checked_amount(cmd, tx, cmd.amount))], {tx["id"]: tx}
    if cmd.method != "offline":
        disputes.refuse_if_disputed(tx)
        await _check_controls(conn, requester, shares, transactions)
    refunds = await _insert_refunds(conn, cmd, shares, transactions, [], lease_seconds, request_id, requester, claim)
    if not refunds:
        return None
    _log_created(refunds)
    return CommandResult(refunds, transactions, True)


def _log_created(refunds: Sequence[asyncpg.Record]) -> None:
    for refund in refunds:
        log.info("refund_created", refund_id=refund["id"], transaction_id=refund["transaction_id"],
                 processor=refund["processor_id"], amount=refund["amount"], currency=refund["currency"],
                 status=refund["status"], stage=refund["stage"], previous_refund_id=refund["previous_refund_id"])


async def _create_locked(conn: asyncpg.Connection, cmd: RefundCreate, lease_seconds: float,
                         claim: IdempotencyClaim | None, request_id: str | None,
                         requester: Requester) -> CommandResult:
    """The command in one database transaction, under the locks of the key, the credit note and
    the payments, in that order."""
    async with conn.transaction():
        if claim is not None:
            # The key row first, before any payment's row lock: a request that took the key over
            # when its lock expired, or the first one it took it from, waits here for the other and
            # answers with its refund; one key never makes two, even without a credit note.
            key_row = await store.lock_key(conn, claim.client_id, claim.key)
            if key_row is None:  # given up meanwhile by the key's other holder: a retry claims it anew
                raise errors.ServiceUnavailable("this request's Idempotency-Key was released while it ran; retry",
                                                code="idempotency_key_lost", headers={"Retry-After": "1"})
            made = await recovered(conn, key_row["resource_id"]) if key_row["resource_id"] else None
            if made is not None:
                return made
        tx, previous, amount = None, [], cmd.amount
        if cmd.credit_note_id is not None:
            # Every command for one credit note waits for the one before it (retries, allocations).
            await store.lock_credit_note(conn, cmd.invoice_id, cmd.credit_note_id)
            rows = await store.credit_note_refunds(conn, cmd.invoice_id, cmd.credit_note_id)
            if _pointer(cmd) is not None:
                # Named payment: its refunds for the credit note (a credit note split by hand).
                tx = await _transaction_for(conn, cmd, lock=True)
                rows = [r for r in rows if r["transaction_id"] == tx["id"]]
            try:
                step = credit_notes.plan(credit_note_parts(rows), amount=cmd.amount, offline=cmd.method == "offline")
            except credit_notes.CreditNoteConflict as e:
                raise _conflict(cmd, e) from None
            if isinstance(step, credit_notes.Existing):
                if len(step.parts) > 1 and cmd.allocation is None:
                    raise _conflict(cmd, credit_notes.CreditNoteConflict(
                        "the credit note is spread over several payments: ask with allocation auto, or name "
                        "one payment", step.parts))
                by_id = {r["id"]: r for r in rows}
                found = [by_id[p.id] for p in step.parts]
                return CommandResult(found, await _transactions_of(conn, found), False)
            previous, amount = step.previous, step.amount
        if cmd.allocation is not None:
            shares, transactions = await _allocate(conn, cmd, amount)
        else:
            tx = tx or await _transaction_for(conn, cmd, lock=True)
            shares, transactions = [(tx["id"], _checked_amount(cmd, tx, amount))], {tx["id"]: tx}
        if cmd.method != "offline":  # controls guard money the processor sends; an offline refund is a record
            for tx_id, _ in shares:
                disputes.refuse_if_disputed(transactions[tx_id])
            await _check_controls(conn, requester, shares, transactions)
        refunds = await _insert_refunds(conn, cmd, shares, transactions, previous, lease_seconds, request_id,
                                        requester, claim)
        if len(refunds) < len(shares):  # the payments are locked and the key held: nothing can differ
            raise RuntimeError("a locked payment changed before its refund was written")
    _log_created(refunds)
    return CommandResult(refunds, transactions, True)


async def recovered(conn: asyncpg.Connection, refund_id: str) -> CommandResult | None:
    """What a command already answered under its Idempotency-Key made: the refund, and the refunds
    made with it in the same command (one credit note over several payments). None: no such refund."""
    first = await store.get_refund(conn, refund_id)
    if first is None:
        return None
    found = [first]
    if first["credit_note_id"] is not None:
        found = [r for r in await store.credit_note_refunds(conn, first["invoice_id"], first["credit_note_id"])
                 if r["created_at"] == first["created_at"]]
    return CommandResult(found, await _transactions_of(conn, found), False)


async def _transactions_of(conn: asyncpg.Connection, refunds: Sequence[asyncpg.Record]) -> dict[str, asyncpg.Record]:
    return {tx_id: await store.get_transaction(conn, tx_id) for tx_id in {r["transaction_id"] for r in refunds}}


def _conflict(cmd: RefundCreate, e: credit_notes.CreditNoteConflict) -> errors.Conflict:
    first = e.parts[0]
    return errors.Conflict(
        f"credit note {cmd.credit_note_id!r}: {e}; read it at GET /v1/credit-notes/{cmd.credit_note_id}",
        code="credit_note_conflict", refund_id=first.id, refund_amount=first.amount,
        refunds=[{"id": p.id, "status": p.status, "amount": p.amount} for p in e.parts])


def _checked_amount(cmd: RefundCreate, tx: asyncpg.Record, amount: int | None) -> int:
    """The refund's amount on this payment (None: all that is left), within what is left."""
    if cmd.currency != tx["currency"]:
        raise errors.Refused(f"the transaction is in {tx['currency']}, the refund in {cmd.currency}",
                             code="currency_mismatch", transaction_currency=tx["currency"])
    offline = cmd.method == "offline"
    refundable = refundable_amount(tx, through_processor=not offline)
    if refundable <= 0 and refundable_amount(tx, through_processor=False) > 0:
        raise errors.Refused(
            f"the processor voided transaction {tx['id']} while it was unsettled and allows one void per sale: "
            "nothing more is refundable through it until it settles (register it again with settled true), "
            "or refund the rest with method offline", code="payment_voided", refundable_amount=0,
            transaction_id=tx["id"])
    amount = refundable if amount is None else amount
    if refundable <= 0 or amount > refundable:
        detail = (f"nothing is left to refund on transaction {tx['id']}" if refundable <= 0 else
                  f"{money.format_amount(amount, tx['currency'])} exceeds the refundable "
                  f"{money.format_amount(refundable, tx['currency'])}")
        raise errors.Refused(detail, code="amount_exceeds_refundable", refundable_amount=max(0, refundable),
                             transaction_id=tx["id"])
    return amount


async def _allocate(conn: asyncpg.Connection, cmd: RefundCreate,
                    amount: int | None) -> tuple[list[tuple[str, int]], dict[str, asyncpg.Record]]:
    """One credit note over the invoice's payments in its currency, newest first, each locked."""
    rows = [r for r in await store.lock_invoice_transactions(conn, cmd.invoice_id) if r["currency"] == cmd.currency]
    if not rows:
        raise errors.NotFound(f"invoice {cmd.invoice_id!r} has no registered payment in {cmd.currency}",
                              code="transaction_not_found")
    rows.sort(key=lambda r: (r["captured_at"] or r["created_at"], r["id"]), reverse=True)
    offline = cmd.method == "offline"
    payments = [credit_notes.Payment(r["id"], refundable_amount(r, through_processor=not offline)) for r in rows]
    try:
        shares = credit_notes.allocate(amount, payments)
    except credit_notes.NotEnough as e:
        asked = "anything" if amount is None else money.format_amount(amount, cmd.currency)
        raise errors.Refused(f"the invoice's payments cannot cover {asked}: "
                             f"{money.format_amount(e.refundable, cmd.currency)} is left to refund",
                             code="amount_exceeds_refundable", refundable_amount=e.refundable,
                             candidates=_candidates_json([_candidate(r, offline) for r in rows])) from None
    return shares, {r["id"]: r for r in rows}


async def _check_controls(conn: asyncpg.Connection, requester: Requester, shares: list[tuple[str, int]],
                          transactions: dict[str, asyncpg.Record]) -> None:
    """The refund window of each payment, and the client's daily cap (counted under a lock per
    client, so that concurrent commands cannot both take the last one)."""
    now = datetime.now(timezone.utc)
    for tx_id, _ in shares:
        tx = transactions[tx_id]
        days = requester.max_age_days(tx["processor_id"])
        paid_at = tx["captured_at"] or tx["created_at"]
        if days is not None and paid_at < now - timedelta(days=days):
            raise errors.Refused(f"transaction {tx_id} was paid more than {days} days ago, beyond the refund "
                                 "window: refund it with method offline", code="refund_window_expired",
                                 transaction_id=tx_id, next_action="refund_offline")
    cap = requester.client.daily_refund_cap if requester.client is not None else None
    if cap is not None:
        await store.lock_client_day(conn, requester.client.id)
        made = await store.refunds_today(conn, requester.client.id)
        if made + len(shares) > cap:
            raise errors.Refused(f"client {requester.client.id!r} has made {made} refunds today (UTC), and may make "
                                 f"{cap} a day", code="daily_limit_exceeded", refunds_today=made, daily_cap=cap)


def _followers(shares: list[tuple[str, int]], previous: list[credit_notes.Part]) -> list[str | None]:
    """Which released refund each new one retries: the one on its own payment first, then the others
    in order (newest first); each is retried by at most one."""
    left = list(previous)
    chosen: list[str | None] = []
    for tx_id, _ in shares:
        match = next((p for p in left if p.transaction_id == tx_id), left[0] if left else None)
        if match is not None:
            left.remove(match)
        chosen.append(match.id if match else None)
    return chosen


async def _insert_refunds(conn: asyncpg.Connection, cmd: RefundCreate, shares: list[tuple[str, int]],
                          transactions: dict[str, asyncpg.Record], previous: list[credit_notes.Part],
                          lease_seconds: float, request_id: str | None, requester: Requester,
                          claim: IdempotencyClaim | None) -> list[asyncpg.Record]:
    """Write the refunds, each with its amount on its payment, its event and (for the first) the
    Idempotency-Key pointed at it; with no credit note, each statement writes its callback too.
    Each is written only while its payment is the version read (store.insert_refund): the refunds
    written so far are returned, and the caller's transaction rolls back any before a miss."""
    offline = cmd.method == "offline"
    refunds = []
    callback = ledger.event_type(None, Status.PENDING) if cmd.credit_note_id is None else None
    for n, ((tx_id, amount), previous_id) in enumerate(zip(shares, _followers(shares, previous))):
        tx = transactions[tx_id]
        threshold = requester.approval_threshold(tx["processor_id"])
        # Over its threshold a refund is written but not sent: it waits for a second person.
        status, stage = ((Status.REFUNDED_OFFLINE, Stage.DONE) if offline else
                         (Status.PENDING, Stage.AWAITING_APPROVAL) if threshold is not None and amount > threshold
                         else (Status.PENDING, Stage.SENDING))
        refund_id = new_id("rf")
        # One statement writes the refund, moves its amount on the payment and records the event.
        refund = await store.insert_refund(
            conn, id=refund_id, transaction_id=tx_id, processor_id=tx["processor_id"], invoice_id=cmd.invoice_id,
            credit_note_id=cmd.credit_note_id, amount=amount, currency=tx["currency"], reason=cmd.reason,
            metadata=cmd.metadata, status=status, stage=stage, idempotency_key=refund_id,
            lease_seconds=lease_seconds, request_id=request_id, origin="offline" if offline else "gateway",
            external_reference=cmd.external_reference, previous_refund_id=previous_id,
            requested_by=requester.client_id, callback=callback,
            key=(claim.client_id, claim.key) if claim is not None and n == 0 else None,
            payment_version=tx["row_version"], disputes_hold=not offline,
            event_detail={"amount": amount, "currency": tx["currency"], "method": cmd.method,
                          "previous_refund_id": previous_id, "external_reference": cmd.external_reference})
        if refund is None:
            return refunds
        refunds.append(refund)
    for refund in refunds:
        if callback is None:  # once all are written: each event carries the credit note as it now stands
            await ledger.publish(conn, refund, previous_status=None, request_id=request_id)
        else:
            ledger.published(refund, previous_status=None)
    return refunds
