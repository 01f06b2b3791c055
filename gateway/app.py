"""The application factory: middlewares, routes, and the pool, adapters and background work
created in cleanup contexts (nothing connects at import time)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import httpx
from aiohttp import web

from adapters.registry import build_adapter
from gateway import callbacks, keys, webhooks
from gateway.auth import Authenticator
from gateway.db.migrate import migrate
from gateway.db.pool import create_pool
from gateway.execution import RefundExecutor
from gateway.middleware import auth_middleware, error_middleware, idempotency_middleware, request_id_middleware
from gateway.routes import admin, events, ops, refunds, transactions, webhooks as webhook_routes
from gateway.settings import Settings
from gateway.worker import PENDING_BATCH, RECOVERY_BATCH, check_due_pending, recover_due, run_loop


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    assert settings.database_url is not None, "resolve the database (embedded or configured) before create_app"
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=settings.db_pool_min,
                             max_size=settings.db_pool_max)
    async with pool.acquire() as conn:
        await migrate(conn)
    app[keys.POOL] = pool
    yield
    await pool.close()


async def _processors(app: web.Application) -> AsyncIterator[None]:
    adapters = {p.id: build_adapter(p) for p in app[keys.SETTINGS].processors}
    app[keys.ADAPTERS] = adapters
    yield
    for adapter in adapters.values():
        await adapter.aclose()


async def _background(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    executor = RefundExecutor(app[keys.POOL], app[keys.ADAPTERS], settings)
    app[keys.EXECUTOR] = executor
    pool = app[keys.POOL]

    async def pending() -> bool:
        return await check_due_pending(pool, executor, settings.lease_seconds) >= PENDING_BATCH

    async def inbox() -> bool:
        return await webhooks.process_due(pool, recheck_seconds=settings.pending_poll_seconds) >= webhooks.BATCH

    async def janitor() -> bool:
        return await recover_due(pool, executor, settings.lease_seconds) >= RECOVERY_BATCH

    loops = [asyncio.create_task(run_loop("pending_refunds", pending, settings.pending_poll_seconds)),
             asyncio.create_task(run_loop("janitor", janitor, settings.janitor_poll_seconds)),
             asyncio.create_task(run_loop("webhook_inbox", inbox, settings.webhook_poll_seconds,
                                          app[keys.WEBHOOK_WAKE]))]
    http = None
    if settings.callback_url:
        http = httpx.AsyncClient(timeout=settings.callback_timeout_seconds)
        secrets = [s.get_secret_value().encode() for s in settings.callback_secrets]

        async def outbox() -> bool:
            return await callbacks.dispatch_due(
                pool, http, settings.callback_url, secrets, initial_backoff=settings.callback_initial_backoff_seconds,
                max_backoff=settings.callback_max_backoff_seconds) >= callbacks.BATCH

        loops.append(asyncio.create_task(run_loop("callbacks", outbox, settings.callback_poll_seconds)))
    yield
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    await executor.aclose(settings.shutdown_grace_seconds)
    if http is not None:
        await http.aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_id_middleware, error_middleware, auth_middleware, idempotency_middleware],
    )
    app[keys.SETTINGS] = settings
    app[keys.AUTH] = Authenticator(settings.clients)
    app[keys.WEBHOOK_WAKE] = asyncio.Event()
    app.cleanup_ctx.extend([_database, _processors, _background])
    for module in (ops, transactions, refunds, events, webhook_routes, admin):
        app.add_routes(module.routes)
    return app
