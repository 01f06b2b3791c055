"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis, bounded and derandomized):
whatever arrives, no 5xx, every error is application/problem+json, and every answer is one the
document describes (its status, media type, headers and schema, problem codes included)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

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
# The document's own promises; not schemathesis' guesses about what a valid request should get
# (a well-formed refund of an unknown invoice is rightly a 404).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


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
def test_no_input_gets_a_server_error_and_every_answer_is_the_documented_one(case, gateway_url):
    headers = {"Authorization": f"Bearer {KEY}"}
    response = case.call(base_url=gateway_url, headers=headers, timeout=10)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/problem+json"), (response.status_code, response.text[:300])
        assert response.json()["code"]
    case.validate_response(response, checks=CHECKS, headers=headers)
