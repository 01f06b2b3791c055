"""Background work inside the service: re-checking refunds that are pending at their processor.

Due refunds are claimed with FOR UPDATE SKIP LOCKED and a lease on their next check, so any
number of replicas can poll one database without checking the same refund twice at once.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from gateway.db import store
from gateway.execution import RefundExecutor

log = structlog.get_logger(__name__)

BATCH = 20


async def check_due_pending(pool: asyncpg.Pool, executor: RefundExecutor, lease_seconds: float) -> int:
    async with pool.acquire() as conn:
        due = await store.claim_due_pending(conn, BATCH, lease_seconds)
    for refund in due:
        await executor.check_pending(refund)
    return len(due)


async def run_pending_poller(pool: asyncpg.Pool, executor: RefundExecutor, interval: float,
                             lease_seconds: float) -> None:
    while True:
        try:
            checked = await check_due_pending(pool, executor, lease_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database may be away for a moment; try again next round
            log.exception("pending_poller_error")
            checked = 0
        if checked < BATCH:
            await asyncio.sleep(interval)
