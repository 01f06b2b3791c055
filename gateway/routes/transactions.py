"""Original payments: register one, read it back with its refunded, reserved and refundable amounts."""

from __future__ import annotations

from aiohttp import web

from gateway import errors, keys, services
from gateway.auth import require
from gateway.db import store
from gateway.http import model_response, parse_body, parse_query
from gateway.models import TransactionCreate, TransactionList, TransactionOut, TransactionQuery

routes = web.RouteTableDef()


@routes.post("/v1/transactions")
async def create_transaction(request: web.Request) -> web.Response:
    require(request, "transactions:write")
    body = await parse_body(request, TransactionCreate)
    adapter = request.app[keys.ADAPTERS].get(body.processor)
    if adapter is None:
        raise errors.InvalidRequest(f"no processor account {body.processor!r} is configured",
                                    code="unknown_processor",
                                    errors=[{"field": "processor", "message": "unknown processor account"}])
    currencies = adapter.capabilities.currencies
    if currencies is not None and body.currency not in currencies:
        raise errors.InvalidRequest(f"{body.processor!r} refunds only in {', '.join(sorted(currencies))}",
                                    code="currency_not_supported",
                                    errors=[{"field": "currency", "message": "not supported by this processor"}])
    async with request.app[keys.POOL].acquire() as conn:
        row, created = await services.register_transaction(conn, body)
    return model_response(TransactionOut.from_row(row), 201 if created else 200)


@routes.get("/v1/transactions/{id}")
async def get_transaction(request: web.Request) -> web.Response:
    require(request, "transactions:read")
    async with request.app[keys.POOL].acquire() as conn:
        row = await store.get_transaction(conn, request.match_info["id"])
    if row is None:
        raise errors.NotFound(f"no transaction {request.match_info['id']!r}", code="transaction_not_found")
    return model_response(TransactionOut.from_row(row))


@routes.get("/v1/transactions")
async def list_transactions(request: web.Request) -> web.Response:
    require(request, "transactions:read")
    query = parse_query(request, TransactionQuery)
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.transactions_by_invoice(conn, query.invoice_id)
    return model_response(TransactionList(data=[TransactionOut.from_row(r) for r in rows], has_more=False))
