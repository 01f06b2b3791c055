"""API clients: key authentication (Authorization: Bearer or X-API-Key; HTTP Basic on the operator
console's routes) and scopes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from typing import Sequence

from aiohttp import web

from gateway import errors, keys
from gateway.settings import ClientConfig, Scope

# The operator console is a page for a browser, which cannot add a Bearer header to a navigation:
# its routes, and only those, also take HTTP Basic credentials (user name: the client id, password:
# its API key). A browser resends those by itself, so every console action must also carry the
# console's anti-CSRF header (gateway.routes.console); the JSON API never takes them.
CONSOLE_PREFIX = "/admin/console"
CONSOLE_REALM = "psp-gateway console"


def takes_basic_auth(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


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
        basic = takes_basic_auth(request.path)
        if basic and header[:6].lower() == "basic ":
            client = self._basic(header[6:].strip())
        else:
            if header[:7].lower() == "bearer ":
                presented = header[7:].strip()
            else:
                presented = request.headers.get("X-API-Key", "").strip()
            client = self._by_digest.get(_digest(presented)) if presented else None
        if client is None:
            if basic:  # challenge for Basic, so that a browser asks for the client id and key
                raise errors.Unauthorized("sign in with a client id as user name and its API key as password",
                                          challenge=f'Basic realm="{CONSOLE_REALM}", charset="UTF-8"')
            raise errors.Unauthorized()
        bucket = self._buckets.get(client.id)
        if bucket is not None:
            wait = bucket.take()
            if wait > 0:
                raise errors.TooManyRequests(f"client {client.id!r} is over its rate limit",
                                             headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return client

    def _basic(self, encoded: str) -> ClientConfig | None:
        """The client whose key is the password, if its id is the user name."""
        try:
            user, colon, key = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        client = self._by_digest.get(_digest(key)) if colon and key else None
        if client is None or not hmac.compare_digest(user.encode(), client.id.encode()):
            return None
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
