"""What an operator can do to a refund: replay it (resync with the processor first, resend with
the same key only if needed) or resolve it outside the processor; and to a webhook event: apply
it again. Every action is audited: who, when, why, what was asked and what came of it. The admin
API and the `psp-gateway refunds` / `webhooks` commands both act through here."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Literal, Mapping, Sequence

import asyncpg
import structlog

from adapters.base import CancelRefusedError, ProcessorAdapter, ProcessorError
from gateway import disputes, errors, ledger, webhooks
from gateway.db import store
from gateway.domain.refunds import FINAL, Stage, Status, Target
from gateway.execution import RefundExecutor, refund_request
from gateway.models import RefundOut

log = structlog.get_logger(__name__)

Resolution = Literal["refunded_offline", "failed", "canceled"]
REPLAY_CONCURRENCY = 5
# Replaying is for refunds that have not reached a final state; a filter never widens that.
REPLAYABLE = ("pending", "requires_attention")
# The failure code of a refund its processor holds until someone acts (Stripe's requires_action):
# the one kind of sent refund that can still be canceled, at the processor.
CANCELABLE_AT_PROCESSOR = "requires_action"


async def audit(conn: asyncpg.Connection, *, actor: str, action: str, target: str | None, reason: str | None,
                request: dict[str, Any], request_id: str | None, result: dict[str, Any] | None = None) -> int:
    audit_id = await store.insert_audit(conn, actor=actor, action=action, target=target, reason=reason,
                                        request=request, result=result or {}, request_id=request_id)
    log.info("admin_action", actor=actor, action=action, target=target, audit_id=audit_id)
    return audit_id


@contextlib.asynccontextmanager
async def audited_refusal(pool: asyncpg.Pool, *, actor: str, action: str, target: str | None, reason: str | None,
                          request: dict[str, Any], request_id: str | None) -> AsyncIterator[None]:
    """An action refused (no such refund, a final one, a call in flight) is audited too: in a
    transaction of its own, as the action's own is rolled back, with `{"refused": <code>}`."""
    try:
        yield
    except errors.GatewayError as e:
        async with pool.acquire() as conn:
            await audit(conn, actor=actor, action=action, target=target, reason=reason, request=request,
                        request_id=request_id, result={"refused": e.code, **e.extra})
        raise


async def _lock_open_refund(conn: asyncpg.Connection, refund_id: str, verb: str, *,
                            final_ok: frozenset[Status] = frozenset(), awaiting_ok: bool = False) -> asyncpg.Record:
    """The refund, locked, if it may be acted on: not final (but for `final_ok`), not awaiting approval
    (unless `awaiting_ok`), no call in flight."""
    refund = await store.lock_refund(conn, refund_id)
    if refund is None:
        raise errors.NotFound(f"no refund {refund_id!r}", code="refund_not_found")
    if Status(refund["status"]) in final_ok:
        if await store.refund_followed(conn, refund_id):
            raise errors.Conflict(f"refund {refund_id} was retried by a later refund of its credit note: act on "
                                  "that one", code="refund_superseded", status_now=refund["status"])
        return refund
    if Status(refund["status"]) in FINAL:
        raise errors.Conflict(f"a {refund['status']} refund cannot be {verb}", code="refund_final",
                              status_now=refund["status"])
    if refund["stage"] == Stage.AWAITING_APPROVAL and not awaiting_ok:
        raise errors.Conflict(f"the refund awaits approval: approve or reject it; it cannot be {verb}",
                              code="awaiting_approval", status_now=refund["status"])
    if refund["stage"] == Stage.SENDING and refund["lease_expires_at"] > datetime.now(timezone.utc):
        raise errors.Conflict("a processor call for this refund is in flight; try again shortly",
                              code="refund_in_flight", headers={"Retry-After": "5"})
    return refund


def _adapter(executor: RefundExecutor, processor_id: str) -> ProcessorAdapter:
    try:
        return executor.adapter(processor_id)
    except KeyError:  # the account was removed from the configuration, or a command runs with another one
        raise errors.InvalidRequest(f"the refund's processor {processor_id!r} is not in this configuration",
                                    code="unknown_processor") from None


async def replay(pool: asyncpg.Pool, executor: RefundExecutor, refund_id: str, *, actor: str, reason: str,
                 lease_seconds: float, request_id: str | None) -> dict[str, Any]:
    """Resync with the processor, then resend with the refund's own key only if it has no record."""
    refused = audited_refusal(pool, actor=actor, action="refund.replay", target=refund_id, reason=reason,
                              request={}, request_id=request_id)
    async with refused, pool.acquire() as conn, conn.transaction():
        refund = await _lock_open_refund(conn, refund_id, "replayed")
        if refund["stage"] == Stage.NOT_SENT:  # one never sent is not sent while its payment is disputed
            await disputes.refuse_if_payment_disputed(conn, refund["transaction_id"])
        before = {"status": refund["status"], "stage": refund["stage"]}
        audit_id = await audit(conn, actor=actor, action="refund.replay", target=refund_id, reason=reason,
                               request={"before": before}, request_id=request_id)
        await store.reset_retry_budget(conn, refund_id)
        adapter = _adapter(executor, refund["processor_id"])
        if refund["stage"] != Stage.PENDING_AT_PROCESSOR:
            refund, _ = await ledger.apply(
                conn, refund_id, ledger.Decision(Target(Status.PENDING, Stage.SENDING), lease_seconds=lease_seconds),
                event="admin_replay", recheck_seconds=1, request_id=request_id, by_operator=True,
                detail={"actor": actor, "reason": reason})
        transaction = await store.get_transaction(conn, refund["transaction_id"])
    if refund["stage"] == Stage.PENDING_AT_PROCESSOR:
        # The processor accepted it: there is nothing to resend, only its state to ask for.
        row = await executor.check_pending(refund, request_id)
        looked_up = adapter.capabilities.lookup
        found = ("pending" if row["stage"] == Stage.PENDING_AT_PROCESSOR else row["status"]) if looked_up else None
        report_found, resent = found, False
    else:
        # A refund that never left may be sent as it is; any other is looked up before a resend.
        resolve_first = before["stage"] != Stage.NOT_SENT or adapter.capabilities.lookup
        report = await executor.run(refund, transaction, request_id, resolve_first=resolve_first,
                                    event="admin_replay_answer")
        row, looked_up, report_found, resent = report.refund, report.looked_up, report.found, report.resent
    found = report_found or ("no record at the processor" if looked_up else "not looked up")
    action = "resent with the same idempotency key" if resent else (
        "recorded what the processor reported" if report_found else "nothing")
    result = {"found": found, "action": action, "status": row["status"], "stage": row["stage"]}
    async with pool.acquire() as conn:
        await store.update_audit_result(conn, audit_id, result)
    return {**result, "refund": RefundOut.from_row(row).model_dump(mode="json")}


async def resolve(pool: asyncpg.Pool, refund_id: str, resolution: Resolution, *, actor: str, reason: str,
                  external_reference: str | None, request_id: str | None) -> asyncpg.Record:
    """Settle a refund outside the processor; the transaction's balance follows."""
    if resolution == "refunded_offline" and not external_reference:
        raise errors.InvalidRequest("refunded_offline needs the external_reference of the offline refund",
                                    errors=[{"field": "external_reference", "message": "required"}])
    refused = audited_refusal(pool, actor=actor, action=f"refund.resolve.{resolution}", target=refund_id,
                              reason=reason, request={"external_reference": external_reference},
                              request_id=request_id)
    # A declined refund can still be paid back outside the processor (refunded_offline).
    final_ok = frozenset({Status.FAILED}) if resolution == "refunded_offline" else frozenset()
    async with refused, pool.acquire() as conn, conn.transaction():
        refund = await _lock_open_refund(conn, refund_id, "resolved", final_ok=final_ok)
        failure_code = None if resolution == "refunded_offline" else f"resolved_{resolution}"
        row, _ = await ledger.apply(
            conn, refund_id, ledger.Decision(Target(Status(resolution), Stage.DONE), failure_code=failure_code,
                                             failure_message=f"resolved by {actor}: {reason}" if failure_code else None,
                                             external_reference=external_reference),
            event=ledger.RESOLVE_EVENT, recheck_seconds=1, request_id=request_id, by_operator=True,
            detail={"actor": actor, "reason": reason, "external_reference": external_reference})
        await audit(conn, actor=actor, action=f"refund.resolve.{resolution}", target=refund_id, reason=reason,
                    request={"before": {"status": refund["status"], "stage": refund["stage"]},
                             "external_reference": external_reference},
                    result={"status": row["status"]}, request_id=request_id)
    return row


async def cancel(pool: asyncpg.Pool, executor: RefundExecutor, refund_id: str, *, actor: str, reason: str | None,
                 request_id: str | None) -> asyncpg.Record:
    """Cancel a refund the processor never got (stage not_sent): its amount is released at once. One
    the processor holds without carrying it out (Stripe's requires_action) is cancelled there first,
    with no connection held; anything that may have reached the processor is refused."""
    refused = audited_refusal(pool, actor=actor, action="refund.cancel", target=refund_id, reason=reason,
                              request={}, request_id=request_id)
    detail = {"actor": actor, "reason": reason}
    async with refused:
        async with pool.acquire() as conn, conn.transaction():
            refund = await _lock_open_refund(conn, refund_id, "canceled", awaiting_ok=True)
            before = {"status": refund["status"], "stage": refund["stage"]}
            if refund["stage"] in (Stage.NOT_SENT, Stage.AWAITING_APPROVAL):
                row, _ = await ledger.apply(
                    conn, refund_id, ledger.Decision(Target(Status.CANCELED, Stage.DONE), failure_code="canceled",
                                                     failure_message=ledger.said(f"canceled by {actor}"
                                                                                 + (f": {reason}" if reason else ""))),
                    event="cancel", expect=(refund["status"], refund["stage"]), recheck_seconds=1,
                    request_id=request_id, detail=detail)
                await audit(conn, actor=actor, action="refund.cancel", target=refund_id, reason=reason,
                            request={"before": before}, result={"status": row["status"]}, request_id=request_id)
                return row
            adapter = _adapter(executor, refund["processor_id"])
            if not (adapter.capabilities.cancel and refund["psp_refund_id"]
                    and refund["failure_code"] == CANCELABLE_AT_PROCESSOR):
                raise errors.Conflict("the refund may have reached the processor: it cannot be canceled",
                                      code="refund_in_flight", status_now=refund["status"])
            transaction = await store.get_transaction(conn, refund["transaction_id"])
        try:
            answer = await adapter.cancel_refund(refund_request(refund, transaction, request_id),
                                                 refund["psp_refund_id"])
        except CancelRefusedError as e:
            raise errors.Conflict(f"the processor will not cancel the refund: {ledger.said(str(e))}",
                                  code="refund_in_flight", status_now=refund["status"]) from None
        except ProcessorError as e:
            raise errors.ServiceUnavailable(f"the processor did not answer the cancel: {ledger.said(str(e))}; retry",
                                            code="processor_unavailable", headers={"Retry-After": "5"}) from None
    async with pool.acquire() as conn, conn.transaction():
        row, _ = await ledger.apply(conn, refund_id, ledger.decide(answer), event="cancel", current_truth=True,
                                    recheck_seconds=1, request_id=request_id, detail=detail)
        await audit(conn, actor=actor, action="refund.cancel", target=refund_id, reason=reason,
                    request={"before": before}, result={"status": row["status"], "at_processor": True},
                    request_id=request_id)
    return row


async def approve(pool: asyncpg.Pool, executor: RefundExecutor, refund_id: str, *, actor: str, reason: str,
                  lease_seconds: float, request_id: str | None) -> asyncpg.Record:
    """A second person lets a refund over its approval threshold go: it is sent now, with its own key."""
    refused = audited_refusal(pool, actor=actor, action="refund.approve", target=refund_id, reason=reason,
                              request={}, request_id=request_id)
    async with refused, pool.acquire() as conn, conn.transaction():
        refund = await _awaiting(conn, refund_id, actor, "approved")
        await disputes.refuse_if_payment_disputed(conn, refund["transaction_id"])
        row, _ = await ledger.apply(
            conn, refund_id, ledger.Decision(Target(Status.PENDING, Stage.SENDING), lease_seconds=lease_seconds),
            event="approved", expect=(Status.PENDING, Stage.AWAITING_APPROVAL), recheck_seconds=1,
            request_id=request_id, by_operator=True, detail={"actor": actor, "reason": reason})
        await audit(conn, actor=actor, action="refund.approve", target=refund_id, reason=reason,
                    request={"requested_by": refund["requested_by"], "amount": refund["amount"]},
                    result={"status": row["status"], "stage": row["stage"]}, request_id=request_id)
        transaction = await store.get_transaction(conn, refund["transaction_id"])
    return await executor.send(row, transaction, request_id)  # no connection held


async def reject(pool: asyncpg.Pool, refund_id: str, *, actor: str, reason: str,
                 request_id: str | None) -> asyncpg.Record:
    """A second person refuses a refund over its approval threshold: canceled, its amount released."""
    refused = audited_refusal(pool, actor=actor, action="refund.reject", target=refund_id, reason=reason,
                              request={}, request_id=request_id)
    async with refused, pool.acquire() as conn, conn.transaction():
        refund = await _awaiting(conn, refund_id, actor, "rejected")
        row, _ = await ledger.apply(
            conn, refund_id, ledger.Decision(Target(Status.CANCELED, Stage.DONE), failure_code="rejected",
                                             failure_message=ledger.said(f"rejected by {actor}: {reason}")),
            event="rejected", expect=(Status.PENDING, Stage.AWAITING_APPROVAL), recheck_seconds=1,
            request_id=request_id, by_operator=True, detail={"actor": actor, "reason": reason})
        await audit(conn, actor=actor, action="refund.reject", target=refund_id, reason=reason,
                    request={"requested_by": refund["requested_by"], "amount": refund["amount"]},
                    result={"status": row["status"]}, request_id=request_id)
    return row


async def _awaiting(conn: asyncpg.Connection, refund_id: str, actor: str, verb: str) -> asyncpg.Record:
    """The refund, locked, if it awaits approval and `actor` is not who asked for it (four eyes)."""
    refund = await _lock_open_refund(conn, refund_id, verb, awaiting_ok=True)
    if refund["stage"] != Stage.AWAITING_APPROVAL:
        raise errors.Conflict(f"the refund does not await approval (it is {refund['status']}, stage "
                              f"{refund['stage']})", code="not_awaiting_approval", status_now=refund["status"])
    if refund["requested_by"] is not None and refund["requested_by"] == actor:
        raise errors.Forbidden("the refund must be approved or rejected by another client than the one that asked "
                               "for it", code="same_requester")
    return refund


async def replay_candidates(pool: asyncpg.Pool, *, limit: int, stuck_older_than: float | None = None,
                            ids: Sequence[str] | None = None, status: str | None = None,
                            processor: str | None = None, failure_code: str | None = None) -> list[str]:
    """The ids a bulk replay would replay, newest first: refunds not final, narrowed by the filter."""
    async with pool.acquire() as conn:
        rows = await store.list_refunds(
            conn, stuck_older_than=stuck_older_than, ids=ids, statuses=[status] if status else REPLAYABLE,
            processor_id=processor, failure_code=failure_code, starting_after=None, limit=limit)
    return [r["id"] for r in rows[:limit]]


async def record_dry_run(pool: asyncpg.Pool, candidates: list[str], *, actor: str, reason: str,
                         request: dict[str, Any], request_id: str | None) -> None:
    """A bulk replay's dry run changes nothing, but who looked, and at what, is audited too."""
    async with pool.acquire() as conn:
        await audit(conn, actor=actor, action="refund.replay.dry_run", target=None, reason=reason, request=request,
                    request_id=request_id, result={"would_replay": candidates})


async def replay_many(pool: asyncpg.Pool, executor: RefundExecutor, refund_ids: Sequence[str], *, actor: str,
                      reason: str, lease_seconds: float, request_id: str | None,
                      on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Replay each refund (a few at once), each audited on its own; a refusal is a result, not an
    error. Results come in the order of `refund_ids`; `on_done` sees each as it finishes."""
    semaphore = asyncio.Semaphore(REPLAY_CONCURRENCY)

    async def one(refund_id: str) -> dict[str, Any]:
        async with semaphore:
            try:
                result = await replay(pool, executor, refund_id, actor=actor, reason=reason,
                                      lease_seconds=lease_seconds, request_id=request_id)
                outcome = {"id": refund_id, **{k: v for k, v in result.items() if k != "refund"}}
            except errors.GatewayError as e:
                outcome = {"id": refund_id, "error": e.code, "detail": e.detail}
        if on_done is not None:
            on_done(outcome)
        return outcome

    return list(await asyncio.gather(*(one(i) for i in refund_ids)))


def _row_id(raw: str) -> bool:
    """A bigint row id: ASCII digits only ("²".isdigit() is true too), short enough to fit."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 18


async def reprocess_webhook_event(pool: asyncpg.Pool, event_row_id: int | str, *, actor: str, reason: str,
                                  recheck_seconds: float, request_id: str | None,
                                  adapters: Mapping[str, ProcessorAdapter] | None = None) -> dict[str, Any]:
    """Apply one stored webhook event again, now (whatever its status, unless a worker holds it);
    one stored unread is parsed again by its processor's adapter in `adapters`."""
    raw_id = str(event_row_id)
    refused = audited_refusal(pool, actor=actor, action="webhook_event.reprocess", target=f"webhook_event:{raw_id}",
                              reason=reason, request={}, request_id=request_id)
    async with refused, pool.acquire() as conn:
        row = await store.claim_webhook_event(conn, int(raw_id), webhooks.LEASE_SECONDS) if _row_id(raw_id) else None
        if row is None:
            raise errors.NotFound(f"no webhook event {raw_id!r} that can be reprocessed now",
                                  code="webhook_event_not_found")
    status = await webhooks.process_row(pool, row, recheck_seconds=recheck_seconds, request_id=request_id,
                                        adapters=adapters)
    async with pool.acquire() as conn:
        await audit(conn, actor=actor, action="webhook_event.reprocess", target=f"webhook_event:{row['id']}",
                    reason=reason, request={}, result={"status": status}, request_id=request_id)
    return {"id": row["id"], "event_id": row["event_id"], "status": status}
