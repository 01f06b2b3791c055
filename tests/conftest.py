"""Shared fixtures: one real Postgres per test session (embedded unless GATEWAY_DATABASE_URL is
set), a migrated template database, and a fresh database cloned from it for every test."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from gateway import embedded, keys
from gateway.app import create_app
from gateway.db.migrate import migrate
from gateway.db.pool import connect, create_pool
from gateway.logging import configure
from gateway.settings import Settings
from tests.ids import token
from tests.processes import gateways  # noqa: F401  (a fixture for every test)

# Read once, then keep every GATEWAY_* variable of the developer's shell out of the tests.
_EXTERNAL_DSN = os.environ.get("GATEWAY_DATABASE_URL")
for _name in [n for n in os.environ if n.startswith("GATEWAY_")]:
    del os.environ[_name]

WRITER_KEY = "sk_test_writer_0123456789"
READER_KEY = "sk_test_reader_0123456789"
ADMIN_KEY = "sk_test_admin_00123456789"


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The DSN of a Postgres server's maintenance database."""
    if _EXTERNAL_DSN:
        yield _EXTERNAL_DSN
        return
    folder = Path(tempfile.mkdtemp(prefix="gw-test-pg-"))
    try:
        with embedded.running(folder, delete_on_stop=True) as pg:
            yield pg.uri
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    name = f"gw_template_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        conn = await connect(with_database(pg_server, name))
        await migrate(conn)
        await conn.close()

    async def teardown() -> None:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    configure("console", "warning")
    asyncio.run(setup())
    yield name
    asyncio.run(teardown())


@pytest.fixture
async def database_url(pg_server: str, template_db: str) -> AsyncIterator[str]:
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield with_database(pg_server, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_database(pg_server: str) -> AsyncIterator[str]:
    """A database of its own with nothing in it, not even the migrations."""
    name = f"gw_empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_server, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=60)
    yield p
    await p.close()


def make_settings(database_url: str, **overrides) -> Settings:
    values = dict(
        database_url=SecretStr(database_url),
        processors=[{"id": "mock", "kind": "mock", "pending_settle_seconds": 0.3},
                    {"id": "mock2", "kind": "mock", "idempotency_keys": False},
                    {"id": "mock3", "kind": "mock", "idempotency_keys": False, "lookup": False}],
        clients=[
            {"id": "billing", "api_key": WRITER_KEY,
             "scopes": ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]},
            {"id": "reader", "api_key": READER_KEY, "scopes": ["transactions:read", "refunds:read"]},
            {"id": "ops", "api_key": ADMIN_KEY, "scopes": ["admin"]},
        ],
        retry_initial_backoff_seconds=0.01, retry_max_backoff_seconds=0.05, retry_max_seconds=2.0,
        pending_poll_seconds=0.1, refund_response_budget_seconds=2.0, shutdown_grace_seconds=2.0,
        durable_retry_max_attempts=8, durable_retry_initial_seconds=0.05, durable_retry_max_seconds=0.2,
        janitor_poll_seconds=0.05, webhook_poll_seconds=0.1,
        db_pool_max=60,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


class Api:
    """A client for the real HTTP server on loopback, authenticated as the billing core."""

    def __init__(self, client: TestClient):
        self.http = client
        self.app = client.server.app

    @property
    def mock(self):
        return self.app[keys.ADAPTERS]["mock"]

    def _headers(self, key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return {**headers, **(extra or {})}

    async def post(self, path: str, body=None, *, key: str | None = WRITER_KEY, headers=None, data=None):
        return await self.http.post(path, json=body if data is None else None, data=data,
                                    headers=self._headers(key, headers))

    async def get(self, path: str, *, key: str | None = WRITER_KEY, headers=None, params=None):
        return await self.http.get(path, headers=self._headers(key, headers), params=params)

    async def transaction(self, *, amount: int = 10_000, currency: str = "EUR", invoice_id: str | None = None,
                          psp_reference: str | None = None, processor: str = "mock", **extra) -> dict:
        body = {"processor": processor, "psp_reference": psp_reference or f"ch_{token()}",
                "invoice_id": invoice_id or f"inv_{uuid.uuid4().hex[:10]}", "amount": amount,
                "currency": currency, **extra}
        resp = await self.post("/v1/transactions", body)
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def refund(self, tx: dict, amount: int | None = None, *, expect: int = 201, **extra) -> dict:
        body = {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "currency": tx["currency"], **extra}
        if amount is not None:
            body["amount"] = amount
        resp = await self.post("/v1/refunds", body)
        assert resp.status == expect, await resp.text()
        return await resp.json()


async def database_text(conn: asyncpg.Connection) -> str:
    """Every row of every table, as text: what a dump of the database would hold (for secret scans)."""
    tables = [r["table_name"] for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
    rows = []
    for table in tables:
        for record in await conn.fetch(f'SELECT * FROM "{table}"'):
            # Bytes as the text they carry (a stored body), not as hex, where digits would hide or invent.
            rows.append(" | ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                 for v in record.values()))
    return "\n".join(rows)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Poll until `check` returns something truthy; bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def signed_mock_webhook(refund: dict[str, Any], secret: str,
                        event_type: str = "refund.updated") -> tuple[bytes, dict[str, str]]:
    """A mock processor's webhook about `refund` (the event's `refund` object), signed with `secret`."""
    body = orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:12]}", "type": event_type, "refund": refund})
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "Mock-Signature": signature}


@contextlib.asynccontextmanager
async def logged_api(settings: Settings) -> AsyncIterator[Api]:
    """The real server with its log as JSON lines in `api.logs` (a StringIO), for a test to read."""
    stream = io.StringIO()
    configure("json", "info", stream=stream)
    client = await start_api(settings)
    api = Api(client)
    api.logs = stream
    try:
        yield api
    finally:
        await client.close()
        configure("console", "warning")


class _GatewayTestServer(TestServer):
    """The real server as `psp-gateway serve` runs it: requests still running at shutdown get
    shutdown_grace_seconds, not aiohttp's default minute."""

    def __init__(self, app: web.Application, *, shutdown_timeout: float, **kwargs: Any):
        super().__init__(app, **kwargs)
        self._shutdown_timeout = shutdown_timeout

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return await super()._make_runner(shutdown_timeout=self._shutdown_timeout, **kwargs)


async def start_api(settings: Settings) -> TestClient:
    client = TestClient(_GatewayTestServer(create_app(settings), host="127.0.0.1",
                                           shutdown_timeout=settings.shutdown_grace_seconds))
    await client.start_server()
    return client


@pytest.fixture
async def patient_api(database_url: str) -> AsyncIterator[Api]:
    """A gateway whose durable retries are far apart: a refund caught by an outage stays not_sent
    while a test looks at it."""
    client = await start_api(make_settings(database_url, durable_retry_initial_seconds=30,
                                           durable_retry_max_seconds=60))
    try:
        yield Api(client)
    finally:
        await client.close()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    client = await start_api(settings)
    try:
        yield Api(client)
    finally:
        await client.close()
