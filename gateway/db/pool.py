"""The asyncpg pool: JSON codecs and pool sizing in one place."""

from __future__ import annotations

import asyncpg
import orjson


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads)


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20,
                      statement_cache_size: int = 100) -> asyncpg.Pool:
    """`statement_cache_size=0`: no named prepared statements are kept, for transaction-mode poolers."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection,
                                     command_timeout=30, statement_cache_size=statement_cache_size)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn
