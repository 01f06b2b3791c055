"""The pool as a transaction-mode pooler needs it, on real Postgres: with the statement cache off
no named prepared statement is left on a server connection, and with migrations off at start the
gateway serves but is not ready until `migrate` has run."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from gateway import keys
from gateway.db.migrate import migrate
from gateway.db.pool import connect, create_pool
from tests.conftest import WRITER_KEY, make_settings, start_api, with_database

NAMED = "SELECT count(*) FROM pg_prepared_statements"


@pytest.fixture
async def empty_database(pg_server):
    name = f"gw_empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_server, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


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
        headers = {"Authorization": f"Bearer {WRITER_KEY}"}
        tx = await client.post("/v1/transactions", headers=headers, json={
            "processor": "mock", "psp_reference": "ch_cache", "invoice_id": "INV-CACHE", "amount": 1000,
            "currency": "EUR"})
        assert tx.status == 201, await tx.text()
        refund = await client.post("/v1/refunds", headers=headers, json={
            "invoice_id": "INV-CACHE", "amount": 100, "currency": "EUR"})
        assert (await refund.json())["status"] == "succeeded"
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
