"""Refund commands from the billing core, and reading refunds back."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import errors, keys, services
from gateway.auth import require
from gateway.db import store
from gateway.http import model_response, parse_body, parse_query
from gateway.models import RefundCreate, RefundList, RefundOut, RefundQuery, RefundTarget

routes = web.RouteTableDef()


async def _refund(request: web.Request, cmd: RefundCreate) -> web.Response:
    app = request.app
    settings = app[keys.SETTINGS]
    pool = app[keys.POOL]
    recovered = request.get(keys.RECOVERED_RESOURCE)
    if recovered:  # the first request with this key created the refund and then died
        async with pool.acquire() as conn:
            row = await store.get_refund(conn, recovered)
        if row is not None:
            return model_response(RefundOut.from_row(row), 201)
    claim = request.get(keys.IDEMPOTENCY)
    async with pool.acquire() as conn:
        refund, transaction, created = await services.create_refund(
            conn, cmd, lease_seconds=settings.lease_seconds, request_id=request[keys.REQUEST_ID],
            claim=services.IdempotencyClaim(*claim) if claim else None)
    if not created:
        return model_response(RefundOut.from_row(refund), 200)
    # The connection is back in the pool: the processor call runs without one.
    task = app[keys.EXECUTOR].start(refund, transaction, request[keys.REQUEST_ID])
    done, _ = await asyncio.wait({task}, timeout=settings.refund_response_budget_seconds)
    if task in done and task.exception() is None:
        refund = task.result()
    return model_response(RefundOut.from_row(refund), 201)


@routes.post("/v1/refunds")
async def create_refund(request: web.Request) -> web.Response:
    require(request, "refunds:write")
    return await _refund(request, await parse_body(request, RefundCreate))


@routes.post("/v1/invoices/{invoice_id}/refund")
async def refund_invoice(request: web.Request) -> web.Response:
    require(request, "refunds:write")
    target = await parse_body(request, RefundTarget)
    invoice_id = request.match_info["invoice_id"]
    currency = target.currency
    if currency is None:
        # The seeds' shape carries no currency: the refund takes the payment's, the one pointed at if
        # the body names one (found as services.create_refund will find it), else the invoice's.
        pointer = target.transaction_id or target.psp_reference
        async with request.app[keys.POOL].acquire() as conn:
            if target.transaction_id is not None:
                row = await store.get_transaction(conn, target.transaction_id)
                rows = [row] if row is not None else []
            elif target.psp_reference is not None:
                rows = await store.transactions_by_reference(conn, target.psp_reference)
            else:
                rows = await store.transactions_by_invoice(conn, invoice_id)
        currencies = {r["currency"] for r in rows}
        currency = currencies.pop() if len(currencies) == 1 else None
        if currency is None and rows:
            what = f"the payments {pointer!r} names were" if pointer else "the invoice was"
            raise errors.InvalidRequest(f"{what} paid in several currencies: give currency",
                                        errors=[{"field": "currency", "message": "required for this invoice"}])
        if currency is None:
            detail = f"no transaction {pointer!r}" if pointer else f"invoice {invoice_id!r} has no registered payment"
            raise errors.NotFound(detail, code="transaction_not_found")
    cmd = RefundCreate.model_validate({**target.model_dump(exclude_none=True), "invoice_id": invoice_id,
                                       "currency": currency}, strict=False)
    return await _refund(request, cmd)


@routes.get("/v1/refunds/{id}")
async def get_refund(request: web.Request) -> web.Response:
    require(request, "refunds:read")
    async with request.app[keys.POOL].acquire() as conn:
        row = await store.get_refund(conn, request.match_info["id"])
    if row is None:
        raise errors.NotFound(f"no refund {request.match_info['id']!r}", code="refund_not_found")
    return model_response(RefundOut.from_row(row))


@routes.get("/v1/refunds")
async def list_refunds(request: web.Request) -> web.Response:
    require(request, "refunds:read")
    query = parse_query(request, RefundQuery)
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.list_refunds(conn, invoice_id=query.invoice_id, status=query.status,
                                        starting_after=query.starting_after, limit=query.limit)
    return model_response(RefundList(data=[RefundOut.from_row(r) for r in rows[:query.limit]],
                                     has_more=len(rows) > query.limit))
