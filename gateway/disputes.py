"""Disputes (chargebacks) of payments, from a processor's webhook or an operator's record: while one
is open the payment takes no new refund (the card network would not take both) and its refunds
that have not reached the processor wait, their amount still reserved; lost, the disputed amount
counts as charged back, out of what is refundable, and the waiting refunds need a person; won,
the waiting refunds go on. Each change reaches the billing core as an event."""

from __future__ import annotations

from typing import Any, Mapping

import asyncpg
import structlog

from adapters.base import DisputeSnapshot
from gateway import errors, ledger
from gateway.db import store
from gateway.domain.refunds import NextAction, Stage, Status, Target
from gateway.ids import new_id
from gateway.models import DisputeOut

log = structlog.get_logger(__name__)

HELD = "payment_disputed"  # the failure code of a refund a dispute holds
CHARGED_BACK = "payment_charged_back"
# Compare-and-set: only a refund still unsent is held or let go (one a worker claimed since is left alone).
UNSENT = (Status.PENDING, Stage.NOT_SENT)


async def apply(conn: asyncpg.Connection, processor_id: str, transaction: asyncpg.Record, snapshot: DisputeSnapshot,
                *, source: str, request_id: str | None) -> asyncpg.Record:
    """Record the dispute's state in the caller's transaction (the payment's row locked first, as
    every balance move does) and act on what changed. Returns the dispute row."""
    await store.lock_transaction(conn, transaction["id"])
    current = await store.lock_dispute(conn, processor_id, snapshot.psp_dispute_id)
    previous = current["status"] if current is not None else None
    if current is None:
        row = await store.insert_dispute(
            conn, id=new_id("dp"), processor_id=processor_id, psp_dispute_id=snapshot.psp_dispute_id,
            transaction_id=transaction["id"], amount=snapshot.amount, currency=snapshot.currency,
            status=snapshot.status, funds_withdrawn=snapshot.funds_withdrawn, reason=snapshot.reason, source=source)
        if row is None:  # written by a concurrent event about it since: apply over it
            return await apply(conn, processor_id, transaction, snapshot, source=source, request_id=request_id)
    elif (current["status"], current["funds_withdrawn"], current["amount"]) == (
            snapshot.status, snapshot.funds_withdrawn, snapshot.amount):
        return current  # nothing new (a duplicate, or an event that says what another said)
    elif current["status"] in ("won", "lost") and snapshot.status == "open":
        log.info("dispute_snapshot_stale", dispute_id=current["id"], status=current["status"])
        return current  # closed is final: an older "open" snapshot arriving late changes nothing
    else:
        row = await store.update_dispute(conn, current["id"], status=snapshot.status,
                                         funds_withdrawn=snapshot.funds_withdrawn, amount=snapshot.amount,
                                         reason=snapshot.reason)
    # The payment's row changes with its dispute: a refund checked against the payment before (and
    # written only while the row is that version, store.INSERT_REFUND) is checked again.
    await store.touch_transaction(conn, row["transaction_id"])
    if row["status"] != previous:
        await _settle_refunds(conn, row, request_id)
        if row["status"] == "lost":
            await store.charge_back(conn, row["transaction_id"], row["amount"])
    await publish(conn, row, previous, request_id)
    log.warning("dispute_changed", dispute_id=row["id"], processor=processor_id, transaction_id=row["transaction_id"],
                status=row["status"], previous_status=previous, amount=row["amount"], source=source)
    return row


def refuse_if_disputed(transaction: Mapping[str, Any]) -> None:
    """`transaction`: a payment row read with `disputed` (store.lock_transaction_for_refund)."""
    if transaction["disputed"]:
        raise errors.Conflict(f"transaction {transaction['id']} is under dispute: no refund goes to its processor "
                              "until the dispute is closed", code="payment_disputed", transaction_id=transaction["id"])


async def refuse_if_payment_disputed(conn: asyncpg.Connection, transaction_id: str) -> None:
    refuse_if_disputed({"id": transaction_id, "disputed": await store.payment_disputed(conn, transaction_id)})


async def _settle_refunds(conn: asyncpg.Connection, dispute: asyncpg.Record, request_id: str | None) -> None:
    """Hold the payment's unsent refunds while the dispute is open; let them go when it is won; hand
    them to a person when it is lost (the cardholder has the money back: do they still apply?)."""
    tx_id = dispute["transaction_id"]
    if dispute["status"] == "open":
        for refund_id in await store.unsent_refunds(conn, tx_id):
            await ledger.apply(conn, refund_id, ledger.Decision(
                Target(Status.PENDING, Stage.NOT_SENT), failure_code=HELD,
                failure_message="held: the payment is disputed; sent if the dispute is won"),
                event="dispute_hold", expect=UNSENT, recheck_seconds=1, request_id=request_id,
                detail={"dispute_id": dispute["id"]})
        return
    for refund_id in await store.held_refunds(conn, tx_id):
        if dispute["status"] == "won":
            decision = ledger.Decision(Target(Status.PENDING, Stage.NOT_SENT), retry_in=0.0)
        else:
            decision = ledger.Decision(
                Target(Status.REQUIRES_ATTENTION, Stage.NOT_SENT), failure_code=CHARGED_BACK,
                failure_message="the payment was charged back (a lost dispute): cancel this refund unless it "
                                "still applies", next_action=NextAction.CONTACT_SUPPORT)
        await ledger.apply(conn, refund_id, decision, event=f"dispute_{dispute['status']}", expect=UNSENT,
                           recheck_seconds=1, request_id=request_id, detail={"dispute_id": dispute["id"]})


async def publish(conn: asyncpg.Connection, dispute: asyncpg.Record, previous: str | None,
                  request_id: str | None) -> None:
    """The dispute's change, in the outbox the billing core's callbacks and GET /v1/events read."""
    event_type = ("dispute.opened" if previous is None else
                  f"dispute.{dispute['status']}" if dispute["status"] in ("won", "lost") and previous == "open"
                  else "dispute.updated")
    payload = {"type": event_type, "refund_id": None, "dispute_id": dispute["id"], "version": dispute["version"],
               "previous_status": previous, "data": DisputeOut.from_row(dispute).model_dump(mode="json")}
    await store.insert_dispute_outbox(conn, dispute["id"], dispute["version"], event_type, payload, request_id)
