"""Background work (inside `serve`, or alone as `worker`): the janitor that retries and resolves
refunds, re-checks of refunds pending at their processor, and applying stored webhook events.

Due rows are claimed with FOR UPDATE SKIP LOCKED and a lease on their next attempt, so any
number of replicas can work one database without doing the same thing twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Callable

import asyncpg
import structlog

from gateway.db import store
from gateway.execution import VERIFY_RETRY_SECONDS, RefundExecutor
from gateway.ids import new_id

log = structlog.get_logger(__name__)

PENDING_BATCH = 20


async def _each(due: list[asyncpg.Record], check: Callable[[asyncpg.Record, str], Awaitable[object]],
                error_event: str) -> int:
    """Check claimed refunds one by one; returns how many there were."""
    for refund in due:
        # Background work has no incoming request: each refund's round gets a request id of its own.
        request_id = new_id("req")
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await check(refund, request_id)
            except Exception:  # one refund's failure (an adapter bug, say) must not hold up the rest
                # The claim already scheduled its next check.
                log.exception(error_event, refund_id=refund["id"], processor=refund["processor_id"])
    return len(due)


async def check_due_pending(pool: asyncpg.Pool, executor: RefundExecutor, lease_seconds: float) -> int:
    async with pool.acquire() as conn:
        due = await store.claim_due_pending(conn, PENDING_BATCH, lease_seconds)
    return await _each(due, executor.check_pending, "pending_check_error")


RECOVERY_BATCH = 20


async def recover_due(pool: asyncpg.Pool, executor: RefundExecutor, lease_seconds: float) -> int:
    """The janitor: take refunds whose retry is due, whose outcome is unknown, or whose lease
    expired (the process died mid-call), and carry each to its next state. Where a call may
    have been carried out, the processor is asked first; resent (same key) only without a record."""
    async with pool.acquire() as conn, conn.transaction():
        due = await store.claim_recovery(conn, RECOVERY_BATCH, lease_seconds)
        for refund in due:
            await store.insert_event(conn, refund["id"], "recovery_claimed", from_status=refund["status"],
                                     to_status=refund["status"], from_stage=refund["prior_stage"],
                                     to_stage=refund["stage"])
        transactions = {r["transaction_id"]: await store.get_transaction(conn, r["transaction_id"]) for r in due}

    async def recover(refund: asyncpg.Record) -> None:
        request_id = new_id("req")
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            log.info("refund_recovering", refund_id=refund["id"], processor=refund["processor_id"],
                     prior_stage=refund["prior_stage"], attempts=refund["attempts"])
            await executor.send(refund, transactions[refund["transaction_id"]], request_id,
                                resolve_first=refund["prior_stage"] != "not_sent")

    results = await asyncio.gather(*(recover(r) for r in due), return_exceptions=True)
    for refund, result in zip(due, results):
        if isinstance(result, BaseException):
            log.error("refund_recovery_failed", refund_id=refund["id"], error=type(result).__name__)
    return len(due)


VERIFY_BATCH = 20


async def verify_due(pool: asyncpg.Pool, executor: RefundExecutor) -> int:
    """Look resent refunds up again once their execution window has passed, for a second execution
    at a processor without idempotency keys."""
    async with pool.acquire() as conn:
        due = await store.claim_due_verify(conn, VERIFY_BATCH, VERIFY_RETRY_SECONDS)
    return await _each(due, executor.verify, "duplicate_check_error")


async def run_loop(name: str, job: Callable[[], Awaitable[bool]], interval: float,
                   wake: asyncio.Event | None = None) -> None:
    """Run `job` until cancelled: again at once while it reports more work, else after `interval`
    or as soon as `wake` is set."""
    wake = wake or asyncio.Event()
    while True:
        try:
            more = await job()
        except asyncio.CancelledError:
            raise
        except Exception:  # the database may be away for a moment; try again next round
            log.exception("background_job_failed", job=name)
            more = False
        if not more:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
