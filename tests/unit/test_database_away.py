"""What a database going away mid-query looks like to a client: 503 with Retry-After, never a 500."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.middleware import error_middleware


@pytest.mark.parametrize("error", [
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),  # a fast shutdown
    asyncpg.CrashShutdownError("terminating connection because of crash of another server process"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    ConnectionRefusedError(111, "Connection refused"),
])
async def test_a_database_that_goes_away_is_a_503_with_retry_after(error):
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/refunds", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/refunds")
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "database_unavailable"


def _raised_while_handling(first: BaseException, then: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise then
    except BaseException as e:
        return e


@pytest.mark.parametrize("error", [
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    # A socket broken mid-query (BrokenPipeError), then the transaction's rollback on the dead
    # connection: the error that reaches the middleware is the second, caused by the first.
    _raised_while_handling(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
                           asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection "
                                                  "is closed")),
    _raised_while_handling(BrokenPipeError(32, "Broken pipe"), RuntimeError("while writing")),
])
async def test_an_error_raised_by_a_connection_that_went_away_is_a_503(error):
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/refunds", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/refunds")
        assert resp.status == 503 and (await resp.json())["code"] == "database_unavailable"


async def test_a_bug_is_still_a_500():
    async def handler(request: web.Request) -> web.Response:
        raise asyncpg.InterfaceError("cannot perform operation: another operation is in progress")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/refunds", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/refunds")
        assert resp.status == 500 and (await resp.json())["code"] == "internal_error"
