"""What a database going away mid-query looks like to a client: 503 with Retry-After, never a 500."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.middleware import error_middleware


def _raised_while_handling(first: BaseException, then: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise then
    except BaseException as e:
        return e


async def _answer_to(error: BaseException):
    """What the error middleware answers for a handler that raises `error`."""
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/refunds", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/refunds")
        return resp.status, resp.headers, resp.content_type, await resp.json()


@pytest.mark.parametrize("error", [
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),  # a fast shutdown
    asyncpg.CrashShutdownError("terminating connection because of crash of another server process"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    ConnectionRefusedError(111, "Connection refused"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    # A socket broken mid-query (BrokenPipeError), then the transaction's rollback on the dead
    # connection: the error that reaches the middleware is the second, caused by the first.
    _raised_while_handling(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
                           asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection "
                                                  "is closed")),
    _raised_while_handling(BrokenPipeError(32, "Broken pipe"), RuntimeError("while writing")),
    # The next statement (here a COMMIT) on a connection whose server went away mid-operation.
    asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
])
async def test_a_database_that_goes_away_is_a_503_with_retry_after(error):
    status, headers, content_type, body = await _answer_to(error)
    assert status == 503 and headers["Retry-After"] == "5"
    assert content_type == "application/problem+json"
    assert body["code"] == "database_unavailable"


async def test_a_bug_is_still_a_500():
    status, _, _, body = await _answer_to(
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
    assert status == 500 and body["code"] == "internal_error"
