"""Refund commands from the billing core, and reading refunds back."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import errors, keys, operations, services
from gateway.auth import require
from gateway.db import store
from gateway.domain.refunds import Stage
from gateway.http import model_response, parse_body, parse_query
from gateway.models import (
    CancelRequest,
    CreditNoteOut,
    CreditNoteQuery,
    RefundCreate,
    RefundList,
    RefundOut,
    RefundQuery,
    RefundTarget,
)

routes = web.RouteTableDef()


async def _refund(request: web.Request, cmd: RefundCreate) -> web.Response:
    app = request.app
    settings = app[keys.SETTINGS]
    pool = app[keys.POOL]
    recovered = request.get(keys.RECOVERED_RESOURCE)
    claim = request.get(keys.IDEMPOTENCY)
    async with pool.acquire() as conn:
        # The first request with this key created the refund and then died: answer with it.
        result = await services.recovered(conn, recovered) if recovered else None
        if result is None:
            recovered = None
            result = await services.create_refund(
                conn, cmd, lease_seconds=settings.lease_seconds, request_id=request[keys.REQUEST_ID],
                claim=services.IdempotencyClaim(*claim) if claim else None,
                requester=services.Requester(request[keys.CLIENT], settings.processors))
    refunds = result.refunds
    if result.created and not recovered:
        # The connection is back in the pool: the processor calls run without one.
        tasks = [app[keys.EXECUTOR].start(r, result.transactions[r["transaction_id"]], request[keys.REQUEST_ID])
                 for r in refunds if r["stage"] == Stage.SENDING]
        if tasks:
            await asyncio.wait(tasks, timeout=settings.refund_response_budget_seconds)
            answered = {t.result()["id"]: t.result() for t in tasks if t.done() and t.exception() is None}
            refunds = [answered.get(r["id"], r) for r in refunds]
    status = 201 if result.created or recovered else 200
    if cmd.allocation is not None:
        async with pool.acquire() as conn:
            return model_response(await _credit_note(conn, cmd.invoice_id, cmd.credit_note_id), status)
    return model_response(RefundOut.from_row(refunds[0]), status)


async def _credit_note(conn, invoice_id: str, credit_note_id: str) -> CreditNoteOut:
    rows = await store.credit_note_refunds(conn, invoice_id, credit_note_id)
    if not rows:
        raise errors.NotFound(f"no refund for credit note {credit_note_id!r} on invoice {invoice_id!r}",
                              code="credit_note_not_found")
    return CreditNoteOut.from_rows(invoice_id, credit_note_id, rows)


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
                                        credit_note_id=query.credit_note_id, starting_after=query.starting_after,
                                        ending_before=query.ending_before, limit=query.limit)
    return model_response(RefundList(data=[RefundOut.from_row(r) for r in rows[:query.limit]],
                                     has_more=len(rows) > query.limit))


@routes.post("/v1/refunds/{id}/cancel")
async def cancel_refund(request: web.Request) -> web.Response:
    """Cancel a refund that has not reached the processor (or that the processor holds for an
    action nobody will take); its amount is released."""
    client = require(request, "refunds:write")
    body = await parse_body(request, CancelRequest, optional=True)
    app = request.app
    row = await operations.cancel(app[keys.POOL], app[keys.EXECUTOR], request.match_info["id"], actor=client.id,
                                  reason=body.reason if body else None, request_id=request[keys.REQUEST_ID])
    return model_response(RefundOut.from_row(row))


@routes.get("/v1/credit-notes/{credit_note_id}")
async def get_credit_note(request: web.Request) -> web.Response:
    require(request, "refunds:read")
    credit_note_id = request.match_info["credit_note_id"]
    query = parse_query(request, CreditNoteQuery)
    async with request.app[keys.POOL].acquire() as conn:
        invoice_id = query.invoice_id
        if invoice_id is None:
            invoices = await store.credit_note_invoices(conn, credit_note_id)
            if len(invoices) > 1:
                raise errors.Conflict(f"credit note {credit_note_id!r} is used on several invoices: give invoice_id",
                                      code="ambiguous_credit_note")
            if not invoices:
                raise errors.NotFound(f"no refund for credit note {credit_note_id!r}", code="credit_note_not_found")
            invoice_id = invoices[0]
        return model_response(await _credit_note(conn, invoice_id, credit_note_id))
