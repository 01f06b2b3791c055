"""Small HTTP helpers shared by the routes: JSON bodies in, JSON and problem+json out."""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway import errors, keys, metrics
from gateway.logging import has_card_number, scrub_stored

M = TypeVar("M", bound=BaseModel)
log = structlog.get_logger(__name__)

# Codes for request-shape errors on one kind of field; anything else is a validation_error.
_FIELD_CODES = {"invalid_amount", "invalid_currency", "card_number_not_allowed"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.__pydantic_serializer__.to_json(model), status=status,
                        content_type="application/json")


def problem_response(err: errors.GatewayError) -> web.Response:
    return web.Response(body=orjson.dumps(err.problem()), status=err.status,
                        content_type="application/problem+json", headers=err.headers)


def validation_error(err: ValidationError) -> errors.GatewayError:
    details = err.errors(include_url=False, include_input=False, include_context=False)
    if any(d["type"] == "json_invalid" for d in details):
        return errors.MalformedRequest("the body is not valid JSON")
    # A field's path holds what the client sent as a key (metadata): never echo a card number in it.
    fields = [{"field": scrub_stored(".".join(str(p) for p in d["loc"])) or "body", "message": d["msg"],
               "type": d["type"]} for d in details]
    types = {d["type"] for d in details}
    code = types.pop() if len(types) == 1 and types <= _FIELD_CODES else "validation_error"
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return errors.InvalidRequest(summary, code=code, errors=fields)


async def read_body(request: web.Request) -> bytes:
    """The whole body within request_read_seconds (every body is read through here): a client that
    trickles bytes does not hold a connection open, with or without a key."""
    deadline = request.app[keys.SETTINGS].request_read_seconds
    try:
        async with asyncio.timeout(deadline):
            return await request.read()
    except TimeoutError:
        metrics.SLOW_BODIES.inc()
        log.warning("request_body_too_slow", path=request.path, seconds=deadline)
        raise errors.RequestTimeout(f"the request body did not arrive within {deadline:g} s",
                                    headers={"Connection": "close"}) from None


async def parse_body(request: web.Request, model: type[M], *, optional: bool = False) -> M | None:
    """The JSON body as `model`; with `optional`, no body at all is None."""
    if optional and not request.body_exists:
        return None
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("send the body as application/json")
    body = await read_body(request)
    if b"\\u0000" in body or b"\x00" in body:
        # Postgres text cannot hold U+0000: refuse it here rather than fail on the way in.
        raise errors.InvalidRequest("text must not contain the NUL character (U+0000)",
                                    errors=[{"field": "body", "message": "contains U+0000"}])
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise validation_error(e) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query string as one of gateway.models' query models (the first value of a repeated name)."""
    try:
        return model.model_validate({name: request.query[name] for name in request.query})
    except ValidationError as e:
        raise validation_error(e) from None


# Path and query values: what a Ref in a body may hold (gateway.models.Ref), so that an id that
# could never have been stored is refused here rather than by Postgres (which cannot hold U+0000).
_URL_VALUE_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f]")


def check_url(request: web.Request) -> None:
    """Refuse control characters and over-long values in the path's parameters, the query's values
    and the path itself: 422 validation_error naming the parameter."""
    values = [*request.match_info.items(), *request.query.items()]
    for name, value in values:
        if has_card_number(value):  # never echoed back, not even in a 404's detail
            raise errors.InvalidRequest(f"{name} looks like a card number, which the gateway never takes",
                                        code="card_number_not_allowed",
                                        errors=[{"field": name, "message": "looks like a card number"}])
        if _CONTROL.search(name) or _CONTROL.search(value) or len(value) > _URL_VALUE_MAX:
            raise errors.InvalidRequest(
                f"{name} must be at most {_URL_VALUE_MAX} characters, without control characters",
                errors=[{"field": name, "message": f"at most {_URL_VALUE_MAX} characters, no control characters"}])
    if _CONTROL.search(request.path):
        raise errors.InvalidRequest("the path must not contain control characters",
                                    errors=[{"field": "path", "message": "contains control characters"}])


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise errors.InvalidRequest(f"{name} must be an integer from {lo} to {hi}",
                                    errors=[{"field": name, "message": f"must be from {lo} to {hi}"}])
    return value
