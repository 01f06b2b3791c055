"""The control API under /_sim (JSON in, JSON out, no auth: a loopback development tool) that tests
and chaos runs use to inspect the account, switch faults, close the batch and create sales."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

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
