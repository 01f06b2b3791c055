"""What an operator can do to a refund: replay it (resync with the processor first, resend with
the same key only if needed) or resolve it outside the processor. Every action is audited:
who, when, why, what was asked and what came of it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

import asyncpg
import structlog

from gateway import errors, ledger
from gateway.db import store
from gateway.domain.refunds import FINAL, Stage, Status, Target
from gateway.execution import RefundExecutor
from gateway.models import RefundOut

log = structlog.get_logger(__name__)

Resolution = Literal["refunded_offline", "failed", "canceled"]


async def audit(conn: asyncpg.Connection, *, actor: str, action: str, target: str | None, reason: str | None,
                request: dict[str, Any], request_id: str | None, result: dict[str, Any] | None = None) -> int:
    audit_id = await store.insert_audit(conn, actor=actor, action=action, target=target, reason=reason,
                                        request=request, result=result or {}, request_id=request_id)
    log.info("admin_action", actor=actor, action=action, target=target, audit_id=audit_id)
    return audit_id


async def _lock_open_refund(conn: asyncpg.Connection, refund_id: str, verb: str) -> asyncpg.Record:
    refund = await store.lock_refund(conn, refund_id)
    if refund is None:
        raise errors.NotFound(f"no refund {refund_id!r}", code="refund_not_found")
    if Status(refund["status"]) in FINAL:
        raise errors.Conflict(f"a {refund['status']} refund cannot be {verb}", code="refund_final",
                              status_now=refund["status"])
    if refund["stage"] == Stage.SENDING and refund["lease_expires_at"] > datetime.now(timezone.utc):
        raise errors.Conflict("a processor call for this refund is in flight; try again shortly",
                              code="refund_in_flight", headers={"Retry-After": "5"})
    return refund


async def replay(pool: asyncpg.Pool, executor: RefundExecutor, refund_id: str, *, actor: str, reason: str,
                 lease_seconds: float, request_id: str | None) -> dict[str, Any]:
    """Resync with the processor, then resend with the refund's own key only if it has no record."""
    async with pool.acquire() as conn, conn.transaction():
        refund = await _lock_open_refund(conn, refund_id, "replayed")
        before = {"status": refund["status"], "stage": refund["stage"]}
        audit_id = await audit(conn, actor=actor, action="refund.replay", target=refund_id, reason=reason,
                               request={"before": before}, request_id=request_id)
        adapter = executor.adapter(refund["processor_id"])
        if refund["stage"] != Stage.PENDING_AT_PROCESSOR:
            refund, _ = await ledger.apply(
                conn, refund_id, ledger.Decision(Target(Status.PENDING, Stage.SENDING), lease_seconds=lease_seconds),
                event="admin_replay", recheck_seconds=1, request_id=request_id,
                detail={"actor": actor, "reason": reason})
        transaction = await store.get_transaction(conn, refund["transaction_id"])
    if refund["stage"] == Stage.PENDING_AT_PROCESSOR:
        # The processor accepted it: there is nothing to resend, only its state to ask for.
        row = await executor.check_pending(refund)
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
    async with pool.acquire() as conn, conn.transaction():
        refund = await _lock_open_refund(conn, refund_id, "resolved")
        failure_code = None if resolution == "refunded_offline" else f"resolved_{resolution}"
        row, _ = await ledger.apply(
            conn, refund_id, ledger.Decision(Target(Status(resolution), Stage.DONE), failure_code=failure_code,
                                             failure_message=f"resolved by {actor}: {reason}" if failure_code else None),
            event="admin_resolve", recheck_seconds=1, request_id=request_id,
            detail={"actor": actor, "reason": reason, "external_reference": external_reference})
        await audit(conn, actor=actor, action=f"refund.resolve.{resolution}", target=refund_id, reason=reason,
                    request={"before": {"status": refund["status"], "stage": refund["stage"]},
                             "external_reference": external_reference},
                    result={"status": row["status"]}, request_id=request_id)
    return row
