"""The control API under /_sim (JSON in, JSON out, no auth: a loopback development tool) that
tests and chaos runs use to inspect the account, switch faults and drive refund and dispute outcomes."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from adapters.simkit import json_body
from adapters.stripe_sim.api import Handler
from adapters.stripe_sim.errors import StripeError
from adapters.stripe_sim.simulator import SIM
from adapters.stripe_sim.world import RefundBehaviour

routes = web.RouteTableDef()  # besides simkit.control_routes: state, reset, faults


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/_sim/"):
        return await handler(request)
    try:
        return await handler(request)
    except StripeError as e:
        return web.json_response(e.body(), status=e.status)
    except (ValueError, TypeError) as e:  # bad JSON, unknown settings, a transition that is not allowed
        return web.json_response({"error": {"type": "invalid_request_error", "message": str(e)}}, status=400)


@routes.post("/_sim/refunds/behaviour")
async def set_refund_behaviour(request: web.Request) -> web.Response:
    """Body: {"status": "succeeded"|"pending"|"failed"|"requires_action", "settle_after_seconds": null|0.5,
    "settle_to": "succeeded"|"failed", "failure_reason": "expired_or_canceled_card"}."""
    sim = request.app[SIM]
    sim.behaviour = RefundBehaviour(**await json_body(request))
    return web.json_response(dataclasses.asdict(sim.behaviour))


@routes.post("/_sim/refunds/settle")
async def settle_refunds(request: web.Request) -> web.Response:
    """Body: {"outcome": "succeeded"|"failed", "failure_reason": "...", "refund_ids": [...]} (all
    optional; default: every pending refund succeeds)."""
    body = await json_body(request)
    outcome = body.get("outcome", "succeeded")
    if outcome not in ("succeeded", "failed"):
        raise ValueError("outcome is succeeded or failed")
    settled = request.app[SIM].settle(outcome, body.get("failure_reason", "expired_or_canceled_card"),
                                      body.get("refund_ids"))
    return web.json_response({"settled": settled})


@routes.post("/_sim/refunds/{id}/fail")
async def fail_refund(request: web.Request) -> web.Response:
    """Body (optional): {"failure_reason": "expired_or_canceled_card"}. Works on succeeded refunds too."""
    reason = (await json_body(request)).get("failure_reason", "expired_or_canceled_card")
    return web.json_response(request.app[SIM].world.fail(request.match_info["id"], reason))


@routes.post("/_sim/refunds/{id}/require_action")
async def require_action(request: web.Request) -> web.Response:
    """No body. A pending refund moves to requires_action (refund.updated and charge.refund.updated
    go out); POST /v1/refunds/{id}/cancel then cancels it. 400 for a refund that is not pending."""
    return web.json_response(request.app[SIM].world.require_action(request.match_info["id"]))


@routes.post("/_sim/charges/{id}/dispute")
async def dispute_charge(request: web.Request) -> web.Response:
    """Body (optional): {"amount": 500, "reason": "fraudulent"} (default: the charge's whole amount,
    reason general). The cardholder disputes the charge: a dispute in needs_response whose amount is
    withdrawn at once; charge.dispute.created then charge.dispute.funds_withdrawn go out. Refunds of the
    charge are refused (400 charge_disputed) until the dispute is won. Answers the dispute; 400 for a
    charge disputed already, 404 for an unknown charge."""
    body = await json_body(request)
    if unknown := set(body) - {"amount", "reason"}:
        raise ValueError(f"unknown fields {sorted(unknown)}: amount and reason only")
    disputes = request.app[SIM].world.disputes
    return web.json_response(disputes.open(request.match_info["id"], body.get("amount"), body.get("reason")))


@routes.post("/_sim/disputes/{id}/close")
async def close_dispute(request: web.Request) -> web.Response:
    """Body: {"outcome": "won"|"lost"}. Won: the amount is reinstated and the charge may be refunded again;
    charge.dispute.closed then charge.dispute.funds_reinstated go out. Lost: the amount stays withdrawn
    and refunds stay refused; charge.dispute.closed goes out. Answers the dispute; 400 for one closed already."""
    outcome = (await json_body(request)).get("outcome")
    return web.json_response(request.app[SIM].world.disputes.close(request.match_info["id"], outcome))


@routes.post("/_sim/webhooks/endpoint")
async def set_webhook_endpoint(request: web.Request) -> web.Response:
    """Body: {"url": "http://127.0.0.1:8080/v1/webhooks/stripe" | null, "secrets": ["whsec_..."]}."""
    body, deliverer = await json_body(request), request.app[SIM].deliverer
    if "url" in body:
        if body["url"] is not None and not isinstance(body["url"], str):
            raise ValueError("url is a string or null")
        deliverer.url = body["url"]
    if "secrets" in body:
        if not isinstance(body["secrets"], list) or not all(isinstance(s, str) for s in body["secrets"]):
            raise ValueError("secrets is a list of strings")
        deliverer.secrets = body["secrets"]
    return web.json_response({"url": deliverer.url, "secrets": len(deliverer.secrets)})


@routes.post("/_sim/webhooks/flush")
async def flush_webhooks(request: web.Request) -> web.Response:
    """Body (optional): {"timeout_seconds": 10}. Answers once every queued delivery finished
    (`done: true`) or the timeout passed (`done: false`), with the delivery log."""
    timeout = float((await json_body(request)).get("timeout_seconds", 10))
    deliverer = request.app[SIM].deliverer
    done = await deliverer.flush(timeout)
    return web.json_response({"done": done, "deliveries": deliverer.describe()})
