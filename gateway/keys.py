"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

if TYPE_CHECKING:
    from adapters.base import ProcessorAdapter
    from gateway.auth import Authenticator
    from gateway.execution import RefundExecutor
    from gateway.settings import Settings

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool")
ADAPTERS: web.AppKey[dict[str, "ProcessorAdapter"]] = web.AppKey("adapters")
EXECUTOR: web.AppKey["RefundExecutor"] = web.AppKey("executor")
AUTH: web.AppKey["Authenticator"] = web.AppKey("auth")

# Per-request values (aiohttp requests are plain mappings).
REQUEST_ID = "request_id"
CLIENT = "client"
IDEMPOTENCY = "idempotency"  # the claimed (client, key), when the request carried an Idempotency-Key
RECOVERED_RESOURCE = "recovered_resource"  # what a first, interrupted request with the same key created
