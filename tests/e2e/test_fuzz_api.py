"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis, bounded and derandomized):
whatever arrives, no 5xx, and every error is application/problem+json."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.openapi import build
from tests.processes import GatewayProcess

KEY = "sk_fuzz_all_scopes_0123456789"
CONFIG = f"""
[[processors]]
id = "mock"
kind = "mock"

[[clients]]
id = "fuzz"
api_key = "{KEY}"
scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read", "admin"]
"""

schema = schemathesis.openapi.from_dict(build())


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory, pg_server, template_db):
    import asyncio
    import uuid

    import asyncpg

    from tests.conftest import with_database

    name = f"gw_fuzz_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        await admin.close()

    async def drop() -> None:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    asyncio.run(create())
    gateway = GatewayProcess(tmp_path_factory.mktemp("fuzz"), CONFIG, GATEWAY_DATABASE_URL=with_database(pg_server, name),
                             GATEWAY_REFUND_RESPONSE_BUDGET_SECONDS="1")
    try:
        gateway.wait_ready(60)
        yield gateway.url
    finally:
        gateway.stop()
        asyncio.run(drop())


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error_and_every_error_is_a_problem(case, gateway_url):
    response = case.call(base_url=gateway_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/problem+json"), (response.status_code, response.text[:300])
        assert response.json()["code"]
