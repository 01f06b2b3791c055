"""API clients: key authentication (Authorization: Bearer or X-API-Key) and scopes."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Sequence

from aiohttp import web

from gateway import errors, keys
from gateway.settings import ClientConfig, Scope


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """Looks keys up by their SHA-256 digest: no comparison ever runs over the secret itself,
    so timing says nothing about how much of a guessed key was right. A client may hold several
    keys (a rotation), given in clear or as digests."""

    def __init__(self, clients: Sequence[ClientConfig]):
        self._by_digest = {digest: c for c in clients for digest in c.digests()}
        self._buckets = {c.id: TokenBucket(c.rate_limit_per_second, c.rate_limit_burst)
                         for c in clients if c.rate_limit_per_second}

    def authenticate(self, request: web.Request) -> ClientConfig:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            presented = header[7:].strip()
        else:
            presented = request.headers.get("X-API-Key", "").strip()
        client = self._by_digest.get(_digest(presented)) if presented else None
        if client is None:
            raise errors.Unauthorized()
        bucket = self._buckets.get(client.id)
        if bucket is not None:
            wait = bucket.take()
            if wait > 0:
                raise errors.TooManyRequests(f"client {client.id!r} is over its rate limit",
                                             headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return client


class TokenBucket:
    """Per-client rate limit, per process: `rate` requests a second on average, `burst` at once.
    Written out (twelve lines) rather than pulled in: the libraries add async locks or Redis."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._last = float(burst), clock()

    def take(self) -> float:
        """Take a token; returns 0, or the seconds until one will be there."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


def require(request: web.Request, scope: Scope) -> ClientConfig:
    client: ClientConfig = request[keys.CLIENT]
    if scope not in client.scopes:
        raise errors.Forbidden(f"this API key lacks the {scope!r} scope", required_scope=scope)
    return client
