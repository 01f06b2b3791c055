"""Typed keys for what the application and each request carry."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

if TYPE_CHECKING:
    from adapters.base import ProcessorAdapter
    from gateway.auth import Authenticator, SourceLimiter
    from gateway.execution import RefundExecutor
    from gateway.metrics import DatabaseGauges
    from gateway.settings import ClientConfig, Settings
    from gateway.tracing import Tracing

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool")
ADAPTERS: web.AppKey[dict[str, "ProcessorAdapter"]] = web.AppKey("adapters")
EXECUTOR: web.AppKey["RefundExecutor"] = web.AppKey("executor")
AUTH: web.AppKey["Authenticator"] = web.AppKey("auth")
SOURCE_LIMITER: web.AppKey["SourceLimiter"] = web.AppKey("source_limiter")
WEBHOOK_WAKE: web.AppKey[asyncio.Event] = web.AppKey("webhook_wake")  # set when an event was stored
TRACING: web.AppKey["Tracing | None"] = web.AppKey("tracing")  # None: tracing is off
DATABASE_GAUGES: web.AppKey["DatabaseGauges"] = web.AppKey("database_gauges")  # /metrics' reads of the database

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
CLIENT: web.RequestKey["ClientConfig"] = web.RequestKey("client")
# The claimed (client id, key), when the request carried an Idempotency-Key.
IDEMPOTENCY: web.RequestKey[tuple[str, str]] = web.RequestKey("idempotency")
# What a first, interrupted request with the same Idempotency-Key created.
RECOVERED_RESOURCE: web.RequestKey[str | None] = web.RequestKey("recovered_resource")
