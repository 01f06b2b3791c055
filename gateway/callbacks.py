"""Callbacks to the billing core: the outbox's events, POSTed at least once, in order per refund,
signed like Stripe-Signature (HMAC-SHA256 over "t.body"), with backoff and a delivery log. Each
carries, as X-Request-ID, the id of the request (or round of background work) behind the change.

A billing core that polls instead reads the same events from GET /v1/events.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any, Mapping, Sequence

import asyncpg
import httpx
import orjson
import structlog

from gateway import metrics
from gateway.db import store
from gateway.ids import new_id
from gateway.logging import scrub_text, without_credentials
from gateway.models import RefundOut

log = structlog.get_logger(__name__)

BATCH = 50
LEASE_SECONDS = 60.0
SIGNATURE_HEADER = "Gateway-Signature"


def event_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The event as the billing core sees it, in callbacks and in GET /v1/events. A refund's event
    keeps a snapshot of the refund's row (`refund`), rendered here as the API renders a refund."""
    payload = row["payload"]
    if "refund" in payload:
        snapshot = payload["refund"]
        payload = {"type": payload["type"], "refund_id": payload["refund_id"], "version": payload["version"],
                   "previous_status": payload["previous_status"],
                   "data": RefundOut.from_row(snapshot).model_dump(mode="json"),
                   "credit_note": payload["credit_note"]}
    return {"id": row["id"], "object": "event", "created_at": row["created_at"].isoformat().replace("+00:00", "Z"),
            **payload}


def signature(body: bytes, secrets: Sequence[bytes], timestamp: int) -> str:
    """`t=<unix>,v1=<hex>` with one v1 per secret (two during a rotation)."""
    signed = b"%d." % timestamp + body
    return ",".join([f"t={timestamp}"] + [f"v1={hmac.new(s, signed, hashlib.sha256).hexdigest()}" for s in secrets])


async def dispatch_due(pool: asyncpg.Pool, http: httpx.AsyncClient, url: str, secrets: Sequence[bytes], *,
                       initial_backoff: float, max_backoff: float) -> int:
    """Deliver every due event (the earliest undelivered one of each refund); returns how many were tried."""
    async with pool.acquire() as conn:
        due = await store.claim_outbox(conn, BATCH, LEASE_SECONDS)

    async def deliver(row: asyncpg.Record) -> None:
        # Events written before request ids were kept have none: such a delivery gets its own.
        request_id = row["request_id"] or new_id("req")
        structlog.contextvars.bind_contextvars(request_id=request_id)  # this task's own context
        body = orjson.dumps(event_body(row))
        headers = {"Content-Type": "application/json", "Gateway-Event-Id": str(row["id"]), "X-Request-ID": request_id,
                   SIGNATURE_HEADER: signature(body, secrets, int(time.time()))}
        started = time.perf_counter()
        status, error = None, None
        try:
            # Only the status matters: the billing core's answer body is never read (nor its size trusted).
            async with http.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as e:
            error = scrub_text(f"{type(e).__name__}: {e}")[:300]
        latency_ms = int((time.perf_counter() - started) * 1000)
        async with pool.acquire() as conn, conn.transaction():
            await store.insert_delivery(conn, row["id"], without_credentials(url), status, error, latency_ms)
            if error is None:
                await store.mark_delivered(conn, row["id"])
            else:
                await store.mark_undelivered(conn, row["id"], error, initial=initial_backoff, maximum=max_backoff)
        metrics.child(metrics.CALLBACK_DELIVERIES, "delivered" if error is None else "failed").inc()
        if error is None:
            log.info("callback_delivered", outbox_id=row["id"], refund_id=row["refund_id"], version=row["version"])
        else:
            log.warning("callback_failed", outbox_id=row["id"], refund_id=row["refund_id"], version=row["version"],
                        attempts=row["attempts"], error=error)

    await asyncio.gather(*(deliver(r) for r in due))
    return len(due)
