"""The database floor, run as its own process: the gateway's own database work per refund (or
per webhook), through the same functions and transactions, driven straight through asyncpg at
the same concurrency: no HTTP, no processor. Prints one JSON line of results.

    python -m tests.bench.floor --dsn DSN --plan plan.json --kind refunds --concurrency 64 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import datetime, timezone

import uvloop
from pydantic import SecretStr

from adapters.base import PaymentSnapshot, RefundResult, WebhookEvent
from gateway import services, webhooks
from gateway.db import store
from gateway.db.pool import create_pool
from gateway.domain.refunds import Outcome
from gateway.execution import Attempt, RefundExecutor
from gateway.logging import configure
from gateway.models import RefundCreate
from gateway.settings import Settings
from tests.bench.load import percentile
from tests.ids import token


async def run(args: argparse.Namespace) -> dict:
    with open(args.plan) as f:
        plan = json.load(f)
    settings = Settings(database_url=SecretStr(args.dsn), processors=[{"id": "mock", "kind": "mock"}])
    pool = await create_pool(args.dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    executor = RefundExecutor(pool, {}, settings)
    transactions = plan.get("transactions", [])
    counter = iter(range(10**12))
    latencies: list[float] = []
    failures = 0

    async def refund_once() -> None:
        tx = transactions[next(counter) % len(transactions)]
        cmd = RefundCreate(invoice_id=tx["invoice_id"], transaction_id=tx["id"], amount=plan.get("amount", 100),
                           currency="EUR")
        async with pool.acquire() as conn:
            made = await services.create_refund(conn, cmd, lease_seconds=settings.lease_seconds)
        refund = made.refund
        attempt = Attempt("refund", datetime.now(timezone.utc), 0, "succeeded", None, "succeeded")
        await executor.record(refund, RefundResult(Outcome.SUCCEEDED, psp_refund_id=f"re_{uuid.uuid4().hex}"),
                              [attempt], event="processor_answer", refund_calls=1, lease_token=refund["lease_token"])

    async def webhook_once() -> None:
        event = WebhookEvent(event_id=f"evt_{uuid.uuid4().hex}", type="charge.succeeded", created=int(time.time()),
                             payments=[PaymentSnapshot(psp_reference=f"ch_{token(24)}", amount=5000,
                                                       currency="EUR", invoice_id=f"INV-{uuid.uuid4().hex[:12]}")])
        async with pool.acquire() as conn:
            row_id = await store.insert_webhook_event(
                conn, processor_id="stripe", event_id=event.event_id, event_type=event.type, headers={},
                body=b"{}", event=event.model_dump(mode="json"), match_keys=event.match_keys())
        row = {"id": row_id, "processor_id": "stripe", "event_id": event.event_id,
               "event": event.model_dump(mode="json"), "attempts": 1}
        await webhooks.process_row(pool, row, recheck_seconds=1)

    action = webhook_once if args.kind == "webhooks" else refund_once
    started = time.perf_counter()
    deadline = started + args.seconds

    async def client() -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await action()
            except Exception:
                failures += 1
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    await pool.close()
    latencies.sort()
    return {"requests": len(latencies), "seconds": round(elapsed, 3), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2), "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--kind", choices=["refunds", "webhooks"], default="refunds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    configure("json", "warning")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
