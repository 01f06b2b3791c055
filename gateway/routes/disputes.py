"""Disputes for the operator (`admin` scope): list them, and record one for a processor that sends
no dispute webhooks (an acquirer's letter, a portal's notice). Recording applies it as a webhook would."""

from __future__ import annotations

from aiohttp import web

from adapters.base import DisputeSnapshot
from gateway import disputes, errors, keys, operations, services
from gateway.auth import require
from gateway.db import store
from gateway.http import model_response, parse_body, parse_query
from gateway.models import DisputeList, DisputeOut, DisputeQuery, DisputeRecord

routes = web.RouteTableDef()


@routes.get("/admin/disputes")
async def list_disputes(request: web.Request) -> web.Response:
    require(request, "admin")
    query = parse_query(request, DisputeQuery)
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.list_disputes(conn, status=query.status, processor=query.processor,
                                         starting_after=query.starting_after, limit=query.limit)
    return model_response(DisputeList(data=[DisputeOut.from_row(r) for r in rows[:query.limit]],
                                      has_more=len(rows) > query.limit))


@routes.post("/admin/disputes")
async def record_dispute(request: web.Request) -> web.Response:
    actor = require(request, "admin").id
    body = await parse_body(request, DisputeRecord)
    async with request.app[keys.POOL].acquire() as conn, conn.transaction():
        transaction = await services.known_payment(conn, body.processor, [body.psp_reference])
        if transaction is None:
            raise errors.NotFound(f"no transaction {body.psp_reference!r} at {body.processor!r}",
                                  code="transaction_not_found")
        snapshot = DisputeSnapshot(psp_dispute_id=body.psp_dispute_id, payment_references=[body.psp_reference],
                                   amount=body.amount, currency=transaction["currency"], status=body.status,
                                   reason=body.reason)
        row = await disputes.apply(conn, body.processor, transaction, snapshot, source="operator",
                                   request_id=request[keys.REQUEST_ID])
        await operations.audit(conn, actor=actor, action="dispute.record", target=f"dispute:{row['id']}",
                               reason=body.reason, request=body.model_dump(mode="json"),
                               result={"status": row["status"]}, request_id=request[keys.REQUEST_ID])
    return model_response(DisputeOut.from_row(row))
