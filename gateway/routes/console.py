"""The operator console (`admin` scope): one page with the stuck refunds and their history, the
unmatched and failed webhook events, and outcomes per processor; its script and style sheet; and
its actions, which are the admin API's own handlers behind an anti-CSRF check. The console takes
HTTP Basic credentials as well as API keys (gateway.auth)."""

from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from gateway import errors, keys
from gateway.auth import CONSOLE_PREFIX, require
from gateway.console import page
from gateway.db import store
from gateway.routes import admin

routes = web.RouteTableDef()

STUCK_SHOWN = 50  # stuck refunds on the page, newest first
HISTORY_SHOWN = 20  # the last events and processor calls of each
WEBHOOK_EVENTS_SHOWN = 50  # per status (unmatched, failed)
CHART_HOURS = 24

# Basic credentials are ambient: the browser sends them with any request to this origin, even one
# a page on another site makes it send. A form or a plain cross-site request cannot add a header,
# and a cross-site fetch that adds one needs a CORS preflight that the gateway never approves, so
# an action without this header did not come from the console's own script.
CSRF_HEADER, CSRF_VALUE = "X-Requested-With", "psp-gateway-console"

# The page shows data to an operator: not cached, not framed, and nothing runs but its own script.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _check_same_origin_action(request: web.Request) -> None:
    if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        raise errors.Forbidden(f"console actions must come from the console page (header {CSRF_HEADER})",
                               code="csrf_check_failed")
    # Browsers say where a request comes from in a header no page can set; older ones do not send it.
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        raise errors.Forbidden(f"console actions must come from the console page (Sec-Fetch-Site: {site})",
                               code="csrf_check_failed")


@routes.get(CONSOLE_PREFIX)
async def console_page(request: web.Request) -> web.Response:
    client = require(request, "admin")
    settings = request.app[keys.SETTINGS]
    async with request.app[keys.POOL].acquire() as conn:
        stuck = await store.list_refunds(conn, stuck_older_than=settings.stuck_after_seconds, starting_after=None,
                                         limit=STUCK_SHOWN)
        ids = [r["id"] for r in stuck[:STUCK_SHOWN]]
        events = await store.recent_refund_events(conn, ids, HISTORY_SHOWN)
        attempts = await store.recent_refund_attempts(conn, ids, HISTORY_SHOWN)
        counts = await store.stuck_counts(conn, settings.stuck_after_seconds)
        webhook_events, webhook_more = [], False
        for status in ("unmatched", "failed"):
            rows = await store.list_webhook_events(conn, status=status, processor=None, starting_after=None,
                                                   limit=WEBHOOK_EVENTS_SHOWN)
            webhook_events += rows[:WEBHOOK_EVENTS_SHOWN]
            webhook_more = webhook_more or len(rows) > WEBHOOK_EVENTS_SHOWN
        current_hour, outcomes = await store.outcomes_by_hour(conn, CHART_HOURS)
        findings = await store.list_findings(conn, status="open", processor=None, kind=None, starting_after=None,
                                             limit=WEBHOOK_EVENTS_SHOWN)
        awaiting = await store.list_refunds(conn, stage="awaiting_approval", starting_after=None,
                                            limit=WEBHOOK_EVENTS_SHOWN)
    text = page.render(
        client_id=client.id, now=datetime.now(timezone.utc), stuck_after_seconds=settings.stuck_after_seconds,
        stuck=stuck[:STUCK_SHOWN], stuck_has_more=len(stuck) > STUCK_SHOWN, stuck_counts=counts, events=events,
        attempts=attempts, history_cap=HISTORY_SHOWN,
        webhook_events=sorted(webhook_events, key=lambda r: r["id"], reverse=True), webhook_has_more=webhook_more,
        processors=[p.id for p in settings.processors], current_hour=current_hour, hours=CHART_HOURS,
        outcomes=outcomes, findings=findings[:WEBHOOK_EVENTS_SHOWN],
        findings_has_more=len(findings) > WEBHOOK_EVENTS_SHOWN, awaiting=awaiting[:WEBHOOK_EVENTS_SHOWN],
        awaiting_has_more=len(awaiting) > WEBHOOK_EVENTS_SHOWN)
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)


@routes.get(f"{CONSOLE_PREFIX}/console.js")
async def console_script(request: web.Request) -> web.Response:
    require(request, "admin")
    return web.Response(text=page.asset("console.js"), content_type="text/javascript", charset="utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@routes.get(f"{CONSOLE_PREFIX}/console.css")
async def console_style(request: web.Request) -> web.Response:
    require(request, "admin")
    return web.Response(text=page.asset("console.css"), content_type="text/css", charset="utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# The actions: the same handlers, validation and audit (actor: the client id) as the admin API.

@routes.post(f"{CONSOLE_PREFIX}/refunds/{{id}}/replay")
async def console_replay(request: web.Request) -> web.Response:
    require(request, "admin")
    _check_same_origin_action(request)
    return await admin.replay_refund(request)


@routes.post(f"{CONSOLE_PREFIX}/refunds/{{id}}/resolve")
async def console_resolve(request: web.Request) -> web.Response:
    require(request, "admin")
    _check_same_origin_action(request)
    return await admin.resolve_refund(request)


@routes.post(f"{CONSOLE_PREFIX}/webhook-events/{{id}}/reprocess")
async def console_reprocess(request: web.Request) -> web.Response:
    require(request, "admin")
    _check_same_origin_action(request)
    return await admin.reprocess_webhook_event(request)
