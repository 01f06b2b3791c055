"""The reference for `make bench`: the least a refund endpoint can do on the gateway's stack
(aiohttp, asyncpg, orjson, uvloop), against the gateway's own tables. It is not the product: no
idempotency keys, no matching, no state machine, no outbox, no logging, no metrics.

Per refund, two transactions and six statements:
  1. reserve the amount (a guarded UPDATE), insert the refund, insert its event;
  2. (the processor call: nothing, or a sleep for the `slow` processor)
  3. mark the refund succeeded, move the reservation to refunded, insert the event.

    python -m tests.bench.reference --dsn DSN --port PORT --key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import uuid

import asyncpg
import orjson
import uvloop
from aiohttp import web

RESERVE = """
UPDATE transactions SET reserved_amount = reserved_amount + $4, updated_at = now()
WHERE id = $1 AND invoice_id = $2 AND currency = $3 AND refunded_amount + reserved_amount + $4 <= amount
RETURNING processor_id"""
INSERT_REFUND = """
INSERT INTO refunds (id, transaction_id, processor_id, invoice_id, amount, currency, status, stage, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, 'pending', 'sending', $1) RETURNING created_at"""
INSERT_EVENT = """
INSERT INTO refund_events (refund_id, event, from_status, to_status, from_stage, to_stage)
VALUES ($1, $2, $3, $4, $5, $6)"""
SUCCEED = """
UPDATE refunds SET status = 'succeeded', stage = 'done', psp_refund_id = $2, attempts = 1, updated_at = now()
WHERE id = $1 RETURNING updated_at"""
SETTLE = """
UPDATE transactions SET reserved_amount = reserved_amount - $2, refunded_amount = refunded_amount + $2,
    updated_at = now() WHERE id = $1"""
LATENCY = {"slow": 0.2}  # the bench's processors: `slow` answers after 200 ms, the others at once


def problem(status: int, code: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"code": code}), content_type="application/problem+json")


def make_app(pool: asyncpg.Pool, key: str) -> web.Application:
    expected = f"Bearer {key}".encode()

    async def refund(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return problem(401, "unauthorized")
        try:
            body = orjson.loads(await request.read())
            tx_id, invoice_id, currency, amount = (body["transaction_id"], body["invoice_id"], body["currency"],
                                                   body["amount"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return problem(422, "validation_error")
        if type(amount) is not int or amount <= 0:
            return problem(422, "validation_error")
        refund_id = f"rf_{uuid.uuid4().hex}"
        async with pool.acquire() as conn, conn.transaction():
            processor = await conn.fetchval(RESERVE, tx_id, invoice_id, currency, amount)
            if processor is None:
                return problem(422, "amount_exceeds_refundable")
            created_at = await conn.fetchval(INSERT_REFUND, refund_id, tx_id, processor, invoice_id, amount, currency)
            await conn.execute(INSERT_EVENT, refund_id, "created", None, "pending", None, "sending")
        await asyncio.sleep(LATENCY.get(processor, 0))  # the processor call, no connection held
        psp_refund_id = f"re_{uuid.uuid4().hex}"
        async with pool.acquire() as conn, conn.transaction():
            updated_at = await conn.fetchval(SUCCEED, refund_id, psp_refund_id)
            await conn.execute(SETTLE, tx_id, amount)
            await conn.execute(INSERT_EVENT, refund_id, "processor_answer", "pending", "succeeded", "sending", "done")
        return web.Response(status=201, content_type="application/json", body=orjson.dumps({
            "object": "refund", "id": refund_id, "status": "succeeded", "amount": amount, "currency": currency,
            "transaction_id": tx_id, "invoice_id": invoice_id, "psp_refund_id": psp_refund_id,
            "created_at": created_at, "updated_at": updated_at}))

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/refunds", refund)
    app.router.add_get("/readyz", ready)
    return app


async def serve(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=20)
    runner = web.AppRunner(make_app(pool, args.key), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM
    finally:
        await runner.cleanup()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    uvloop.install()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
