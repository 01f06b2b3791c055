"""The two SOAP services, RequestHandler.svc (ProcessRequest, base64 XML inside the envelope) and the
Reporting API (PublicGetTransactionsByFilter: filter InvoiceNumber, ID, DateRangeFrom and DateRangeTo,
paged by Skip and Take), each passing through the injected faults."""

from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web

from adapters.bridgepay_sim import codes, protocol, wire
from adapters.bridgepay_sim.codes import BridgePayError
from adapters.bridgepay_sim.faults import Rule, Spot
from adapters.bridgepay_sim.simulator import SIM, Simulator
from adapters.bridgepay_sim.wire import (PROCESS_ACTION, PROCESS_PATH, REPORTING_ACTION, REPORTING_PATH, Call,
                                         EnvelopeError)

Answer = tuple[int, bytes]  # HTTP status, body
CONTENT_TYPE = "text/xml; charset=utf-8"
routes = web.RouteTableDef()


@routes.post(PROCESS_PATH)
async def process_request(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    if (refusal := _check_http(request, PROCESS_ACTION)) is not None:
        return refusal
    sim.counts["received.process"] += 1
    call: Call | None = None
    undecodable = BridgePayError(codes.UNKNOWN_ERROR)
    try:
        call = wire.read_process_request(await request.read())
    except EnvelopeError as e:
        return _xml(400, wire.soap_fault("s:Client", f"The request envelope cannot be read: {e}"))
    except BridgePayError as e:
        undecodable = e
    spot = Spot(request.path, call.request_type if call else None)

    def run() -> Answer:
        reply = protocol.execute(sim, call) if call else protocol.error_response(sim, None, undecodable)
        if reply.root == "VoidRefund" and reply.code == codes.SUCCESS and sim.faults.fired("unknown_code", spot):
            assert reply.message is not None
            reply.message["GatewayMessage"] = "Z99 - Something New"
        return 200, wire.process_response(reply.xml())

    def refuse(kind: str) -> Answer:
        target = call or Call({}, {})
        if kind == "network":
            reply = protocol.refused(target, codes.UNAVAILABLE, "E02 - Network Unavailable")
        else:
            reply = protocol.refused(target, codes.INTERNAL_ERROR if kind == "internal_error" else codes.UNAVAILABLE,
                                     None)
        return 200, wire.process_response(reply.xml())

    return await _serve(sim, request, spot, run, refuse)


@routes.post(REPORTING_PATH)
async def get_transactions_by_filter(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    if (refusal := _check_http(request, REPORTING_ACTION)) is not None:
        return refusal
    sim.counts["received.reporting"] += 1
    try:
        query = wire.read_reporting_request(await request.read())
    except EnvelopeError as e:
        return _xml(400, wire.soap_fault("s:Client", f"The request envelope cannot be read: {e}"))

    def run() -> Answer:
        sim.counts["requests.reporting"] += 1
        if not protocol.credentials_ok(query.username, query.password, sim.config):
            return 500, wire.soap_fault("s:Client", "Invalid credentials")
        rows = sim.world.search(invoice_number=query.invoice_number, id=query.id, date_from=query.date_from,
                                date_to=query.date_to)
        return 200, wire.reporting_response(len(rows), rows[query.skip:query.skip + query.take])

    def refuse(kind: str) -> Answer:
        if kind == "internal_error":
            return 500, wire.soap_fault("s:Server", "Internal Server Error")
        return 503, wire.soap_fault("s:Server", "Service Unavailable")

    return await _serve(sim, request, Spot(request.path), run, refuse)


# -- faults around execution ---------------------------------------------------------------------

async def _serve(sim: Simulator, request: web.Request, spot: Spot, run: Callable[[], Answer],
                 refuse: Callable[[str], Answer]) -> web.StreamResponse:
    faults = sim.faults
    # Front-door faults: the request never runs.
    for kind in ("internal_error", "unavailable", "network"):
        if faults.fired(kind, spot):
            return _xml(*refuse(kind))
    if faults.fired("drop", spot):
        return _drop(request)
    if ms := faults.latency_ms(spot):
        await asyncio.sleep(ms / 1000)
    broken = next(((kind, rule) for kind in ("garbage", "hostile") if (rule := faults.fired(kind, spot))), None)
    if broken is not None and not broken[1].execute:
        return await _broken_answer(sim, request, spot, *broken)
    if rule := faults.fired("delay_execution", spot):
        await sim.hold(rule.delay_ms / 1000)
    elif rule := faults.fired("execute_after_disconnect", spot):
        await _client_gone(sim, request, rule.hold_seconds)
        await sim.hold(rule.delay_ms / 1000)

    status, body = run()
    if _gone(request):  # nobody is listening any more: the execution is all that happened
        return _drop(request)

    if rule := faults.fired("execute_then_timeout", spot):
        await sim.hold(rule.hold_seconds)
    if faults.fired("execute_then_drop", spot):
        return _drop(request)
    if broken is not None:
        return await _broken_answer(sim, request, spot, *broken)
    return _xml(status, body)


async def _broken_answer(sim: Simulator, request: web.Request, spot: Spot, kind: str,
                         rule: Rule) -> web.StreamResponse:
    on_process = spot.path.startswith(PROCESS_PATH)
    if kind == "garbage":
        if rule.payload == "result" and on_process:
            return _xml(200, wire.process_response(wire.GARBAGE))
        return _xml(200, wire.GARBAGE)
    if rule.payload == "huge":
        return await _stream_huge(sim, request, rule.huge_bytes)
    if rule.payload == "billion_laughs_result" and on_process:
        return _xml(200, wire.billion_laughs_result(spot.request_type or ""))
    return _xml(200, wire.billion_laughs_body(spot.path))


async def _stream_huge(sim: Simulator, request: web.Request, size: int) -> web.StreamResponse:
    # Chunked, no Content-Length: the client learns how big it is only by reading.
    response = web.StreamResponse(status=200, headers={"Content-Type": CONTENT_TYPE})
    await response.prepare(request)
    try:
        for piece in wire.huge_body(size):
            if sim.closing.is_set():
                break
            await response.write(piece)
        await response.write_eof()
    except ConnectionError:  # the client stopped reading, as it should
        pass
    return response


def _check_http(request: web.Request, action: str) -> web.Response | None:
    """WCF's basicHttpBinding: text/xml only, and the SOAPAction (quoted or not) must name the operation."""
    if request.content_type != "text/xml":
        return web.Response(status=415, text=f"Cannot process the message because the content type "
                                             f"'{request.content_type}' was not the expected type 'text/xml; "
                                             f"charset=utf-8'.")
    given = request.headers.get("SOAPAction", "").strip().strip('"')
    if given != action:
        return _xml(500, wire.soap_fault("s:Client", f"The message with Action '{given}' cannot be processed at "
                                                     "the receiver, due to a ContractFilter mismatch at the "
                                                     "EndpointDispatcher."))
    return None


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def _client_gone(sim: Simulator, request: web.Request, at_most: float) -> None:
    """Waits until the client closes its connection (it gave up), at most `at_most` seconds."""
    deadline = asyncio.get_running_loop().time() + at_most
    while not _gone(request) and not sim.closing.is_set() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)


def _drop(request: web.Request) -> web.StreamResponse:
    # Close the socket without a byte of answer; aiohttp then quietly fails to write this response.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def _xml(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": CONTENT_TYPE})
