"""Background work inside the service: re-checking refunds pending at their processor, and
applying stored webhook events.

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
from gateway.execution import RefundExecutor

log = structlog.get_logger(__name__)

PENDING_BATCH = 20


async def check_due_pending(pool: asyncpg.Pool, executor: RefundExecutor, lease_seconds: float) -> int:
    async with pool.acquire() as conn:
        due = await store.claim_due_pending(conn, PENDING_BATCH, lease_seconds)
    for refund in due:
        await executor.check_pending(refund)
    return len(due)


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
