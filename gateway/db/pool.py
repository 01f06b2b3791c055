"""The asyncpg pool: JSON codecs and pool sizing in one place."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import structlog


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads)


class _PooledConnection(asyncpg.Connection):
    """A pool connection is handed back as it was taken: the gateway sets no session state on it
    and keeps no session advisory lock, cursor or LISTEN there (the migrations' lock is released
    before their connection goes back). So the reset between uses sends nothing, where
    asyncpg's default costs a round trip on every release; an open transaction is still rolled
    back and listeners dropped, as asyncpg does for any reset query."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20,
                      statement_cache_size: int = 100) -> asyncpg.Pool:
    """`statement_cache_size=0`: no named prepared statements are kept, for transaction-mode poolers."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection,
                                     command_timeout=30, statement_cache_size=statement_cache_size,
                                     connection_class=_PooledConnection)


async def close_pool(pool: asyncpg.Pool, grace_seconds: float) -> None:
    """Close the pool, waiting at most `grace_seconds` for connections still in use; then they are
    terminated (their transactions roll back), so that a shutdown never waits on a stuck query."""
    try:
        async with asyncio.timeout(grace_seconds):
            await pool.close()
    except TimeoutError:
        structlog.get_logger(__name__).warning("database_pool_terminated", grace_seconds=grace_seconds)
        pool.terminate()


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn
