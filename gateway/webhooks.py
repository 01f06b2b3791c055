"""Processor webhooks: verify, store once, answer, then apply in the background.

An event that names a payment or refund the gateway does not know yet is parked as
`unmatched` and woken when that payment is registered (and swept again with backoff, in
case nothing wakes it); an event that fails to apply is retried with backoff. Nothing
verified is dropped: a verified body the adapter cannot read is stored raw as `failed` and
parsed again on each retry or reprocess.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Sequence

import asyncpg
import structlog

from adapters.base import ProcessorAdapter, RefundSnapshot, WebhookEvent, WebhookPayloadError, WebhookVerificationError
from gateway import disputes, ledger, metrics, services
from gateway.db import store
from gateway.ids import new_id
from gateway.logging import scrub_stored, scrub_stored_value, scrub_text

log = structlog.get_logger(__name__)

BATCH = 50
APPLY_CONCURRENCY = 8
LEASE_SECONDS = 60.0
# The headers worth keeping with a webhook (what it is, who sent it, its signature, the processor's
# delivery ids): an allow-list, as anyone can send any header with a forged one.
STORED_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "user-agent", "x-request-id",
                            "stripe-signature", "mock-signature", "webhook-id", "webhook-timestamp",
                            "x-delivery-id", "x-event-id"})
_HEADER_VALUE_MAX = 1024


def _text(value: str) -> str:
    """A header value as JSON can hold it: undecodable bytes (kept as surrogates) and NULs replaced."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def storable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k): scrub_stored(_text(v[:_HEADER_VALUE_MAX])) for k, v in headers.items()
            if str(k).lower() in STORED_HEADERS}


def storable_body(body: bytes) -> bytes:
    """The body as stored: the same bytes, unless it holds a card number or a configured secret."""
    text = body.decode("utf-8", "surrogateescape")
    scrubbed = scrub_stored(text)
    return body if scrubbed == text else scrubbed.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Receipt:
    event_id: str
    stored: bool  # False: stored before (a duplicate), acknowledged and not applied again
    unreadable: bool = False  # verified, but the adapter could not read it: stored as failed


def body_event_id(body: bytes) -> str:
    """The id of an event whose own cannot be read: the same body sent again is the same event."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


async def receive(pool: asyncpg.Pool, adapter: ProcessorAdapter, headers: Mapping[str, str],
                  body: bytes) -> Receipt:
    """Verify and store an event.

    Raises WebhookVerificationError, and then nothing is stored. A verified body the adapter
    cannot read is stored anyway, raw, as `failed` with the reason.
    """
    try:
        event = adapter.parse_webhook(headers, body)
    except WebhookPayloadError as e:
        return await _keep_unreadable(pool, adapter, headers, body, e)
    except (ValueError, TypeError, OverflowError) as e:
        # Headers are anyone's: one an adapter cannot even parse is a failed verification, never a 500.
        raise WebhookVerificationError(f"unreadable signature header ({type(e).__name__})") from None
    # The event as stored, and applied later: without card numbers or secrets a processor relayed.
    as_read = event.model_dump(mode="json")
    stored = scrub_stored_value(as_read)
    if stored != as_read:  # something was scrubbed: the event is what is left
        event = WebhookEvent.model_validate(stored)
        stored = event.model_dump(mode="json")
    async with pool.acquire() as conn:
        row_id = await store.insert_webhook_event(
            conn, processor_id=adapter.id, event_id=event.event_id, event_type=event.type,
            headers=storable_headers(headers), body=storable_body(body), event=stored,
            match_keys=event.match_keys())
    log.info("webhook_received", processor=adapter.id, event_id=event.event_id, event_type=event.type,
             duplicate=row_id is None)
    metrics.child(metrics.WEBHOOK_EVENTS, adapter.id, "received" if row_id is not None else "duplicate").inc()
    return Receipt(event.event_id, row_id is not None)


async def _keep_unreadable(pool: asyncpg.Pool, adapter: ProcessorAdapter, headers: Mapping[str, str], body: bytes,
                           error: WebhookPayloadError) -> Receipt:
    # Answered 2xx: the processor would only send the same bytes again, for days. Kept here, it is
    # listed as failed, retried (a new release may read it) and can be reprocessed by an operator.
    event_id = scrub_stored(error.event_id) if error.event_id else body_event_id(body)
    async with pool.acquire() as conn:
        row_id = await store.insert_unreadable_webhook_event(
            conn, processor_id=adapter.id, event_id=event_id,
            event_type=scrub_stored(error.event_type) if error.event_type else "unknown",
            headers=storable_headers(headers), body=storable_body(body),
            error=scrub_text(f"unreadable: {error}")[:500])
    log.warning("webhook_unreadable", processor=adapter.id, event_id=event_id, event_type=error.event_type,
                reason=str(error)[:200], duplicate=row_id is None)
    metrics.child(metrics.WEBHOOK_EVENTS, adapter.id, "received" if row_id is not None else "duplicate").inc()
    if row_id is not None:
        metrics.child(metrics.WEBHOOK_EVENTS, adapter.id, "failed").inc()
    return Receipt(event_id, row_id is not None, unreadable=True)


class RefundBusy(Exception):
    """A refund found under its payment's lock is held by another session: the event is applied
    again later rather than wait the wrong way round."""

    def __init__(self, refund_id: str) -> None:
        super().__init__(f"refund {refund_id} was busy; the event is applied again shortly")
        self.refund_id = refund_id


async def apply_event(conn: asyncpg.Connection, processor_id: str, event: WebhookEvent, *,
                      recheck_seconds: float, request_id: str | None = None) -> str:
    """Apply one event inside the caller's transaction; returns the event's new status."""
    cause = f"webhook:{event.type}"
    # The processor's time of the event's snapshots: an older one never overwrites a newer state.
    snapshot_at = datetime.fromtimestamp(event.created, timezone.utc) if event.created is not None else None
    for payment in event.payments:
        if payment.invoice_id is None:
            log.info("webhook_payment_without_invoice", processor=processor_id, psp_reference=payment.psp_reference)
            continue
        await services.register_payment(conn, processor_id, payment)
    unmatched = False
    known = [await known_refund(conn, processor_id, snapshot) for snapshot in event.refunds]
    if len(known) > 1:
        # Each refund is applied under its lock and its payment's, taken in that order.
        # One by one, this event would hold the payment while it waits for its next refund, and an
        # event naming them in another order could hold that refund and wait for the payment: so
        # all of them are locked first, in one order.
        await store.lock_refunds(conn, sorted({refund["id"] for refund in known if refund is not None}))
    for snapshot, refund in zip(event.refunds, known):
        if refund is None:
            transaction = await payment_after_registrations(conn, processor_id, snapshot.payment_references)
            if transaction is None:
                unmatched = True
                continue
            await store.lock_transaction(conn, transaction["id"])
            # Under the lock, again: another event about the same refund (or an earlier snapshot of this
            # one) may have recorded it since it was looked up.
            refund = await known_refund(conn, processor_id, snapshot)
            if refund is None:
                await ledger.record_external(conn, transaction, snapshot, event=cause, request_id=request_id,
                                             snapshot_at=snapshot_at)
                continue
            # Recorded meanwhile: found holding its payment, the wrong way round. Whoever holds the
            # refund may be waiting for the payment (a processor answer being recorded): take it only
            # if it is free now; else give everything back and apply the event again shortly.
            try:
                await store.lock_refund_at_once(conn, refund["id"])
            except asyncpg.LockNotAvailableError:
                raise RefundBusy(refund["id"]) from None
        if refund["amount"] != snapshot.amount:
            log.warning("webhook_refund_amount_differs", refund_id=refund["id"], ours=refund["amount"],
                        processor_amount=snapshot.amount)
        await ledger.apply(conn, refund["id"], ledger.decide(snapshot.result()), event=cause, current_truth=True,
                           recheck_seconds=recheck_seconds, detail={"event_id": event.event_id},
                           request_id=request_id, snapshot_at=snapshot_at)
    for dispute in event.disputes:
        transaction = await payment_after_registrations(conn, processor_id, dispute.payment_references)
        if transaction is None:
            unmatched = True
            continue
        await disputes.apply(conn, processor_id, transaction, dispute, source="webhook", request_id=request_id)
    if unmatched:
        return "unmatched"
    return "applied" if event.payments or event.refunds or event.disputes else "ignored"


async def payment_after_registrations(conn: asyncpg.Connection, processor_id: str,
                                      references: Sequence[str]) -> asyncpg.Record | None:
    """The payment these ids name, or None; under the caller's transaction.

    A registration of the payment may be about to commit, and its wake-up would miss an event
    parked after it. Its locks on the ids settle the order: wait for it and look again (a new
    statement, so a new snapshot), or hold it off until the caller's work is written and the
    wake-up can see it."""
    transaction = await services.known_payment(conn, processor_id, references)
    if transaction is None:
        await store.lock_payment_references(conn, processor_id, references)
        transaction = await services.known_payment(conn, processor_id, references)
    return transaction


async def known_refund(conn: asyncpg.Connection, processor_id: str,
                       snapshot: RefundSnapshot) -> asyncpg.Record | None:
    """Our refund for a snapshot: by the processor's refund id, else by our id echoed in metadata."""
    refund = await store.refund_by_psp_id(conn, processor_id, snapshot.psp_refund_id)
    if refund is None and snapshot.refund_id:
        refund = await store.get_refund(conn, snapshot.refund_id)
        if refund is not None and refund["processor_id"] != processor_id:
            refund = None
    return refund


async def process_due(pool: asyncpg.Pool, *, recheck_seconds: float,
                      adapters: Mapping[str, ProcessorAdapter] | None = None) -> int:
    """Apply every event that is due; returns how many were looked at. `adapters` parse again the
    stored bodies that could not be read when they came."""
    async with pool.acquire() as conn:
        due = await store.claim_due_webhook_events(conn, BATCH, LEASE_SECONDS)
    # Several at once: two events about one refund are serialised by its row lock, and an older
    # snapshot (by the processor's time, else by the state machine) is skipped whichever lands first.
    semaphore = asyncio.Semaphore(APPLY_CONCURRENCY)

    async def one(row: asyncpg.Record) -> None:
        async with semaphore:
            await process_row(pool, row, recheck_seconds=recheck_seconds, adapters=adapters)

    await asyncio.gather(*(one(r) for r in due))
    return len(due)


async def process_row(pool: asyncpg.Pool, row: asyncpg.Record, *, recheck_seconds: float,
                      request_id: str | None = None, adapters: Mapping[str, ProcessorAdapter] | None = None) -> str:
    """Apply one claimed event; a failure is recorded on the event and retried with backoff.
    Applied in the background, it gets a request id of its own (an operator's reprocess passes theirs)."""
    request_id = request_id or new_id("req")
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        status = await _process_row(pool, row, recheck_seconds=recheck_seconds, request_id=request_id,
                                    adapters=adapters or {})
    metrics.child(metrics.WEBHOOK_EVENTS, row["processor_id"], status).inc()
    return status


async def _parse_stored(pool: asyncpg.Pool, row: asyncpg.Record,
                        adapters: Mapping[str, ProcessorAdapter]) -> WebhookEvent:
    """The event of a row stored unread: its body, verified when it came, parsed by today's adapter."""
    adapter = adapters.get(row["processor_id"])
    if adapter is None:
        raise WebhookPayloadError(f"no adapter for processor {row['processor_id']!r} here to parse it")
    async with pool.acquire() as conn:
        body = await store.webhook_event_body(conn, row["id"])
    return adapter.parse_webhook_body(bytes(body))


async def _process_row(pool: asyncpg.Pool, row: asyncpg.Record, *, recheck_seconds: float, request_id: str,
                       adapters: Mapping[str, ProcessorAdapter]) -> str:
    unread = row["event"] is None
    try:
        event = await _parse_stored(pool, row, adapters) if unread else WebhookEvent.model_validate(row["event"])
        async with pool.acquire() as conn, conn.transaction():
            if unread:
                await store.set_webhook_event_parsed(conn, row["id"], event.type, event.model_dump(mode="json"),
                                                     event.match_keys())
            status = await apply_event(conn, row["processor_id"], event, recheck_seconds=recheck_seconds,
                                       request_id=request_id)
            waited = await store.finish_webhook_event(conn, row["id"], status)
        if status != "unmatched" and waited is not None:
            metrics.child(metrics.WEBHOOK_LAG, row["processor_id"]).observe(max(0.0, waited))
        log.info("webhook_processed", processor=row["processor_id"], event_id=row["event_id"], status=status)
        return status
    except RefundBusy as e:  # expected now and then: no traceback
        log.info("webhook_deferred", processor=row["processor_id"], event_id=row["event_id"],
                 refund_id=e.refund_id)
        async with pool.acquire() as conn:
            await store.fail_webhook_event(conn, row["id"], f"deferred: {e}")
        return "failed"
    except WebhookPayloadError as e:  # still unreadable: no traceback, the reason says it all
        log.warning("webhook_unreadable", processor=row["processor_id"], event_id=row["event_id"],
                    attempts=row["attempts"], reason=str(e)[:200])
        async with pool.acquire() as conn:
            await store.fail_webhook_event(conn, row["id"], scrub_text(f"unreadable: {e}")[:500])
        return "failed"
    except Exception as e:
        log.exception("webhook_failed", processor=row["processor_id"], event_id=row["event_id"],
                      attempts=row["attempts"])
        async with pool.acquire() as conn:
            await store.fail_webhook_event(conn, row["id"], scrub_text(f"{type(e).__name__}: {e}")[:500])
        return "failed"
