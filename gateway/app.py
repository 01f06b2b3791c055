"""The application factory: middlewares, routes, and the pool, adapters and background work
created in cleanup contexts (nothing connects at import time)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, AsyncIterator

import httpx
from aiohttp import web

from adapters.registry import build_adapters, close_adapters
from gateway import callbacks, keys, metrics, reconcile, tracing, webhooks
from gateway.auth import Authenticator, SourceLimiter
from gateway.db.migrate import migrate
from gateway.db.pool import close_pool, create_pool
from gateway.execution import RefundExecutor
from gateway.logging import register_secrets
from gateway.middleware import (
    auth_middleware,
    error_middleware,
    idempotency_middleware,
    request_id_middleware,
    url_middleware,
)
from gateway.routes import admin, console, disputes, events, finance, ops, reconciliation, refunds, transactions
from gateway.routes import webhooks as webhook_routes
from gateway.settings import Settings
from gateway.worker import (PENDING_BATCH, RECOVERY_BATCH, VERIFY_BATCH, check_due_pending, recover_due, run_loop,
                            verify_due)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    assert settings.database_url is not None, "resolve the database (embedded or configured) before create_app"
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=settings.db_pool_min,
                             max_size=settings.db_pool_max,
                             statement_cache_size=settings.database_statement_cache_size)
    if settings.migrate_on_start:  # else /readyz stays 503 until `psp-gateway migrate` has run
        async with pool.acquire() as conn:
            await migrate(conn)
    app[keys.POOL] = pool
    observing = asyncio.create_task(metrics.keep_pool_observed(pool))
    yield
    observing.cancel()
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await observing
    finally:
        await close_pool(pool, settings.shutdown_grace_seconds)


async def _processors(app: web.Application) -> AsyncIterator[None]:
    adapters = build_adapters(app[keys.SETTINGS].processors)
    app[keys.ADAPTERS] = adapters
    yield
    await close_adapters(adapters)


RECONCILE_POLL_SECONDS = 30.0  # how often a replica looks whether a scheduled reconciliation run is due


async def _background(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    executor = RefundExecutor(app[keys.POOL], app[keys.ADAPTERS], settings, tracing=app[keys.TRACING])
    app[keys.EXECUTOR] = executor
    pool = app[keys.POOL]

    async def pending() -> bool:
        return await check_due_pending(pool, executor, settings.lease_seconds) >= PENDING_BATCH

    async def inbox() -> bool:
        return await webhooks.process_due(pool, recheck_seconds=settings.pending_poll_seconds,
                                          adapters=app[keys.ADAPTERS]) >= webhooks.BATCH

    async def janitor() -> bool:
        return await recover_due(pool, executor, settings.lease_seconds) >= RECOVERY_BATCH

    async def duplicates() -> bool:
        return await verify_due(pool, executor) >= VERIFY_BATCH

    loops = [asyncio.create_task(run_loop("pending_refunds", pending, settings.pending_poll_seconds)),
             asyncio.create_task(run_loop("janitor", janitor, settings.janitor_poll_seconds)),
             asyncio.create_task(run_loop("duplicate_checks", duplicates, settings.janitor_poll_seconds)),
             asyncio.create_task(run_loop("webhook_inbox", inbox, settings.webhook_poll_seconds,
                                          app[keys.WEBHOOK_WAKE]))]
    intervals = {p.id: (p.reconcile_interval_seconds, p.reconcile_lookback_seconds) for p in settings.processors
                 if p.reconcile_interval_seconds}
    if intervals:
        async def reconciliation() -> bool:
            await reconcile.run_due(pool, app[keys.ADAPTERS], intervals)
            return False

        loops.append(asyncio.create_task(run_loop("reconciliation", reconciliation, RECONCILE_POLL_SECONDS)))
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


async def _flush_spans(app: web.Application) -> None:
    app[keys.TRACING].shutdown()


async def _without_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp names itself and Python, with versions, in a Server header: send none."""
    response.headers.popall("Server", None)


def create_app(settings: Settings, *, tracer_provider: "TracerProvider | None" = None) -> web.Application:
    """`tracer_provider`: trace into this OpenTelemetry provider (tests); else tracing follows the settings."""
    traces = (tracing.Tracing(tracer_provider) if tracer_provider is not None
              else tracing.Tracing.from_settings(settings) if tracing.wanted(settings) else None)
    middlewares = [request_id_middleware, error_middleware, auth_middleware, url_middleware, idempotency_middleware]
    if traces is not None:  # inside the request id, outside the errors: the span sees the final status
        middlewares.insert(1, traces.middleware)
    # Whatever a processor or a caller echoes, a configured secret is redacted before it is stored,
    # logged or sent.
    register_secrets(settings.secret_values())
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    app.on_response_prepare.append(_without_server_header)
    app[keys.SETTINGS] = settings
    app[keys.TRACING] = traces
    app[keys.DATABASE_GAUGES] = metrics.DatabaseGauges()
    if traces is not None:
        app.on_cleanup.append(_flush_spans)
    app[keys.AUTH] = Authenticator(settings.clients)
    app[keys.SOURCE_LIMITER] = SourceLimiter(settings.failed_sign_ins_per_minute, settings.unauthenticated_per_second)
    app[keys.WEBHOOK_WAKE] = asyncio.Event()
    app.cleanup_ctx.extend([_database, _processors, _background])
    for module in (ops, transactions, refunds, events, webhook_routes, admin, disputes, reconciliation, finance,
                   console):
        app.add_routes(module.routes)
    return app
