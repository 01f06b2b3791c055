"""Access: keys given as SHA-256 digests, several keys per client for a rotation, scopes, and
per-client rate limits answered with 429 and Retry-After."""

from __future__ import annotations

import hashlib

import pytest

from gateway.auth import TokenBucket
from gateway.settings import ConfigError, load_settings
from tests.conftest import Api, make_settings, start_api

OLD_KEY, NEW_KEY, HASHED_KEY = "sk_rotate_old_0123456789", "sk_rotate_new_0123456789", "sk_hashed_only_0123456789"


@pytest.fixture
async def access_api(database_url):
    settings = make_settings(database_url, clients=[
        {"id": "rotating", "api_keys": [OLD_KEY, NEW_KEY], "scopes": ["refunds:read"]},
        {"id": "hashed", "api_key_sha256": [hashlib.sha256(HASHED_KEY.encode()).hexdigest()],
         "scopes": ["refunds:read"]},
        {"id": "limited", "api_key": "sk_limited_0123456789", "scopes": ["refunds:read"],
         "rate_limit_per_second": 1, "rate_limit_burst": 3},
    ])
    client = await start_api(settings)
    try:
        yield Api(client)
    finally:
        await client.close()


async def test_both_keys_of_a_rotation_are_accepted(access_api):
    for key in (OLD_KEY, NEW_KEY):
        assert (await access_api.get("/v1/refunds", key=key)).status == 200


async def test_key_configured_only_as_its_sha256_digest_is_accepted(access_api):
    assert (await access_api.get("/v1/refunds", key=HASHED_KEY)).status == 200
    digest = hashlib.sha256(HASHED_KEY.encode()).hexdigest()
    assert (await access_api.get("/v1/refunds", key=digest)).status == 401  # the digest is not a key


async def test_client_over_its_rate_limit_gets_429_with_retry_after(access_api):
    statuses = [(await access_api.get("/v1/refunds", key="sk_limited_0123456789")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    resp = await access_api.get("/v1/refunds", key="sk_limited_0123456789")
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert body["code"] == "rate_limited" and resp.content_type == "application/problem+json"
    assert (await access_api.get("/v1/refunds", key=OLD_KEY)).status == 200  # other clients are not slowed


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=2, clock=lambda: now[0])
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0


@pytest.mark.parametrize("client, field", [
    ({"id": "none", "scopes": ["admin"]}, "clients.0"),
    ({"id": "bad", "api_key_sha256": ["abc"], "scopes": ["admin"]}, "clients.0.api_key_sha256.0"),
    ({"id": "short", "api_keys": ["sk_short"], "scopes": ["admin"]}, "clients.0.api_keys"),
])
def test_client_without_a_usable_key_is_refused_at_start(client, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(database_url="postgresql://x@127.0.0.1:1/x", clients=[client])


def test_two_clients_with_the_same_key_are_refused_at_start():
    same = hashlib.sha256(OLD_KEY.encode()).hexdigest()
    with pytest.raises(ConfigError, match="share an API key"):
        load_settings(database_url="postgresql://x@127.0.0.1:1/x", clients=[
            {"id": "a", "api_key": OLD_KEY, "scopes": ["admin"]},
            {"id": "b", "api_key_sha256": [same], "scopes": ["admin"]}])
