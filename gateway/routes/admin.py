"""The operator's API (`admin` scope): find stuck refunds, replay or resolve them, and look at
and reprocess webhook events. Every action is audited."""

from __future__ import annotations

from aiohttp import web

from gateway import errors, keys, operations
from gateway.auth import require
from gateway.db import store
from gateway.http import model_response, parse_body, parse_query
from gateway.models import (
    AdminRefundList,
    ApprovalRequest,
    AdminRefundQuery,
    BulkReplayPreview,
    BulkReplayRequest,
    BulkReplayResult,
    BulkReprocessRequest,
    Queued,
    RefundOut,
    ReplayRequest,
    ReplayResult,
    ReprocessRequest,
    ReprocessResult,
    ResolveRequest,
    WebhookEventList,
    WebhookEventOut,
    WebhookEventQuery,
)

routes = web.RouteTableDef()


def _actor(request: web.Request) -> str:
    return require(request, "admin").id


@routes.get("/admin/refunds")
async def list_refunds(request: web.Request) -> web.Response:
    _actor(request)
    query = parse_query(request, AdminRefundQuery)
    older_than = query.older_than_seconds
    if older_than is None:
        older_than = int(request.app[keys.SETTINGS].stuck_after_seconds)
    limit = query.limit
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.list_refunds(
            conn, stuck_older_than=older_than if query.stuck else None, status=query.status,
            processor_id=query.processor, failure_code=query.failure_code, starting_after=query.starting_after,
            ending_before=query.ending_before, limit=limit)
        counts = await store.stuck_counts(conn, older_than)
    return model_response(AdminRefundList(data=[RefundOut.from_row(r) for r in rows[:limit]],
                                          has_more=len(rows) > limit, stuck_counts=counts,
                                          stuck_total=sum(counts.values())))


@routes.post("/admin/refunds/{id}/replay")
async def replay_refund(request: web.Request) -> web.Response:
    actor = _actor(request)
    body = await parse_body(request, ReplayRequest)
    app = request.app
    result = await operations.replay(app[keys.POOL], app[keys.EXECUTOR], request.match_info["id"], actor=actor,
                                     reason=body.reason, lease_seconds=app[keys.SETTINGS].lease_seconds,
                                     request_id=request[keys.REQUEST_ID])
    return model_response(ReplayResult.model_validate(result))


@routes.post("/admin/refunds/replay")
async def replay_refunds(request: web.Request) -> web.Response:
    actor = _actor(request)
    body = await parse_body(request, BulkReplayRequest)
    app = request.app
    f = body.filter
    if not (f.ids or f.stuck or f.status or f.processor or f.failure_code):
        raise errors.InvalidRequest("give a filter: ids, stuck, status, processor or failure_code",
                                    errors=[{"field": "filter", "message": "empty"}])
    candidates = await operations.replay_candidates(
        app[keys.POOL], limit=body.limit, stuck_older_than=app[keys.SETTINGS].stuck_after_seconds if f.stuck else None,
        ids=f.ids, status=f.status, processor=f.processor, failure_code=f.failure_code)
    if body.dry_run:
        await operations.record_dry_run(app[keys.POOL], candidates, actor=actor, reason=body.reason,
                                        request=body.model_dump(mode="json"), request_id=request[keys.REQUEST_ID])
        return model_response(BulkReplayPreview(dry_run=True, would_replay=candidates, count=len(candidates)))
    results = await operations.replay_many(app[keys.POOL], app[keys.EXECUTOR], candidates, actor=actor,
                                           reason=body.reason, lease_seconds=app[keys.SETTINGS].lease_seconds,
                                           request_id=request[keys.REQUEST_ID])
    return model_response(BulkReplayResult.model_validate({"dry_run": False, "results": results,
                                                           "count": len(results)}))


@routes.post("/admin/refunds/{id}/resolve")
async def resolve_refund(request: web.Request) -> web.Response:
    actor = _actor(request)
    body = await parse_body(request, ResolveRequest)
    row = await operations.resolve(request.app[keys.POOL], request.match_info["id"], body.resolution, actor=actor,
                                   reason=body.reason, external_reference=body.external_reference,
                                   request_id=request[keys.REQUEST_ID])
    return model_response(RefundOut.from_row(row))


@routes.post("/admin/refunds/{id}/approve")
async def approve_refund(request: web.Request) -> web.Response:
    actor = _actor(request)
    body = await parse_body(request, ApprovalRequest)
    app = request.app
    row = await operations.approve(app[keys.POOL], app[keys.EXECUTOR], request.match_info["id"], actor=actor,
                                   reason=body.reason, lease_seconds=app[keys.SETTINGS].lease_seconds,
                                   request_id=request[keys.REQUEST_ID])
    return model_response(RefundOut.from_row(row))


@routes.post("/admin/refunds/{id}/reject")
async def reject_refund(request: web.Request) -> web.Response:
    actor = _actor(request)
    body = await parse_body(request, ApprovalRequest)
    row = await operations.reject(request.app[keys.POOL], request.match_info["id"], actor=actor, reason=body.reason,
                                  request_id=request[keys.REQUEST_ID])
    return model_response(RefundOut.from_row(row))


@routes.get("/admin/webhook-events")
async def list_webhook_events(request: web.Request) -> web.Response:
    _actor(request)
    query = parse_query(request, WebhookEventQuery)
    limit = query.limit
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.list_webhook_events(conn, status=query.status, processor=query.processor,
                                               starting_after=query.starting_after or None,
                                               ending_before=query.ending_before or None, limit=limit)
    return model_response(WebhookEventList(data=[WebhookEventOut.model_validate(dict(r)) for r in rows[:limit]],
                                           has_more=len(rows) > limit))


@routes.post("/admin/webhook-events/{id}/reprocess")
async def reprocess_webhook_event(request: web.Request) -> web.Response:
    actor = _actor(request)
    body = await parse_body(request, ReprocessRequest)
    result = await operations.reprocess_webhook_event(
        request.app[keys.POOL], request.match_info["id"], actor=actor, reason=body.reason,
        recheck_seconds=request.app[keys.SETTINGS].pending_poll_seconds, request_id=request[keys.REQUEST_ID],
        adapters=request.app[keys.ADAPTERS])
    return model_response(ReprocessResult.model_validate(result))


@routes.post("/admin/webhook-events/reprocess")
async def reprocess_webhook_events(request: web.Request) -> web.Response:
    actor = _actor(request)
    body = await parse_body(request, BulkReprocessRequest)
    async with request.app[keys.POOL].acquire() as conn, conn.transaction():
        queued = await store.requeue_webhook_events(conn, body.status, body.processor)
        await operations.audit(conn, actor=actor, action="webhook_event.reprocess_all", target=None,
                               reason=body.reason, request=body.model_dump(mode="json"), result={"queued": queued},
                               request_id=request[keys.REQUEST_ID])
    request.app[keys.WEBHOOK_WAKE].set()
    return model_response(Queued(queued=queued))
