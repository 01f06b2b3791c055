"""The control API under /_sim (JSON in, JSON out, no auth: a loopback development tool) that tests
and chaos runs use to inspect the account, switch faults, close the batch, create sales and refund
them in the merchant's portal (POST /_sim/portal/refunds: money that moves without the gateway)."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from adapters.bridgepay_sim import codes
from adapters.bridgepay_sim.codes import BridgePayError
from adapters.bridgepay_sim.simulator import SIM
from adapters.simkit import json_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()  # besides simkit.control_routes: state, reset, faults


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/_sim/"):
        return await handler(request)
    try:
        return await handler(request)
    except BridgePayError as e:  # what BridgePay itself would refuse, with its code
        return web.json_response({"error": {"code": e.code, "message": e.description}}, status=400)
    except (ValueError, TypeError) as e:  # bad JSON, unknown settings or ids
        return web.json_response({"error": {"message": str(e)}}, status=400)


@routes.post("/_sim/settle")
async def settle(request: web.Request) -> web.Response:
    """Body (optional): {"gateway_trans_ids": ["..."]}; without ids the whole open batch settles."""
    ids = (await json_body(request)).get("gateway_trans_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise ValueError("gateway_trans_ids is a list of strings")
    return web.json_response({"settled": request.app[SIM].world.settle(ids or None)})


@routes.post("/_sim/sales")
async def create_sale(request: web.Request) -> web.Response:
    """Body: {"amount": 5000, "invoice_num": "INV-1", "settled": false} (amount in cents; the rest
    optional). A sale made without SOAP, as if a card had been charged."""
    body, sim = await json_body(request), request.app[SIM]
    amount, invoice_num, settled = body.get("amount"), body.get("invoice_num", ""), body.get("settled", False)
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
        raise ValueError("amount is a positive integer (cents)")
    if not isinstance(invoice_num, str) or not isinstance(settled, bool):
        raise ValueError("invoice_num is a string and settled a boolean")
    sale = sim.world.create_sale(amount, invoice_num=invoice_num, transaction_id="", settled=settled,
                                 authorization_code=sim.new_authorization_code(), card_last4="1111")
    sim.counts["sales"] += 1
    return web.json_response({"gateway_trans_id": sale.gateway_trans_id, "sale": sim.world.sale_view(sale)})


@routes.post("/_sim/portal/refunds")
async def portal_refund(request: web.Request) -> web.Response:
    """Body: {"gateway_trans_id": "<the sale's>", "amount": 1200, "invoice_num": "optional"} (amount in
    cents). A refund made in the merchant's portal, not through the API, by the rules of a 012: a void
    while the sale's batch is open (one per sale), a refund once it settled, never more than its
    RemainingAmount (and the sandbox amounts, when on). It counts in the sale's refund_executions like
    any other and shows in the Reporting API. Answers the new Reporting API row (200), or 400
    {"error": {"code": "<BridgePay ResponseCode>", "message": "..."}} where BridgePay would refuse it
    (10001 no gateway_trans_id, 10028 a bad amount, 10055 no such sale, 10042 already voided,
    30026 more than is left, 30032 denied)."""
    body, sim = await json_body(request), request.app[SIM]
    trans_id, amount, invoice_num = body.get("gateway_trans_id"), body.get("amount"), body.get("invoice_num") or ""
    if not isinstance(trans_id, str) or not trans_id:
        raise BridgePayError(codes.MISSING_REFERENCE)
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
        raise BridgePayError(codes.INVALID_AMOUNT_FORMAT, "Invalid amount format: amount is a positive integer (cents)")
    if not isinstance(invoice_num, str):
        raise ValueError("invoice_num is a string")
    sale = sim.world.sales.get(trans_id)
    if sale is None:
        raise BridgePayError(codes.INVALID_REFERENCE)
    outcome = sim.world.reverse(sale, amount, invoice_num=invoice_num, transaction_code="", transaction_id="",
                                sandbox_amounts=sim.config.sandbox_amounts, portal=True)
    if outcome.reversal is None:
        sim.counts["portal.declines"] += 1
        return web.json_response({"error": {"code": outcome.code, "message": f"{codes.DESCRIPTIONS[outcome.code]} "
                                                                             f"({outcome.gateway_message})",
                                            "remaining_amount": outcome.remaining}}, status=400)
    sim.counts[f"portal.{outcome.response_type}s"] += 1
    return web.json_response(sim.world.row(outcome.reversal.gateway_trans_id))
