"""Migrations on real Postgres: idempotent, safe when several replicas start at once, tamper-evident."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.db import migrate as migrate_module
from gateway.db.migrate import current_version, latest_version, migrate
from gateway.db.pool import connect


async def test_replicas_migrating_at_once_apply_each_version_once(empty_database):
    conns = [await connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(v for applied in results for v in applied) == list(range(1, latest_version() + 1))
        assert await current_version(conns[0]) == latest_version()
        assert await migrate(conns[0]) == []
    finally:
        for c in conns:
            await c.close()


async def test_a_migration_edited_after_it_was_applied_stops_the_start(empty_database, monkeypatch):
    conn = await connect(empty_database)
    try:
        await migrate(conn)
        real = migrate_module.load_migrations()
        edited = [migrate_module.Migration(m.version, m.name, m.sql + "\n-- edited") for m in real]
        monkeypatch.setattr(migrate_module, "load_migrations", lambda directory=None: edited)
        with pytest.raises(RuntimeError, match="changed after it was applied"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_schema_refuses_over_refunding_even_without_the_service(pool):
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO transactions (id, processor_id, psp_reference, invoice_id, amount, currency) "
                           "VALUES ('tx_1', 'mock', 'ch_1', 'inv', 100, 'EUR')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE transactions SET refunded_amount = 101 WHERE id = 'tx_1'")
