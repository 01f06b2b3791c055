"""Stripe's REST protocol under /v1: the middleware that does what every Stripe endpoint does
(auth, injected faults, Idempotency-Key, error bodies), then charges, payment intents, refunds
and events."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from adapters.stripe_sim.errors import StripeError, invalid_param
from adapters.stripe_sim.forms import parse_form
from adapters.stripe_sim.simulator import SIM, Simulator
from adapters.stripe_sim.world import REFUND_REASONS

PARAMS: web.RequestKey[dict[str, Any]] = web.RequestKey("stripe_params", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the protocol middleware ---------------------------------------------------------------------

@web.middleware
async def stripe_protocol(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    sim = request.app[SIM]
    try:
        return await _serve(sim, request, handler)
    except StripeError as e:
        return _answer(sim, request, e.status, _json(e.body()), e.headers)


async def _serve(sim: Simulator, request: web.Request, handler: Handler) -> web.StreamResponse:
    api_key = _authenticate(request, sim.config.api_key)
    # Front-door faults: the request never runs, so nothing is stored under its idempotency key.
    if rule := sim.faults.fired("rate_limit", request):
        raise StripeError(429, "invalid_request_error", "Request rate limit exceeded. Learn more about rate "
                          "limits here https://stripe.com/docs/rate-limits.", code="rate_limit", stored=False,
                          headers={"Retry-After": str(rule.retry_after), "Stripe-Should-Retry": "true"})
    if sim.faults.fired("api_error", request):
        raise _api_error()
    if sim.faults.fired("drop", request):
        return _drop(request)

    text = await request.text() if request.method == "POST" else request.query_string
    request[PARAMS] = parse_form(text)
    # Stripe ignores Idempotency-Key on GET and DELETE: they are idempotent anyway.
    key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
    if key is None:
        status, body = await _execute(sim, request, handler)
        return await _after_execution(sim, request, status, body, {})

    scope = (api_key, key)
    fingerprint = (request.method, request.path, tuple(sorted(parse_qsl(text, keep_blank_values=True))))
    stored = sim.idempotency.claim(scope, fingerprint)
    if stored is not None:
        return _answer(sim, request, stored.status, stored.body, {"Idempotency-Key": key,
                                                                  "Idempotent-Replayed": "true"})
    try:
        status, body = await _execute(sim, request, handler)
    except BaseException:
        sim.idempotency.release(scope)
        raise
    sim.idempotency.finish(scope, status, body)
    return await _after_execution(sim, request, status, body, {"Idempotency-Key": key})


async def _execute(sim: Simulator, request: web.Request, handler: Handler) -> tuple[int, bytes]:
    """Runs the endpoint; an error it raises once running is an answer like any other (and stored)."""
    if ms := sim.faults.latency_ms(request):
        await asyncio.sleep(ms / 1000)  # inside the key's claim: a concurrent twin meets the 409
    try:
        response = await handler(request)
        status, body = response.status, response.body
    except web.HTTPNotFound:
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({request.method}: "
                          f"{request.path}). Please see https://stripe.com/docs.", stored=False) from None
    except web.HTTPMethodNotAllowed:
        raise StripeError(405, "invalid_request_error", f"Unrecognized request URL ({request.method}: "
                          f"{request.path}).", stored=False) from None
    except StripeError as e:
        if not e.stored:
            raise
        status, body = e.status, _json(e.body())
    if sim.faults.fired("execute_then_api_error", request):
        status, body = 500, _json(_api_error().body())  # ran, then failed: Stripe stores this 500 too
    assert isinstance(body, bytes), "every endpoint answers through ok()"
    return status, body


async def _after_execution(sim: Simulator, request: web.Request, status: int, body: bytes,
                           headers: dict[str, str]) -> web.StreamResponse:
    if rule := sim.faults.fired("execute_then_timeout", request):
        await sim.hold(rule.hold_seconds)
    if sim.faults.fired("execute_then_drop", request):
        return _drop(request)
    return _answer(sim, request, status, body, headers)


def _authenticate(request: web.Request, expected: str) -> str:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = credentials.strip()
    elif scheme.lower() == "basic":  # the key as user name, no password
        try:
            key = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            key = ""
    headers = {"WWW-Authenticate": 'Basic realm="Stripe"'}
    if not key:
        raise StripeError(401, "invalid_request_error", "You did not provide an API key. You need to provide "
                          "your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: "
                          "Bearer YOUR_SECRET_KEY').", stored=False, headers=headers)
    if not hmac.compare_digest(key.encode(), expected.encode()):
        shown = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "*" * len(key)
        raise StripeError(401, "invalid_request_error", f"Invalid API Key provided: {shown}", stored=False,
                          headers=headers)
    return key


def _api_error() -> StripeError:
    return StripeError(500, "api_error", "An unknown error occurred", stored=False)


def _drop(request: web.Request) -> web.StreamResponse:
    # Close the socket without a byte of answer; aiohttp then quietly fails to write this response.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def _answer(sim: Simulator, request: web.Request, status: int, body: bytes,
            headers: dict[str, str]) -> web.Response:
    version = request.headers.get("Stripe-Version", sim.config.api_version)
    return web.Response(status=status, body=body, content_type="application/json",
                        headers={"Request-Id": sim.new_id("req"), "Stripe-Version": version, **headers})


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2)  # Stripe answers indented JSON


def ok(obj: Any) -> web.Response:
    return web.Response(body=_json(obj), content_type="application/json")


# -- parameters ----------------------------------------------------------------------------------

def _params(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    params = request[PARAMS]
    for name in params:
        if name not in allowed:  # Stripe rejects unknown parameters; it catches typos like `metdata`
            raise invalid_param(f"Received unknown parameter: {name}", name, "parameter_unknown")
    return params


def _required_amount(params: dict[str, Any]) -> int:
    amount = _amount(params)
    if amount is None:
        raise invalid_param("Missing required param: amount.", "amount", "parameter_missing")
    return amount


def _amount(params: dict[str, Any]) -> int | None:
    value = params.get("amount")
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise invalid_param(f"Invalid integer: {value}", "amount", "parameter_invalid_integer")
    if int(value) < 1:
        raise invalid_param("Amount must be at least 1 (in the currency's minor unit).", "amount",
                            "amount_too_small")
    return int(value)


def _currency(params: dict[str, Any]) -> str:
    value = params.get("currency")
    if value is None:
        raise invalid_param("Missing required param: currency.", "currency", "parameter_missing")
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{3}", value):
        raise invalid_param(f"Invalid currency: {value}.", "currency", "parameter_invalid_string")
    return value.lower()


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    value = params.get("metadata", {})
    if value == "":  # `metadata=` clears it
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise invalid_param("Invalid metadata: must be a hash of string keys and values.", "metadata")
    return value


def _limit(params: dict[str, Any]) -> int:
    value = params.get("limit", "10")
    if not isinstance(value, str) or not value.isdigit() or not 1 <= int(value) <= 100:
        raise invalid_param("This value must be between 1 and 100.", "limit")
    return int(value)


_CREATED_BOUNDS = ("gt", "gte", "lt", "lte")


def _created(params: dict[str, Any]) -> dict[str, int] | None:
    """A list's `created` filter, as Stripe takes it: `created=<unix>` (exactly then), or any of
    `created[gt]`, `created[gte]`, `created[lt]`, `created[lte]`."""
    value = params.get("created")
    if value is None:
        return None
    bounds = {"eq": value} if isinstance(value, str) else value
    if not isinstance(bounds, dict):
        raise invalid_param("Invalid created: must be an integer or a hash of gt, gte, lt and lte.", "created")
    found: dict[str, int] = {}
    for bound, text in bounds.items():
        param = "created" if bound == "eq" else f"created[{bound}]"
        if bound not in (*_CREATED_BOUNDS, "eq"):
            raise invalid_param(f"Received unknown parameter: {param}", param, "parameter_unknown")
        if not isinstance(text, str) or not re.fullmatch(r"-?\d{1,12}", text):
            raise invalid_param(f"Invalid integer: {text}", param, "parameter_invalid_integer")
        found[bound] = int(text)
    return found


_COMMON = frozenset({"expand"})
_CHARGE = _COMMON | {"amount", "currency", "metadata", "description", "source", "customer", "capture",
                     "receipt_email", "statement_descriptor"}
_INTENT = _CHARGE | {"confirm", "payment_method", "payment_method_types", "automatic_payment_methods",
                     "capture_method", "off_session", "return_url"}
_REFUND = _COMMON | {"charge", "payment_intent", "amount", "reason", "metadata", "instructions_email"}
_REFUND_LIST = _COMMON | {"charge", "payment_intent", "limit", "starting_after", "created"}


# -- endpoints -----------------------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.post("/v1/charges")
async def create_charge(request: web.Request) -> web.Response:
    world, params = request.app[SIM].world, _params(request, _CHARGE)
    amount, currency = _required_amount(params), _currency(params)
    charge = world.create_charge(amount, currency, _metadata(params), params.get("description"))
    return ok(world.charge_view(charge))


@routes.get("/v1/charges/{id}")
async def get_charge(request: web.Request) -> web.Response:
    world = request.app[SIM].world
    return ok(world.charge_view(world.charge(request.match_info["id"])))


@routes.post("/v1/payment_intents")
async def create_payment_intent(request: web.Request) -> web.Response:
    world, params = request.app[SIM].world, _params(request, _INTENT)
    amount, currency = _required_amount(params), _currency(params)
    return ok(world.create_payment_intent(amount, currency, _metadata(params), params.get("description")))


@routes.get("/v1/payment_intents/{id}")
async def get_payment_intent(request: web.Request) -> web.Response:
    return ok(request.app[SIM].world.payment_intent(request.match_info["id"]))


@routes.post("/v1/refunds")
async def create_refund(request: web.Request) -> web.Response:
    sim, params = request.app[SIM], _params(request, _REFUND)
    charge, intent = params.get("charge"), params.get("payment_intent")
    if charge is None and intent is None:
        raise invalid_param("One of the following params should be provided for this request: "
                            "payment_intent or charge.", None, "parameter_missing")
    if charge is not None and intent is not None:
        raise invalid_param("You cannot specify both charge and payment_intent.", "payment_intent")
    reason = params.get("reason")
    if reason is not None and reason not in REFUND_REASONS:
        raise invalid_param("Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                            "reason")
    amount, metadata = _amount(params), _metadata(params)
    requires_action = sim.faults.fired("refund_requires_action", request) is not None
    return ok(sim.create_refund(charge_id=charge, payment_intent_id=intent, amount=amount, reason=reason,
                                metadata=metadata, requires_action=requires_action))


@routes.get("/v1/refunds")
async def list_refunds(request: web.Request) -> web.Response:
    world, params = request.app[SIM].world, _params(request, _REFUND_LIST)
    return ok(world.list_refunds(charge=params.get("charge"), payment_intent=params.get("payment_intent"),
                                 limit=_limit(params), starting_after=params.get("starting_after"),
                                 created=_created(params)))


@routes.get("/v1/refunds/{id}")
async def get_refund(request: web.Request) -> web.Response:
    return ok(request.app[SIM].world.refund(request.match_info["id"]))


@routes.post("/v1/refunds/{id}/cancel")
async def cancel_refund(request: web.Request) -> web.Response:
    _params(request, _COMMON)
    return ok(request.app[SIM].world.cancel(request.match_info["id"]))


@routes.get("/v1/events/{id}")
async def get_event(request: web.Request) -> web.Response:
    return ok(request.app[SIM].world.event(request.match_info["id"]))


@routes.get("/v1/disputes/{id}")
async def get_dispute(request: web.Request) -> web.Response:
    return ok(request.app[SIM].world.disputes.get(request.match_info["id"]))
