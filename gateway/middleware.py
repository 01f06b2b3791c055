"""Request id, errors as problem+json, authentication and Idempotency-Key handling."""

from __future__ import annotations

import hashlib
import re
from http import HTTPStatus

import asyncpg
import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import errors, keys
from gateway.db import store
from gateway.http import check_url, problem_response, read_body
from gateway.ids import new_id
from gateway.logging import scrub_text

log = structlog.get_logger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_PROTECTED = ("/v1/", "/admin/")
# What a lost or restarting database looks like from asyncpg: the client may retry later.
# A server shutting down ends its sessions with 57P01/57P02 on whatever query they were running.
_DATABASE_AWAY = (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
                  asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, asyncpg.ConnectionDoesNotExistError,
                  ConnectionError, OSError)
_CLAIM_ATTEMPTS = 3  # claim, read, claim again: a key released in between is claimed on the next try
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "malformed_request"}


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-ID", "")
    # The id travels to logs, spans, processors and the billing core: never one that looks like a
    # key or a card number (one the log redaction would change).
    request_id = incoming if _REQUEST_ID.match(incoming) and scrub_text(incoming) == incoming else new_id("req")
    request[keys.REQUEST_ID] = request_id
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        response = await handler(request)
    response.headers["X-Request-ID"] = request_id
    return response


def _http_error(exc: web.HTTPException) -> errors.GatewayError:
    err = errors.GatewayError(exc.reason or "error", code=_HTTP_CODES.get(exc.status, "http_error"))
    phrase = HTTPStatus(exc.status).phrase if exc.status in HTTPStatus._value2member_map_ else "Error"
    err.status, err.title = exc.status, phrase[:1] + phrase[1:].lower()  # "Not found", as the family writes it
    if exc.status == 413:
        err.detail = "the request body is larger than this endpoint accepts"
    if isinstance(exc, web.HTTPMethodNotAllowed):  # RFC 9110: a 405 says what the path takes
        err.headers = {"Allow": ", ".join(sorted(exc.allowed_methods))}
    return err


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.GatewayError as e:
        if e.status >= 500:
            log.warning("request_failed", code=e.code, status=e.status)
        return problem_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return problem_response(_http_error(e))
    except Exception as e:
        if not _database_away(e):
            log.exception("unhandled_error", path=request.path)
            return problem_response(errors.InternalError("an unexpected error occurred; it has been logged"))
        log.warning("database_unavailable", error=type(e).__name__)
        return problem_response(errors.ServiceUnavailable(
            "the database is unavailable; retry later", code="database_unavailable", headers={"Retry-After": "5"}))


def _database_away(error: BaseException) -> bool:
    """Whether an error comes from a database that went away: one of _DATABASE_AWAY, a closed
    connection, or an error raised while handling one (a rollback on a connection whose socket
    broke mid-query raises its own error, caused by the first). asyncpg's InternalClientError
    "cannot switch to state ..." is what the next statement on a connection whose server went
    away mid-operation raises (seen with Postgres stopped under load), with no chain to follow."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain is short; a cycle must not loop
        if seen is None:
            return False
        if (isinstance(seen, _DATABASE_AWAY)
                or (isinstance(seen, asyncpg.InterfaceError) and "connection is closed" in str(seen))
                or (isinstance(seen, asyncpg.InternalClientError) and "cannot switch to state" in str(seen))):
            return True
        seen = seen.__cause__ or seen.__context__
    return False



@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limiter = request.app[keys.SOURCE_LIMITER]
    source = request.remote or "unknown"
    if request.path.startswith("/v1/webhooks/"):
        # A webhook signs in with its processor's signature, not an API key: a verified one is not
        # limited by address (a processor sends bursts from few addresses); a rejected one is a
        # failed sign-in.
        limiter.check_sign_in(source)
        try:
            return await handler(request)
        except errors.GatewayError as e:
            if e.code == "invalid_signature":
                limiter.failed_sign_in(source)
            raise
    if request.path.startswith(_PROTECTED):
        limiter.check_sign_in(source)
        try:
            request[keys.CLIENT] = request.app[keys.AUTH].authenticate(request)
        except errors.Unauthorized:
            limiter.failed_sign_in(source)
            log.info("sign_in_failed", source=source, path=request.path)
            raise
        structlog.contextvars.bind_contextvars(client_id=request[keys.CLIENT].id)
    else:
        limiter.unauthenticated(source)
    return await handler(request)


@web.middleware
async def url_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After authentication (a stranger learns nothing from it), before anything stores the path
    (Idempotency-Key) or looks an id up."""
    check_url(request)
    return await handler(request)


def _request_hash(request: web.Request, body: bytes) -> bytes:
    try:  # the same JSON with keys in another order or other spacing is the same request
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(b"%s %s\n%s" % (request.method.encode(), request.path_qs.encode(), canonical)).digest()


def _replayable(response: web.StreamResponse, error: errors.GatewayError | None) -> bool:
    """Keep the answers of requests that ran (2xx, 404/409 verdicts, and 422s the stored state gave:
    errors.Refused). Malformed or invalid requests (400, 413, 415, 422) and our own failures (5xx)
    are not kept, so that a corrected request may reuse the key, as Stripe does for validation errors."""
    if isinstance(error, errors.Refused):
        return True
    return response.status < 400 or (response.status not in (400, 413, 415, 422) and response.status < 500)


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if key is None or request.method != "POST" or keys.CLIENT not in request:
        return await handler(request)
    if not _IDEMPOTENCY_KEY.match(key):
        raise errors.MalformedRequest("Idempotency-Key must be 1 to 255 printable ASCII characters",
                                      code="invalid_idempotency_key")
    client_id = request[keys.CLIENT].id
    body = await read_body(request)
    digest = _request_hash(request, body)
    pool = request.app[keys.POOL]
    settings = request.app[keys.SETTINGS]
    lock_seconds = settings.refund_response_budget_seconds + 30
    async with pool.acquire() as conn:
        for _ in range(_CLAIM_ATTEMPTS):
            claimed = await store.claim_key(conn, client_id, key, request.method, request.path, digest, lock_seconds)
            row = None if claimed else await store.get_key(conn, client_id, key)
            if claimed or row is not None:
                break
            # The first request released the key between our claim and our read: claim it again.
        else:
            raise errors.Conflict("a request with this Idempotency-Key is still being processed",
                                  code="idempotency_key_in_use", headers={"Retry-After": "1"})
        if row is not None:
            if bytes(row["request_hash"]) != digest:
                raise errors.Conflict("this Idempotency-Key was used with a different request",
                                      code="idempotency_key_reused")
            if row["status_code"] is not None:
                log.info("idempotent_replay", key_status=row["status_code"])
                return web.Response(body=bytes(row["response_body"]), status=row["status_code"],
                                    content_type=row["content_type"], headers={"Idempotent-Replayed": "true"})
            claimed, resource = await store.take_over_key(conn, client_id, key, lock_seconds)
            if not claimed:
                raise errors.Conflict("a request with this Idempotency-Key is still being processed",
                                      code="idempotency_key_in_use", headers={"Retry-After": "1"})
            request[keys.RECOVERED_RESOURCE] = resource
    request[keys.IDEMPOTENCY] = (client_id, key)
    error = None
    try:
        response = await handler(request)
    except errors.GatewayError as e:
        response, error = problem_response(e), e
    except BaseException:
        async with pool.acquire() as conn:
            await store.release_key(conn, client_id, key)
        raise
    async with pool.acquire() as conn:
        if _replayable(response, error) and isinstance(response, web.Response) and response.body is not None:
            await store.store_response(conn, client_id, key, response.status, response.content_type,
                                       bytes(response.body))
        else:
            await store.release_key(conn, client_id, key)
    return response
