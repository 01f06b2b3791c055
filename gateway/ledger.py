"""Moving a refund to a new state inside the caller's database transaction: the refund row is
locked, the state machine decides, the update is a compare-and-set, the transaction's balance
follows and an event row records the change. Processor answers and webhooks both come here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import asyncpg
import structlog

from adapters.base import (
    OutcomeUnknownError,
    ProcessorProtocolError,
    RefundResult,
    RefundSnapshot,
    TransientProcessorError,
)
from gateway import errors, metrics
from gateway.db import store
from gateway.logging import scrub_text
from gateway.domain.refunds import (
    DISAGREEMENT,
    DUPLICATE,
    OVER_REFUND,
    FINAL,
    BUCKET,
    BalanceDelta,
    REOPENED,
    Bucket,
    InvalidTransition,
    NextAction,
    Outcome,
    Stage,
    Status,
    Target,
    awaits_operator,
    balance_delta,
    check_transition,
    contradicts,
    is_reversal,
    is_stale,
    target_for,
)
from gateway.ids import new_id
from gateway.models import CreditNoteState

log = structlog.get_logger(__name__)

RESOLVE_EVENT = "admin_resolve"  # the event of an operator's settlement outside the processor


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a processor's answer (or the lack of one) takes the refund."""

    target: Target
    psp_refund_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    details: Mapping[str, str] | None = None
    retry_in: float | None = None  # for a refund left waiting: when its processor call is due again
    lease_seconds: float = 0.0  # for a refund moved to `sending`: how long the caller holds it
    duplicate_ids: tuple[str, ...] | None = None  # the processor's ids of executions beyond the first
    next_action: NextAction | None = None  # for a failed or stuck refund: what the billing core can do
    external_reference: str | None = None  # for one refunded outside the processor: the transfer's reference
    voided_payment: bool = False  # carried out as the one void the processor allows an unsettled payment


def said(text: str | None) -> str | None:
    """A processor's words as stored, shown to operators and sent to the billing core: without
    anything shaped like a key or a card number (a processor may echo what it was sent), bounded."""
    return scrub_text(text)[:500] if text else text


def _said_details(details: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An adapter's facts (a processor's message among them) as stored: scrubbed like its words."""
    if details is None:
        return None
    return {k: said(v) if isinstance(v, str) else v for k, v in details.items()}


def decide(answer: RefundResult | BaseException) -> Decision:
    if isinstance(answer, RefundResult) and answer.duplicate_psp_refund_ids:
        ids = ", ".join([answer.psp_refund_id or "?", *answer.duplicate_psp_refund_ids])
        return Decision(REOPENED, answer.psp_refund_id, DUPLICATE,
                        said(f"the processor carried this refund out {1 + len(answer.duplicate_psp_refund_ids)} "
                             f"times ({ids}): money went out more than once"),
                        {**(_said_details(answer.details) or {}),
                         "duplicate_psp_refund_ids": list(answer.duplicate_psp_refund_ids)},
                        duplicate_ids=answer.duplicate_psp_refund_ids, next_action=NextAction.CONTACT_SUPPORT)
    if isinstance(answer, RefundResult):
        failure_code = failure_message = next_action = None
        if answer.outcome is Outcome.DECLINED:
            failure_code = answer.decline_code or answer.processor_code or "declined"
            failure_message = answer.message or "the processor declined the refund"
            next_action = answer.next_action or NextAction.CONTACT_SUPPORT
        elif answer.outcome is Outcome.NEEDS_ATTENTION:
            failure_code, failure_message = answer.decline_code or "unrecognised_processor_status", answer.message
            next_action = answer.next_action or NextAction.CONTACT_SUPPORT
        elif answer.outcome is Outcome.CANCELED:
            failure_code, failure_message = answer.processor_code or "canceled", answer.message
        return Decision(target_for(answer.outcome), answer.psp_refund_id, failure_code, said(failure_message),
                        _said_details(answer.details), next_action=next_action,
                        voided_payment=answer.voided_payment and answer.outcome is Outcome.SUCCEEDED)
    attention = Status.REQUIRES_ATTENTION
    if isinstance(answer, TransientProcessorError):
        # Never reached the processor: an operator's replay, or a cancel and a new command, may succeed.
        return Decision(Target(attention, Stage.NOT_SENT), failure_code="retries_exhausted",
                        failure_message=said(str(answer)), next_action=NextAction.RETRY)
    code = ("outcome_unknown" if isinstance(answer, OutcomeUnknownError) else
            "processor_protocol_error" if isinstance(answer, ProcessorProtocolError) else "internal_error")
    message = (said(str(answer)) if isinstance(answer, (OutcomeUnknownError, ProcessorProtocolError)) else
               f"unexpected {type(answer).__name__} while calling the processor")
    return Decision(Target(attention, Stage.OUTCOME_UNKNOWN), failure_code=code, failure_message=message,
                    next_action=NextAction.CONTACT_SUPPORT)


async def apply(conn: asyncpg.Connection, refund_id: str, decision: Decision, *, event: str,
                expect: tuple[str, str] | None = None, current_truth: bool = False, recheck_seconds: float,
                refund_calls: int = 0, request_id: str | None = None, detail: dict[str, Any] | None = None,
                snapshot_at: datetime | None = None, by_operator: bool = False, lease_token: int | None = None,
                sent_at: datetime | None = None, verify_at: datetime | None = None,
                calls: Sequence[Any] = ()) -> tuple[asyncpg.Record, bool]:
    """Apply a decision; returns (the refund as it now is, whether its state changed). `calls`: the
    processor calls behind it (execution.Attempt), recorded whatever the decision does.

    `lease_token` is the fencing token of the claim the answer was got under (a run's answer);
    when the refund has been claimed again since, the answer is stale and moves nothing: its
    calls are counted, and `sent_at` (the newest refund call's start) and `verify_at` (when to
    look for a second execution) are kept, whoever holds the refund now.

    `expect` is the (status, stage) the decision was made from. A decision drawn from the lack
    of an answer (a timeout, retries spent) passes it, so that it never overrides what a real
    answer (a webhook, say) recorded meanwhile. Answers need no such guard: the state machine
    already refuses what would go backwards (pending after succeeded, succeeded after failed).
    Only `current_truth` (a webhook or a look-up: the processor's state now, not the answer to
    an earlier call) may turn a succeeded refund into a failed one, a reversal.

    `snapshot_at` is the processor's time of a webhook's snapshot: one older than the last
    applied to the refund is skipped. An answer that contradicts an operator's settlement (the
    processor carried out a refund resolved as failed) reopens the refund for attention, where
    only a decision `by_operator` (a replay, a resolution) moves it on.
    """
    current = await store.lock_refund_and_payment(conn, refund_id)
    status, stage = Status(current["status"]), Stage(current["stage"])
    if lease_token is not None and current["lease_token"] != lease_token:
        # The lease ran out while this answer's call was alive and someone claimed the refund
        # again: the new holder decides (it looks up and respects the execution window).
        metrics.child(metrics.FENCED_ANSWERS, current["processor_id"]).inc()
        log.warning("refund_answer_fenced", refund_id=refund_id, claim=lease_token, current_claim=current["lease_token"],
                    status=status, answer=decision.target.status, cause=event)
        return await _calls_kept(conn, current, calls, refund_calls, sent_at, verify_at), False
    if is_stale(snapshot_at, current["processor_snapshot_at"]):
        log.info("refund_snapshot_stale", refund_id=refund_id, status=status, answer=decision.target.status,
                 snapshot_at=snapshot_at, applied_at=current["processor_snapshot_at"], cause=event)
        return await _calls_kept(conn, current, calls, 0, None, None), False
    duplicate = decision.failure_code == DUPLICATE
    contradicted = (expect is None and not by_operator and contradicts(status, decision.target.status)
                    and await store.last_moved_by(conn, refund_id, status) == RESOLVE_EVENT)
    if contradicted:
        log.error("refund_processor_disagrees", refund_id=refund_id, processor=current["processor_id"],
                  settled_as=status, processor_says=decision.target.status, cause=event)
        detail = {**(detail or {}), "settled_as": status, "processor_says": decision.target.status}
        decision = Decision(REOPENED, decision.psp_refund_id, DISAGREEMENT,
                            f"the processor reports the refund {decision.target.status} after an operator "
                            f"resolved it as {status}", decision.details, next_action=NextAction.CONTACT_SUPPORT)
    target = decision.target
    unchanged = (target.status, target.stage) == (status, stage)
    try:
        if expect is not None and (status, stage) != expect:
            raise InvalidTransition(status, target.status)
        if not by_operator and awaits_operator(status, current["failure_code"]):
            raise InvalidTransition(status, target.status)
        if not unchanged:
            # A second execution reopens whatever the refund was: money went out twice.
            check_transition(status, target.status, contradicted=contradicted or duplicate)
            if status is Status.SUCCEEDED and not current_truth:
                raise InvalidTransition(status, target.status)
    except InvalidTransition:
        # Someone else (a webhook that beat our own answer, say) got there first: theirs stands.
        log.info("refund_answer_superseded", refund_id=refund_id, status=status, stage=stage,
                 answer=target.status, cause=event)
        return await _calls_kept(conn, current, calls, refund_calls, sent_at, verify_at), False
    delta = balance_delta(status, target.status, current["amount"])
    if delta.refunded > 0 and delta.refunded > current["payment_room"]:
        message = (f"the processor reports the refund {target.status}, but the payment's other refunds leave "
                   f"no room for its {current['amount']}: the payment was refunded beyond its amount")
        if by_operator:
            raise errors.Conflict(message, code="would_over_refund")  # OVER_REFUND, as documented
        log.error("refund_would_over_refund", refund_id=refund_id, processor=current["processor_id"],
                  status=status, processor_says=target.status, cause=event)
        decision = Decision(REOPENED, decision.psp_refund_id, OVER_REFUND, message, decision.details,
                            next_action=NextAction.CONTACT_SUPPORT)
        target, unchanged = decision.target, False
        delta = balance_delta(status, target.status, current["amount"])
    # The janitor's claim moves a refund to `sending` without telling the billing core: a round
    # that leaves it as the billing core last saw it (an unknown outcome still unknown, the same
    # words) is no news, and gets no new version and no callback.
    quiet = (not unchanged and stage is Stage.SENDING and target.status == status
             and _no_news(await store.last_published(conn, refund_id), decision, current, refund_calls))
    news = not (unchanged or quiet)
    callback = event_type(status, target.status) if news and current["credit_note_id"] is None else None
    # One statement: the compare-and-set, the balance move, the event row (none while unchanged), the
    # attempt rows and the callback (after it, for a refund of a credit note: see `publish`).
    updated = await store.update_refund_state(
        conn, refund_id, **_state(status, stage, decision, delta, event=None if unchanged else event,
                                  news=news, callback=callback, calls=calls, refund_calls=refund_calls,
                                  recheck_seconds=recheck_seconds, request_id=request_id, snapshot_at=snapshot_at,
                                  sent_at=sent_at, verify_at=verify_at, detail=detail))
    if decision.voided_payment and delta.refunded > 0:
        # Nothing more is refundable through the processor until the payment settles.
        await store.mark_voided(conn, current["transaction_id"])
        log.info("payment_voided", refund_id=refund_id, transaction_id=current["transaction_id"])
    if unchanged:
        return updated, False  # still where it was (a pending refund still pending)
    if quiet:
        return updated, True
    if callback is None:
        await publish(conn, updated, previous_status=status, request_id=request_id)
    if duplicate:
        metrics.child(metrics.DUPLICATE_EXECUTIONS, current["processor_id"]).inc()
        log.error("refund_executed_twice", refund_id=refund_id, processor=current["processor_id"], cause=event,
                  psp_refund_id=decision.psp_refund_id, duplicates=list(decision.duplicate_ids or ()))
    _moved(updated, status, decision, event, published_here=callback is not None)
    return updated, True


def _state(status: Status, stage: Stage, decision: Decision, delta: BalanceDelta, *, event: str | None, news: bool,
           callback: str | None, calls: Sequence[Any], refund_calls: int, recheck_seconds: float,
           request_id: str | None, snapshot_at: datetime | None, sent_at: datetime | None,
           verify_at: datetime | None, detail: dict[str, Any] | None) -> dict[str, Any]:
    """The columns of a refund's move from (status, stage) by `decision` (store._state_args)."""
    target = decision.target
    return dict(from_status=status, from_stage=stage, status=target.status, stage=target.stage,
                psp_refund_id=decision.psp_refund_id, failure_code=decision.failure_code,
                failure_message=decision.failure_message, attempts=refund_calls, recheck_seconds=recheck_seconds,
                version_step=1 if news else 0, retry_in=decision.retry_in, callback=callback, calls=calls,
                lease_seconds=decision.lease_seconds, reserved_delta=delta.reserved, refunded_delta=delta.refunded,
                event=event, snapshot_at=snapshot_at, reversed=is_reversal(status, target.status), sent_at=sent_at,
                verify_at=verify_at, duplicate_ids=decision.duplicate_ids, next_action=decision.next_action,
                external_reference=decision.external_reference, request_id=request_id,
                event_detail={"failure_code": decision.failure_code, "psp_refund_id": decision.psp_refund_id,
                              **(decision.details or {}), **(detail or {})})


def _moved(updated: asyncpg.Record, status: Status, decision: Decision, event: str, *, published_here: bool) -> None:
    """Count and log a refund's move (its callback written by the statement that moved it, if
    `published_here`; else by `publish`, which counts it)."""
    target = decision.target
    if published_here:
        published(updated, previous_status=status)
    log_method = log.info if target.status in FINAL or target.status == Status.PENDING else log.warning
    log_method("refund_state_changed", refund_id=updated["id"], processor=updated["processor_id"], cause=event,
               from_status=status, status=target.status, stage=target.stage, failure_code=decision.failure_code,
               psp_refund_id=updated["psp_refund_id"])


async def record_unlocked(conn: asyncpg.Connection, known: Mapping[str, Any], decision: Decision, *, event: str,
                          expect: tuple[str, str] | None, current_truth: bool, recheck_seconds: float,
                          refund_calls: int, request_id: str | None, lease_token: int | None,
                          sent_at: datetime | None, verify_at: datetime | None,
                          calls: Sequence[Any]) -> asyncpg.Record | None:
    """`apply` for a run's answer, in one statement and no transaction: the refund is taken to be
    `known` (as the run's claim left it), and the move is written only while it still is that
    version under that claim, with room on its payment (store.RECORD_IF_UNCHANGED). None, with
    nothing written: it moved meanwhile, or the decision needs what only `apply` reads (an
    operator's settlement, a quiet round, a credit note's state, a void, a second execution, an
    over-refund): apply it there."""
    status, stage, target = Status(known["status"]), Stage(known["stage"]), decision.target
    # A run's refund is pending under its claim: what `apply` reads beyond that (an operator's
    # settlement, the last callback, a credit note's refunds) only matters in the cases left to it.
    if (status is not Status.PENDING or lease_token is None or known["lease_token"] != lease_token
            or known["credit_note_id"] is not None or target.status == status or decision.voided_payment
            or decision.failure_code == DUPLICATE or (expect is not None and (status, stage) != expect)):
        return None
    try:
        check_transition(status, target.status)
    except InvalidTransition:
        return None
    delta = balance_delta(status, target.status, known["amount"])
    updated = await store.record_if_unchanged(
        conn, known["id"], version=known["version"], lease_token=lease_token, transaction_id=known["transaction_id"],
        **_state(status, stage, decision, delta, event=event, news=True, callback=event_type(status, target.status),
                 calls=calls, refund_calls=refund_calls, recheck_seconds=recheck_seconds, request_id=request_id,
                 snapshot_at=None, sent_at=sent_at, verify_at=verify_at, detail=None))
    if updated is not None:
        _moved(updated, status, decision, event, published_here=True)
    return updated


async def _calls_kept(conn: asyncpg.Connection, current: asyncpg.Record, calls: Sequence[Any], refund_calls: int,
                      sent_at: datetime | None, verify_at: datetime | None) -> asyncpg.Record:
    """An answer that moves nothing still made its processor calls: they are recorded and they
    count, and they are sends that a processor without idempotency keys may carry out (`sent_at`,
    `verify_at`)."""
    await store.insert_attempts(conn, current["id"], calls)
    if not refund_calls:  # no refund call, no send time either
        return current
    return await store.add_attempts(conn, current["id"], refund_calls, sent_at, verify_at)


def _no_news(published: Mapping[str, Any] | None, decision: Decision, current: asyncpg.Record,
             refund_calls: int) -> bool:
    """Whether the refund, once `decision` is applied, reads as the billing core was last told."""
    if published is None:
        return False
    after = {"status": decision.target.status, "stage": decision.target.stage,
             "psp_refund_id": decision.psp_refund_id if decision.psp_refund_id is not None
             else current["psp_refund_id"],
             "failure_code": decision.failure_code, "failure_message": decision.failure_message,
             "attempts": current["attempts"] + refund_calls}
    return all(published.get(field) == value for field, value in after.items())


async def record_external(conn: asyncpg.Connection, transaction: asyncpg.Record, snapshot: RefundSnapshot, *,
                          event: str, request_id: str | None = None,
                          snapshot_at: datetime | None = None) -> asyncpg.Record:
    """Record a refund the processor reports but the gateway never made (e.g. from a dashboard).

    One that would take the payment's refunded total beyond its amount is recorded as needing
    attention (OVER_REFUND), its amount reserved, as `apply` does for our own refunds: counted as
    refunded it would break the balance's CHECK, and the event would fail for ever."""
    decision = decide(snapshot.result())
    target = decision.target
    if BUCKET[target.status] is Bucket.REFUNDED and not await store.refund_fits(conn, transaction["id"],
                                                                                snapshot.amount):
        message = (f"the processor reports a refund of {snapshot.amount} made outside the gateway "
                   f"({snapshot.psp_refund_id}), but the payment's other refunds leave no room for it: "
                   f"the payment was refunded beyond its amount")
        log.error("external_refund_would_over_refund", transaction_id=transaction["id"],
                  processor=transaction["processor_id"], psp_refund_id=snapshot.psp_refund_id,
                  amount=snapshot.amount, processor_says=target.status)
        decision = Decision(REOPENED, decision.psp_refund_id, OVER_REFUND, message, decision.details,
                            next_action=NextAction.CONTACT_SUPPORT)
        target = decision.target
    refund_id = new_id("rf")
    row = await store.insert_external_refund(
        conn, id=refund_id, transaction_id=transaction["id"], processor_id=transaction["processor_id"],
        invoice_id=transaction["invoice_id"], amount=snapshot.amount, currency=transaction["currency"],
        status=target.status, stage=target.stage, psp_refund_id=snapshot.psp_refund_id,
        failure_code=decision.failure_code, failure_message=decision.failure_message, snapshot_at=snapshot_at,
        next_action=decision.next_action)
    await publish(conn, row, previous_status=None, request_id=request_id)
    bucket = BUCKET[target.status]
    await store.move_balance(conn, transaction["id"], snapshot.amount if bucket is Bucket.RESERVED else 0,
                             snapshot.amount if bucket is Bucket.REFUNDED else 0)
    await store.insert_event(conn, refund_id, event, from_status=None, to_status=target.status, from_stage=None,
                             to_stage=target.stage, detail={"origin": "external",
                                                            "psp_refund_id": snapshot.psp_refund_id,
                                                            "failure_code": decision.failure_code},
                             request_id=request_id)
    log.warning("external_refund_recorded", refund_id=refund_id, transaction_id=transaction["id"],
                processor=transaction["processor_id"], psp_refund_id=snapshot.psp_refund_id, amount=snapshot.amount,
                status=target.status)
    return row


def event_type(previous_status: str | None, status: str) -> str:
    """The callback's type for a refund moved from `previous_status` (None: just made) to `status`."""
    if previous_status is None:
        return "refund.created"
    if is_reversal(Status(previous_status), Status(status)):
        return "refund.reversed"
    return f"refund.{status}" if status != previous_status else "refund.updated"


async def publish(conn: asyncpg.Connection, refund: asyncpg.Record, *, previous_status: str | None,
                  request_id: str | None = None) -> None:
    """Write the callback for a refund's new state into the outbox, in the caller's transaction,
    with the id of the request (or round of background work) that caused it: a snapshot of the
    refund (rendered when read: callbacks.event_body) and, for a credit note's refund, the credit
    note as it now stands. A statement that writes a refund of no credit note writes its callback
    itself (store._OUTBOX_CTE), the same way."""
    kind = event_type(previous_status, refund["status"])
    credit_note = None
    if refund["credit_note_id"] is not None:
        rows = await store.credit_note_refunds(conn, refund["invoice_id"], refund["credit_note_id"])
        credit_note = CreditNoteState.from_rows(refund["invoice_id"], refund["credit_note_id"],
                                                rows).model_dump(mode="json")
    payload = {"type": kind, "refund_id": refund["id"], "version": refund["version"],
               "previous_status": previous_status,
               "refund": {column: refund[column] for column in store.REFUND_SNAPSHOT_COLUMNS},
               "credit_note": credit_note}
    await store.insert_outbox(conn, refund["id"], refund["version"], kind, payload, request_id)
    published(refund, previous_status=previous_status)


def published(refund: Mapping[str, Any], *, previous_status: str | None) -> None:
    """Count a refund's move, once its callback is written."""
    if refund["status"] != previous_status:
        metrics.child(metrics.REFUND_TRANSITIONS, refund["processor_id"], refund["status"]).inc()
