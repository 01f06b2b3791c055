"""The pool as a transaction-mode pooler needs it, on real Postgres: with the statement cache off
no named prepared statement is left on a server connection, and with migrations off at start the
gateway serves but is not ready until `migrate` has run. Closing it is bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway import keys
from gateway.db.migrate import migrate
from gateway.db.pool import close_pool, connect, create_pool
from tests.conftest import Api, make_settings, start_api

NAMED = "SELECT count(*) FROM pg_prepared_statements"


@pytest.mark.parametrize("cache_size, named_left", [(0, False), (100, True)])
async def test_statement_cache_size_decides_whether_named_statements_stay_on_the_server(
        database_url, cache_size, named_left):
    pool = await create_pool(database_url, min_size=1, max_size=1, statement_cache_size=cache_size)
    try:
        async with pool.acquire() as conn:
            for _ in range(2):
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
            assert (await conn.fetchval(NAMED) > 0) is named_left
    finally:
        await pool.close()


@pytest.mark.parametrize("cache_size, named_left", [(0, False), (100, True)])
async def test_the_gateway_pool_follows_the_statement_cache_setting(database_url, cache_size, named_left):
    # One connection, so every request and background round runs on the session looked at after.
    settings = make_settings(database_url, database_statement_cache_size=cache_size, db_pool_min=1, db_pool_max=1)
    client = await start_api(settings)
    try:
        api = Api(client)
        tx = await api.transaction(amount=1000)  # 201, or it fails here
        assert (await api.refund(tx, 100))["status"] == "succeeded"
        async with client.server.app[keys.POOL].acquire() as conn:
            assert (await conn.fetchval(NAMED) > 0) is named_left
    finally:
        await client.close()


async def test_without_migrations_at_start_the_gateway_is_not_ready_until_migrate_runs(empty_database):
    client = await start_api(make_settings(empty_database, migrate_on_start=False))
    try:
        assert (await client.get("/healthz")).status == 200
        not_ready = await client.get("/readyz")
        assert (not_ready.status, (await not_ready.json())["code"]) == (503, "migrations_pending")
        conn = await connect(empty_database)
        try:
            assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None  # nothing applied
            await migrate(conn)
        finally:
            await conn.close()
        assert (await client.get("/readyz")).status == 200
    finally:
        await client.close()


async def test_a_connection_given_back_mid_transaction_comes_back_without_it(database_url):
    from gateway.db.pool import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute("SELECT pg_advisory_xact_lock(4242)")
        await pool.release(conn)
        async with pool.acquire() as again:
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                        "AND pid = pg_backend_pid()") == 0
    finally:
        await pool.close()


async def test_closing_the_pool_waits_the_grace_period_then_terminates_what_is_still_in_use(database_url):
    """A shutdown never waits on a stuck query: after the grace period its connection is terminated."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    held = await pool.acquire()
    stuck = asyncio.create_task(held.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await close_pool(pool, 0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(Exception):  # the connection was terminated under the query
        await stuck
    assert pool.is_closing()
